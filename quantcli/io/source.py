"""The interface every input format implements: named tensors, read one at a time.

A ``TensorSource`` lists its tensors up front (``infos()``, cheap: only headers are parsed)
and hands out one tensor's data on request (``read(name)``). Arrays are read-only and, for
files on disk, memory-mapped, so a command that handles one tensor at a time needs memory
for one tensor, not for the whole checkpoint.

This module also holds the two helpers the readers share to build such arrays
(``map_array`` for files, ``buffer_array`` for bytes already in memory) and the shape check
the headers of every format go through (``checked_shape``).
"""

from __future__ import annotations

import abc
import math
import os
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from quantcli.errors import FormatError, InputError

# NumPy refuses arrays with more dimensions than this, or whose byte size does not fit in
# a signed 64-bit integer (even zero-size ones, e.g. shape (0, 2**62) of float32).
MAX_NDIM = 64
_MAX_BYTES = 2**63 - 1


@dataclass(frozen=True)
class TensorInfo:
    """What a file says about one tensor, before any of its data is read.

    ``dtype`` is a NumPy dtype (bfloat16/float8 come from ml_dtypes), ``shape`` a tuple of
    non-negative ints (``()`` for a 0-d scalar tensor).
    """

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        # Normalise so that TensorInfo("w", np.float32, [2, 3]) compares equal to the
        # same tensor read from a file.
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    @property
    def size(self) -> int:
        """Number of elements (1 for a 0-d tensor, 0 if any dimension is 0)."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Size of the tensor's data in bytes."""
        return self.size * self.dtype.itemsize


class TensorSource(abc.ABC):
    """A readable set of named tensors: one file, a sharded checkpoint, or stdin.

    Use as a context manager (``with open_input(path) as src: ...``) so file handles are
    closed. Arrays returned by ``read`` stay valid after ``close()``.
    """

    #: How messages name this input: the path as given, or "<stdin>".
    label: str
    #: safetensors ``__metadata__`` (or a sharded index's "metadata"); {} for .npy/.npz.
    metadata: dict[str, str]

    @abc.abstractmethod
    def infos(self) -> list[TensorInfo]:
        """Every tensor, in file order (by data offset; shard by shard for sharded input)."""

    @abc.abstractmethod
    def read(self, name: str) -> np.ndarray:
        """The data of tensor ``name``: a read-only array of its dtype and shape.

        The values are exactly the stored bytes (no conversion). For files on disk the array
        is memory-mapped, so pages are read only when touched.
        """

    def groups(self) -> list[tuple[str, list[TensorInfo]]]:
        """Tensors grouped by the file that holds them: ``[(file name, infos), ...]``.

        One entry for a single file; one per shard, in shard order, for a sharded
        checkpoint. A writer mirrors this to write sharded output shard by shard.
        """
        return [(os.path.basename(self.label), self.infos())]

    def info(self, name: str) -> TensorInfo:
        """The TensorInfo of tensor ``name``; InputError if there is no such tensor."""
        for info in self.infos():
            if info.name == name:
                return info
        raise self._unknown_tensor(name)

    def _unknown_tensor(self, name: str) -> InputError:
        """The error for asking for a tensor the source does not hold."""
        return InputError(
            f"unknown tensor in {self.label}: there is no tensor named {name!r}; "
            "check the name against the file's list of tensors"
        )

    def close(self) -> None:  # noqa: B027 - sources that hold nothing need not override it
        """Release file handles. Arrays already returned stay usable."""

    def __enter__(self) -> TensorSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def checked_shape(shape: object, itemsize: int, where: str) -> tuple[int, ...]:
    """Validate a shape read from a file header and return it as a tuple of ints.

    Dimensions must be non-negative ints (JSON ``true`` is not a dimension), at most
    MAX_NDIM of them, and the array must be one NumPy can create.
    """
    if not isinstance(shape, (list, tuple)):
        raise FormatError(
            f"bad header in {where}: shape {shape!r} is not a list of integers; "
            "the file is corrupt, export it again"
        )
    for dim in shape:
        # bool is a subclass of int in Python, so it has to be refused explicitly.
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise FormatError(
                f"bad header in {where}: shape {list(shape)!r} has dimension {dim!r}, "
                "but dimensions must be non-negative integers; the file is corrupt, "
                "export it again"
            )
    if len(shape) > MAX_NDIM:
        raise FormatError(
            f"bad header in {where}: shape has {len(shape)} dimensions, more than the "
            f"{MAX_NDIM} NumPy supports; the file is corrupt, export it again"
        )
    nonzero_bytes = math.prod(d for d in shape if d) * itemsize
    if nonzero_bytes > _MAX_BYTES:
        raise FormatError(
            f"bad header in {where}: shape {list(shape)!r} is too large for any array; "
            "the file is corrupt, export it again"
        )
    return tuple(shape)


def map_array(
    file: BinaryIO,
    offset: int,
    dtype: np.dtype,
    shape: tuple[int, ...],
    where: str,
    fortran_order: bool = False,
) -> np.ndarray:
    """Memory-map ``shape`` elements of ``dtype`` at byte ``offset`` of ``file``, read-only.

    The caller has checked that the range lies inside the file; if the file shrank since,
    this raises FormatError instead of NumPy's ValueError. Returns a plain ndarray view
    (not an np.memmap, whose type would leak into every result computed from it); the
    mapping lives as long as the array.
    """
    order = "F" if fortran_order else "C"
    if math.prod(shape) == 0:
        # mmap cannot map 0 bytes; an empty array holds the same (no) data.
        return _readonly(np.empty(shape, dtype=dtype, order=order))
    try:
        mapped = np.memmap(file, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)
    except ValueError as exc:  # "mmap length is greater than file size"
        raise FormatError(
            f"truncated data in {where}: the file ended before byte "
            f"{offset + math.prod(shape) * dtype.itemsize} ({exc}); the file changed while "
            "quant was reading it or is incomplete, copy it again"
        ) from exc
    except OSError as exc:
        raise InputError(
            f"cannot map data in {where}: {exc.strerror or exc}; check that the file is "
            "readable and that the process may open more files"
        ) from exc
    return mapped.view(np.ndarray)


def buffer_array(
    buffer: memoryview,
    offset: int,
    dtype: np.dtype,
    shape: tuple[int, ...],
    fortran_order: bool = False,
) -> np.ndarray:
    """A read-only array over ``shape`` elements of ``dtype`` at ``offset`` of ``buffer``.

    No copy: the array shares memory with ``buffer`` (used for stdin, read into memory).
    """
    order = "F" if fortran_order else "C"
    count = math.prod(shape)
    if count == 0:
        return _readonly(np.empty(shape, dtype=dtype, order=order))
    flat = np.frombuffer(buffer, dtype=dtype, count=count, offset=offset)
    return _readonly(flat.reshape(shape, order=order))


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array
