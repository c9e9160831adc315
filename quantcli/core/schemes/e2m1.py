"""E2M1, the 4-bit float of MXFP4 and NVFP4: the element codec both schemes share.

Values {0, 0.5, 1, 1.5, 2, 3, 4, 6} and their negatives; code = sign bit (8) | magnitude
index (0..7), exactly the float4_e2m1fn bit pattern. Rounding is to nearest even on that grid
(0.25 -> 0, 0.75 -> 1, 1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4), saturating at 6,
as ml_dtypes' float4_e2m1fn cast does; ``tests/test_formats.py`` checks every edge against it.

The cast is arithmetic on the float32 bits: for a = min(|t|, 6), the grid's step is 2^(E-1)
with E = clip(floor(log2 a), 0, 2) (the exponent field of a), so n = rint(a / step) rounds half
to even on the grid, and the magnitude code is n + 2E (E = 0: 0..4 for 0..2; E = 1: 2..4 for
2, 3, 4 -> codes 4, 5, 6; E = 2: 2, 3 for 4, 6 -> codes 6, 7). About 3x faster than the cast.
"""

from __future__ import annotations

import numpy as np

from quantcli.core.parallel import scratch

GRID = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float32)
MAX = 6.0
SIX_BITS = int(np.float32(MAX).view(np.int32))
# all 16 codes' values, code order (the sign bit is 8)
VALUES = np.concatenate([GRID, -GRID]).astype(np.float32)


def encode(t: np.ndarray, out: np.ndarray) -> None:
    """E2M1 codes (uint8 0..15) of float32 ``t`` (values already divided by their scale)."""
    # |t| saturated at 6, on the bits: integer ops skip the float ones' NaN checks
    bits = scratch("e2m1-abs", t.shape, np.int32)
    np.bitwise_and(t.view(np.int32), 0x7FFFFFFF, out=bits)
    np.minimum(bits, SIX_BITS, out=bits)
    a = bits.view(np.float32)
    exponent = scratch("e2m1-exponent", t.shape, np.int32)
    np.right_shift(bits, 23, out=exponent)
    np.clip(exponent, 127, 129, out=exponent)  # E + 127, E in 0..2
    inverse_step = scratch("e2m1-step", t.shape, np.int32)  # 2^(1 - E) as float32 bits
    np.subtract(255, exponent, out=inverse_step)
    np.left_shift(inverse_step, 23, out=inverse_step)
    np.multiply(a, inverse_step.view(np.float32), out=a)  # exact: a power of two
    np.rint(a, out=a)
    np.subtract(exponent, 127, out=exponent)
    np.left_shift(exponent, 1, out=exponent)  # 2E
    np.copyto(out, a, casting="unsafe")
    np.add(out, exponent, out=out, casting="unsafe")
    # the sign bit of t (-0.0 included, as in the cast) becomes bit 3 of the code
    sign = np.right_shift(t.view(np.uint32), 28, out=inverse_step.view(np.uint32))
    np.bitwise_and(sign, 8, out=sign)
    np.bitwise_or(out, sign, out=out, casting="unsafe")


def decode(codes: np.ndarray) -> np.ndarray:
    """float32 values of E2M1 ``codes`` (uint8 0..15)."""
    return np.take(VALUES, codes)
