"""How a group's scale is stored: one small unit per storage kind, registered in one table.

Every kind converts float32 scales to the stored array and back:

- ``float32``, ``float16``, ``bfloat16``: the scale itself, cast (round to nearest even).
- ``e8m0``: OCP Microscaling's power-of-two scale 2**(e - 127), stored as the uint8 ``e``
  (0xFF is NaN and never written). The scale must already be a power of two in
  [2**-127, 2**127]: the scheme chooses the exponent, this only stores it.
- ``e4m3``: float8_e4m3fn (max 448, smallest subnormal 2**-9), as NVFP4's block scales, which
  live in the frame of a per-tensor float32 scale (``schemes/nvfp4.py``).
- ``k4``, ``k6``, ``k8``: two-level scales, as llama.cpp's K-quants store them: per group an
  unsigned k-bit scale code ``sc`` (and, for zeropoint, a min code ``mc``) under one float16
  pair ``(d, dmin)`` per super-block of ``spec.super_block`` consecutive groups of a row:
  scale = d * sc, min = dmin * mc, x_hat = scale * q - min (``SuperBlockScales``). Q4_K is
  zeropoint, 4 bits, groups of 32, ``k6``, super-blocks of 8 groups: 4 + (6 + 6) / 32 +
  2 * 16 / 256 = 4.5 bits a weight. Their ``store`` and ``load`` are the identity on the
  float32 values the codes were encoded with (d * sc exactly): the stored form is the arrays
  of ``SuperBlockScales``, which ``core/two_level.py`` chooses.

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
    two_level = False  # a SuperBlockKind: codes under a float16 pair per super-block
    powers_of_two = False  # an E8M0Kind: every scale a power of two

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

    powers_of_two = True  # a search has only round-to-nearest's neighbours to try

    def store(self, scale32: np.ndarray) -> np.ndarray:
        mantissa, exponent = np.frexp(np.asarray(scale32, np.float32))
        # 2**k is frexp's (0.5, k + 1), stored exactly (the schemes give exact powers of two);
        # another value (a search's candidate) goes to the nearer power of two, in range
        k = exponent.astype(np.int32) - 1 + (mantissa >= 0.75)
        return (np.clip(k, -127, 127) + 127).astype(np.uint8)

    def load(self, stored: np.ndarray) -> np.ndarray:
        e = np.asarray(stored).astype(np.int32)
        return np.ldexp(np.float32(1), e - 127).astype(np.float32)


@dataclass(frozen=True)
class SuperBlockKind(ScaleKind):
    """Two-level scales: ``level_bits``-bit codes per group under a float16 pair per
    super-block. In memory (``QuantizedTensor.scale``) the float32 values d * sc; in files the
    arrays of ``SuperBlockScales``."""

    level_bits: int = 6
    two_level = True

    @property
    def bits(self) -> int:
        return self.level_bits

    @property
    def top(self) -> int:
        """The largest code, 2**level_bits - 1."""
        return 2**self.level_bits - 1

    def store(self, scale32: np.ndarray) -> np.ndarray:
        return np.asarray(scale32, np.float32)

    def load(self, stored: np.ndarray) -> np.ndarray:
        return np.asarray(stored, np.float32)


@dataclass
class SuperBlockScales:
    """The stored form of two-level scales of a tensor whose rows (every axis but the last)
    are ``lead``, with G groups a row in S = ceil(G / groups_per_block) super-blocks (the last
    one may hold fewer groups).

    d, dmin: float16 (lead + (S,)), finite and >= 0. scale_codes, min_codes: uint8
    (lead + (G,)), at most 2**level_bits - 1. dmin and min_codes are None for a format without
    a min.
    """

    d: np.ndarray
    scale_codes: np.ndarray
    groups_per_block: int
    dmin: np.ndarray | None = None
    min_codes: np.ndarray | None = None

    @classmethod
    def empty(cls, lead: tuple[int, ...], groups: int, per: int, mins: bool) -> SuperBlockScales:
        supers = lead + (-(-groups // per),)
        codes = lead + (groups,)

        def pair(shape, dtype):
            return np.zeros(shape, dtype) if mins else None

        return cls(
            np.zeros(supers, np.float16),
            np.zeros(codes, np.uint8),
            per,
            pair(supers, np.float16),
            pair(codes, np.uint8),
        )

    def values(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The groups' float32 (scale, min), lead + (G,) each (min None without mins):
        scale = float32(d) * sc, min = float32(dmin) * mc, one float32 product each, as
        llama.cpp's Q4_K decoder computes them."""
        groups = self.scale_codes.shape[-1]

        def times(step, codes):
            step = np.repeat(step.astype(np.float32), self.groups_per_block, axis=-1)
            step = step[..., :groups]
            return step * codes.astype(np.float32)

        scale = times(self.d, self.scale_codes)
        if self.dmin is None:
            return scale, None
        return scale, times(self.dmin, self.min_codes)


def _float_kind(name: str, dtype) -> ScaleKind:
    info = ml_dtypes.finfo(dtype)
    return ScaleKind(name, np.dtype(dtype), float(info.smallest_subnormal), float(info.max))


SCALE_KINDS: dict[str, ScaleKind] = {
    "float32": _float_kind("float32", np.float32),
    "float16": _float_kind("float16", np.float16),
    "bfloat16": _float_kind("bfloat16", ml_dtypes.bfloat16),
    "e8m0": E8M0Kind("e8m0", np.dtype(np.uint8), 2.0**-127, 2.0**127),
    "e4m3": _float_kind("e4m3", ml_dtypes.float8_e4m3fn),
    **{
        f"k{k}": SuperBlockKind(f"k{k}", np.dtype(np.float32), 2.0**-24, 65504.0 * (2**k - 1), k)
        for k in (4, 6, 8)
    },
}
# groups a super-block holds when the spec does not say (Q4_K's 8 groups of 32)
DEFAULT_SUPER_BLOCK = 8

# the short names users type, and tables print
SCALE_ALIASES = {"fp32": "float32", "f32": "float32", "fp16": "float16", "f16": "float16",
                 "bf16": "bfloat16", "ue8m0": "e8m0", "fp8": "e4m3"}  # fmt: skip
SHORT_NAMES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16", "e8m0": "e8m0",
               "e4m3": "e4m3", "k4": "k4", "k6": "k6", "k8": "k8"}  # fmt: skip
