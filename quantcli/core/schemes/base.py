"""What every scheme provides, and the scale rules they share."""

from __future__ import annotations

from typing import Protocol

import ml_dtypes
import numpy as np

from quantcli.core.spec import QuantSpec

SCALE_NUMPY_DTYPES = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}
# the smallest positive and the largest value of each scale dtype
SCALE_SMALLEST = {
    name: np.float32(ml_dtypes.finfo(dtype).smallest_subnormal)
    for name, dtype in SCALE_NUMPY_DTYPES.items()
}
SCALE_LARGEST = {name: float(ml_dtypes.finfo(dt).max) for name, dt in SCALE_NUMPY_DTYPES.items()}


class GroupParams(Protocol):
    """Parameters of a set of groups, all of one shape (the tiling's parameter view)."""

    lo: np.ndarray  # float32: clipping range, values below are clipped
    hi: np.ndarray  # float32: clipping range, values above are clipped
    scale: np.ndarray  # float32: the scale the codes are computed with
    zero_point: np.ndarray | None  # uint8, or None for symmetric schemes

    @property
    def empty(self) -> np.ndarray:
        """bool: the range is the single point 0 (every value maps to code 0)."""


class Scheme(Protocol):
    """One quantization scheme: element-wise kernels only. Layout, chunking, calibration and
    storage live in ``quantizer.py``, ``layout.py`` and ``calibration.py``; parameters reach
    ``encode``/``decode`` already shaped to broadcast against the values."""

    name: str
    code_dtype: np.dtype

    def params(self, lo: np.ndarray, hi: np.ndarray, spec: QuantSpec) -> GroupParams:
        """Scales (and zero points) from the calibrated range [lo, hi] of every group."""

    def encode(self, x, scale, zero_point, spec: QuantSpec, out: np.ndarray) -> None:
        """Write the integer codes of ``x`` (float32) into ``out`` (code_dtype)."""

    def decode(self, codes, scale, zero_point, out: np.ndarray) -> None:
        """Write the float32 reconstruction of ``codes`` into ``out``."""


def safe_scale(
    scale: np.ndarray, span: np.ndarray, levels: int, spec: QuantSpec, slack: float = 0.5
) -> np.ndarray:
    """Make float32 ``scale`` usable: 1 where the range is empty, never below the scale dtype's
    smallest positive value (so a stored scale never rounds to 0), and never so small, by
    rounding in the subnormal range, that ``span / scale`` exceeds ``levels + slack``.

    span: the width the codes must cover (amax or hi - lo); levels: qmax or 2**bits - 1;
    slack: how far past the last code the span may reach, in steps (absmax: half a step).
    """
    scale = np.asarray(scale, np.float32).copy()
    np.copyto(scale, np.float32(1), where=span == 0)
    np.maximum(scale, SCALE_SMALLEST[spec.scale_dtype], out=scale)
    if scale.size == 0 or scale.min() >= FLOAT32_SMALLEST_NORMAL:
        # a normal float32 scale is within 2**-24 of span / levels: never short
        return scale
    limit = np.float64(levels) + slack
    for _ in range(64):  # only subnormal scales ever need this; each step is one ulp
        short = span.astype(np.float64) / scale > limit
        if not short.any():
            break
        scale = np.where(short, np.nextafter(scale, np.float32(np.inf)), scale)
    return scale


FLOAT32_SMALLEST_NORMAL = np.finfo(np.float32).tiny
