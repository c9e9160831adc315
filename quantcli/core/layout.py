"""How a granularity splits an array into groups that share one scale, and how quantize walks
it in cache-sized chunks.

Stored parameter shapes (what ``param_shape`` returns), for an array of shape ``S``:

- tensor:  ``(1,) * ndim``                      one value
- channel: ``S`` with every axis but ``axis`` set to 1
- group:   ``S[:-1] + (ceil(S[-1] / group_size),)``   one value per group of the last axis;
  the last group of a row may be shorter (ragged)
- block:   ``(ceil(S[0] / R), ceil(S[1] / C))`` for a 2-D ``S`` and ``block_size`` (R, C): one
  value per R x C tile; the last tile of each direction may be partial (DeepSeek-V3's
  ``weight_scale_inv`` shape)

A 0-d array is handled as a one-element 1-D array.

To work on any shape with the same few NumPy calls, ``Tiling`` reshapes the array (a view) and
its parameters into a fixed rank per granularity:

- group:   array (rows, last), parameters (rows, n_groups); chunks of whole rows;
- channel: array (before, channels, after), parameters (1, channels, 1); chunks of whole
  channels;
- block:   array (rows, columns), parameters (row blocks, column blocks); chunks of whole
  block-rows (``param_index`` maps a chunk's rows to its parameter rows);
- tensor:  array (elements,), parameters (1,); chunks of consecutive elements.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import as_strided

from quantcli.core.spec import QuantSpec


def param_shape(shape: tuple[int, ...], spec: QuantSpec) -> tuple[int, ...]:
    """Shape of the stored scales (and zero points) for a tensor of ``shape``."""
    shape = tuple(shape) or (1,)
    if spec.granularity == "tensor":
        return (1,) * len(shape)
    if spec.granularity == "channel":
        axis = spec.resolve_axis(len(shape))
        return tuple(n if i == axis else 1 for i, n in enumerate(shape))
    if spec.granularity == "block":
        return tuple(-(-n // b) for n, b in zip(shape, spec.block_size))
    n_groups = -(-shape[-1] // spec.group_size)
    return shape[:-1] + (n_groups,)


@dataclass(frozen=True)
class Tiling:
    """The views and chunks ``quantize`` and ``dequantize`` use for one array.

    ``chunks`` index both ``view_shape`` and ``param_view_shape``. ``independent``: every
    group lies inside one chunk, so a chunk is calibrated, encoded and measured while it is in
    cache; a per-tensor group spans every chunk, so its range is found first.
    """

    granularity: str
    view_shape: tuple[int, ...]
    param_view_shape: tuple[int, ...]
    chunks: tuple[tuple, ...]
    group_size: int = 0
    block_size: tuple[int, int] = (0, 0)

    @property
    def independent(self) -> bool:
        return self.granularity != "tensor"

    def param_index(self, index: tuple) -> tuple:
        """The index of chunk ``index``'s parameters in the parameter view: the chunk's own
        index but for blocks, whose chunk of rows r0:r1 has the block-rows r0/R:ceil(r1/R)."""
        if self.granularity != "block":
            return index
        rows, r = index[0], self.block_size[0]
        return (slice(rows.start // r, -(-min(rows.stop, self.view_shape[0]) // r)),)

    def reduce(self, ufunc: np.ufunc, part: np.ndarray) -> np.ndarray:
        """``ufunc`` (np.minimum / np.maximum) over every group of chunk ``part``, in the
        parameter view's shape."""
        if self.granularity == "block":
            if part.size == 0:
                return np.empty(_blocks(part.shape, self.block_size), part.dtype)
            r, c = self.block_size
            cols = ufunc.reduceat(part, np.arange(0, part.shape[1], c), axis=1)
            return ufunc.reduceat(cols, np.arange(0, part.shape[0], r), axis=0)
        if self.granularity == "group":
            if part.shape[1] == 0:
                return np.empty((part.shape[0], 0), part.dtype)
            # reduceat handles the ragged last group, and beats reducing a short last axis
            return ufunc.reduceat(part, np.arange(0, part.shape[1], self.group_size), axis=1)
        if self.granularity == "channel":
            return ufunc.reduce(part, axis=(0, 2), keepdims=True)
        return ufunc.reduce(part, keepdims=True)

    def expand(self, param: np.ndarray, part: np.ndarray) -> np.ndarray:
        """Parameters of chunk ``part`` made to broadcast against it. Group parameters are
        repeated to one per element: NumPy broadcasting over many short rows costs far more."""
        if self.granularity == "block":
            if param.ndim != 2:  # the (1,) parameters of an empty chunk (calibration.py)
                return param
            r, c = self.block_size
            rows = np.repeat(param, r, axis=0)[: part.shape[0]]
            return np.repeat(rows, c, axis=1)[:, : part.shape[1]]
        if self.granularity != "group" or param.shape[1] == 0:
            return param
        return np.repeat(param, self.group_size, axis=1)[:, : part.shape[1]]

    def groups(self, part: np.ndarray) -> list[tuple[np.ndarray, slice]]:
        """Group chunk ``part`` (rows, last) as views (rows, n, group_size) of its full groups
        and (rows, 1, rest) of the ragged one, each with its slice of the parameter columns."""
        rows, last = part.shape
        gs = self.group_size
        n_full, rest = divmod(last, gs)
        out = []
        if n_full:
            # strides keep this a view even when the last axis is not a multiple of gs
            step = part.strides[1]
            head = as_strided(
                part,
                shape=(rows, n_full, gs),
                strides=(part.strides[0], gs * step, step),
                writeable=False,
            )
            out.append((head, slice(0, n_full)))
        if rest:
            out.append((part[:, n_full * gs :][:, None, :], slice(n_full, n_full + 1)))
        return out


