"""Range calibration: the clipping range [lo, hi] of every group.

``minmax`` takes the extreme values; ``percentile`` clips to the p-th and (100 - p)-th
percentiles (NumPy's linear interpolation, computed exactly by ``percentile.py``), as the seed
notebook does. For a symmetric scheme the range is [-amax, amax] with amax = max |x| or the
p-th percentile of |x|. Ranges come in the tiling's parameter view shape, float32.
"""

from __future__ import annotations

import numpy as np

from quantcli.core.layout import Tiling
from quantcli.core.parallel import map_chunks, scratch
from quantcli.core.percentile import abs_percentile, percentiles
from quantcli.core.spec import QuantSpec


def chunk_range(tiles: Tiling, part: np.ndarray, spec: QuantSpec):
    """(lo, hi) of every group of chunk ``part`` (float32) of an independent tiling."""
    if part.size == 0:
        zeros = np.zeros(_param_shape_of(tiles, part), np.float32)
        return zeros, zeros.copy()
    if spec.calibration == "minmax":
        return _minmax(tiles, part, spec.format.symmetric_range)
    if tiles.granularity == "channel":
        return _percentile_range(part, (0, 2), spec)
    lo = np.empty(_param_shape_of(tiles, part), np.float32)
    hi = np.empty_like(lo)
    for groups, columns in tiles.groups(part):
        lo[:, columns], hi[:, columns] = _percentile_range(groups, -1, spec)
    return lo, hi


def tensor_range(tiles: Tiling, view: np.ndarray, spec: QuantSpec):
    """(lo, hi), each of shape (1,), of the whole ``view`` of a per-tensor tiling."""
    if view.size == 0:
        return np.zeros(1, np.float32), np.zeros(1, np.float32)
    if spec.calibration == "percentile":
        whole = view if view.dtype == np.float32 else view.astype(np.float32)
        lo, hi = _percentile_range(whole, None, spec)
        return np.reshape(lo, 1), np.reshape(hi, 1)

    def part_range(index):
        part = view[index]
        return _minmax(
            tiles,
            part if part.dtype == np.float32 else part.astype(np.float32),
            spec.format.symmetric_range,
        )

    ranges = map_chunks(part_range, tiles.chunks)
    # np.minimum / np.maximum propagate NaN, which the caller reports
    lo = np.minimum.reduce([r[0] for r in ranges])
    hi = np.maximum.reduce([r[1] for r in ranges])
    return lo, hi


def _minmax(tiles: Tiling, part: np.ndarray, symmetric: bool):
    if tiles.granularity == "group":
        return _group_minmax(tiles, part, symmetric)
    return tiles.reduce(np.minimum, part), tiles.reduce(np.maximum, part)


def _group_minmax(tiles: Tiling, part: np.ndarray, symmetric: bool):
    """Group ranges from the float32 bits read as integers: NumPy's integer reduceat is 2-3x
    faster than its float one (which checks every step for NaN), the slow part of short groups.

    The range includes zero, as both schemes need. Non-negative floats order like their bits
    read as int32, and negative floats like their bits read as uint32 (the larger, the more
    negative), so the int32 maximum is the largest value when a group holds any value >= 0,
    and the uint32 maximum is the most negative value when it holds any value < 0; clamping
    at zero covers the groups without one or the other. A NaN's bits lie beyond inf's, so a
    NaN comes out of these reductions and is reported.
    """
    bits = part.view(np.int32)
    if symmetric:  # |x| is the sign bit cleared; one reduction gives amax
        absolute = np.bitwise_and(bits, 0x7FFFFFFF, out=scratch("calibrate", part.shape, np.int32))
        amax = tiles.reduce(np.maximum, absolute).view(np.float32)
        return -amax, amax
    hi = tiles.reduce(np.maximum, bits).view(np.float32)
    most_negative = tiles.reduce(np.maximum, bits.view(np.uint32)).view(np.float32)
    return np.minimum(most_negative, np.float32(0)), np.maximum(hi, np.float32(0))


def _percentile_range(x: np.ndarray, axis, spec: QuantSpec):
    """(lo, hi) keepdims over ``axis`` (None: every axis, scalars)."""
    p, keep = spec.percentile, axis is not None
    # NumPy's interpolation a + (b - a) * t overflows float32 when a group holds values of
    # both signs near float32's max; those (rare) blocks are redone in float64.
    for data in (x, None):
        if data is None:
            if not np.isfinite(x).all():
                break
            data = x.astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            if spec.format.symmetric_range:
                amax = abs_percentile(data, p, axis=axis, keepdims=keep)
                lo, hi = -amax, amax
            else:
                lo, hi = percentiles(data, (100.0 - p, p), axis=axis, keepdims=keep)
        if np.isfinite(lo).all() and np.isfinite(hi).all():
            break
    lo, hi = np.asarray(lo, np.float32), np.asarray(hi, np.float32)
    if axis == -1:  # (rows, n, 1) -> (rows, n)
        lo, hi = lo[..., 0], hi[..., 0]
    return lo, hi


def _param_shape_of(tiles: Tiling, part: np.ndarray) -> tuple[int, ...]:
    if tiles.granularity == "group":
        return (part.shape[0], -(-part.shape[1] // tiles.group_size))
    if tiles.granularity == "channel":
        return (1, part.shape[1], 1)
    return (1,)
