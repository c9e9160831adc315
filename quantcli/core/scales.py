"""How a group's scale is stored: one small unit per storage kind, registered in one table.

Every kind converts float32 scales to the stored array and back:

- ``float32``, ``float16``, ``bfloat16``: the scale itself, cast (round to nearest even).
- ``e8m0``: OCP Microscaling's power-of-two scale 2**(e - 127), stored as the uint8 ``e``
  (0xFF is NaN and never written). The scale must already be a power of two in
  [2**-127, 2**127]: the scheme chooses the exponent, this only stores it.
- ``e4m3``: float8_e4m3fn (max 448, smallest subnormal 2**-9), as NVFP4's block scales, which
  live in the frame of a per-tensor float32 scale (``schemes/nvfp4.py``).

``smallest`` and ``largest`` give the range a scheme must keep its scales in, so that a stored
scale never rounds to 0 or overflows.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np


@dataclass(frozen=True)
class ScaleKind:
    """A scale storage kind. ``dtype``: the stored array's dtype; ``bits``: bits a scale takes
    in the file (for bits per weight)."""

    name: str
    dtype: np.dtype
    smallest: float  # smallest positive scale it stores
    largest: float  # largest scale it stores

    @property
    def bits(self) -> int:
        return self.dtype.itemsize * 8

    def store(self, scale32: np.ndarray) -> np.ndarray:
        """float32 scales -> the stored array (may round: float16, bfloat16, e4m3)."""
        scale32 = np.asarray(scale32, np.float32)
        if self.dtype == np.float32:
            return scale32
        with np.errstate(over="ignore"):  # overflow is checked by the caller
            return scale32.astype(self.dtype)

    def load(self, stored: np.ndarray) -> np.ndarray:
        """The stored array -> float32 scales."""
        return np.asarray(stored).astype(np.float32)


class E8M0Kind(ScaleKind):
    """Power-of-two scales stored as their biased exponent byte."""

    def store(self, scale32: np.ndarray) -> np.ndarray:
        mantissa, exponent = np.frexp(np.asarray(scale32, np.float32))
        # 2**k is frexp's (0.5, k + 1); the scheme guarantees an exact power of two in range
        return (exponent.astype(np.int32) - 1 + 127).astype(np.uint8)

    def load(self, stored: np.ndarray) -> np.ndarray:
        e = np.asarray(stored).astype(np.int32)
        return np.ldexp(np.float32(1), e - 127).astype(np.float32)


def _float_kind(name: str, dtype) -> ScaleKind:
    info = ml_dtypes.finfo(dtype)
    return ScaleKind(name, np.dtype(dtype), float(info.smallest_subnormal), float(info.max))


SCALE_KINDS: dict[str, ScaleKind] = {
    "float32": _float_kind("float32", np.float32),
    "float16": _float_kind("float16", np.float16),
    "bfloat16": _float_kind("bfloat16", ml_dtypes.bfloat16),
    "e8m0": E8M0Kind("e8m0", np.dtype(np.uint8), 2.0**-127, 2.0**127),
    "e4m3": _float_kind("e4m3", ml_dtypes.float8_e4m3fn),
}

# the short names users type, and tables print
SCALE_ALIASES = {"fp32": "float32", "f32": "float32", "fp16": "float16", "f16": "float16",
                 "bf16": "bfloat16", "ue8m0": "e8m0", "fp8": "e4m3"}  # fmt: skip
SHORT_NAMES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16", "e8m0": "e8m0",
               "e4m3": "e4m3"}  # fmt: skip