def tiling(shape: tuple[int, ...], spec: QuantSpec, chunk_elements: int) -> Tiling:
    """The tiling of an array of ``shape`` (0-d counts as (1,)) for ``spec``."""
    shape = tuple(shape) or (1,)
    size = math.prod(shape)
    if spec.granularity == "group":
        rows, last = math.prod(shape[:-1]), shape[-1]
        step = max(1, chunk_elements // max(last, 1))
        chunks = tuple((slice(r, r + step),) for r in range(0, rows, step))
        # a group never needs to be longer than the row: one group per row either way, and
        # the per-element parameter expansion stays the row's size, not the group size's
        group_size = min(spec.group_size, max(last, 1))
        n_groups = -(-last // group_size)
        return Tiling("group", (rows, last), (rows, n_groups), chunks, group_size)
    if spec.granularity == "block":
        if len(shape) != 2:
            raise ValueError(f"block tiling of a {len(shape)}-D shape {shape}: blocks are 2-D")
        rows, cols = shape
        r = spec.block_size[0]
        # whole block-rows only, so each block is calibrated inside one chunk
        step = r * max(1, chunk_elements // max(r * cols, 1))
        chunks = tuple((slice(i, i + step),) for i in range(0, rows, step))
        return Tiling("block", shape, _blocks(shape, spec.block_size), chunks, 0, spec.block_size)
    if spec.granularity == "channel":
        axis = spec.resolve_axis(len(shape))
        before, channels = math.prod(shape[:axis]), shape[axis]
        after = math.prod(shape[axis + 1 :])
        step = max(1, chunk_elements // max(before * after, 1))
        chunks = tuple(
            (slice(None), slice(c, c + step), slice(None)) for c in range(0, channels, step)
        )
        return Tiling("channel", (before, channels, after), (1, channels, 1), chunks)
    chunks = tuple((slice(i, i + chunk_elements),) for i in range(0, size, chunk_elements))
    return Tiling("tensor", (size,), (1,), chunks)


def _blocks(shape: tuple[int, int], block_size: tuple[int, int]) -> tuple[int, int]:
    """(row blocks, column blocks) of a 2-D ``shape``, partial edge blocks included."""
    return -(-shape[0] // block_size[0]), -(-shape[1] // block_size[1])
