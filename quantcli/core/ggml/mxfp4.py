"""MXFP4 (ggml type 39): blocks of 32 E2M1 values under one E8M0 power-of-two scale.

Layout ``{u8 e; u8 qs[16]}``, 17 bytes = 4.25 bits per weight; element j is the low nibble and
j + 16 the high nibble of byte j. A code indexes ggml's ``kvalues_mxfp4`` (the E2M1 values
doubled: 0 1 2 3 4 6 8 12, then the same negated, 0 first), and x = kvalue * d with
d = 2**(e - 128), half the E8M0 scale 2**(e - 127).

Encoding as ``quantize_row_mxfp4_ref``: e = floor(log2(amax)) - 2 + 127 (0 for a zero block)
and each element takes the code of least |kvalue * d - x|, the lowest code on a tie (so a
tie goes toward zero). With a = |x| / d, that is a rounded half down to the grid 0 1 2 3 4 6
8 12: below 2 two comparisons (with 0.5 and 1.5) decide it; from 2 on, the grid is every
float32 with one mantissa bit, so adding 2**21 - 1 to a's bits and dropping 22 bits rounds
it, carries into the exponent included (see ``encode_mxfp4``).
"""

from __future__ import annotations

import numpy as np

from quantcli.core.ggml.common import F32
from quantcli.core.ggml.legacy import (
    element_quads,
    legacy_buffer,
    pack_quads,
    reduce_blocks,
    spread_blocks,
)

KVALUES = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.float32)
# byte -> (value of its low nibble's code, value of its high nibble's code)
PAIRS = np.stack([np.tile(KVALUES, 16), np.repeat(KVALUES, 16)], axis=1)


# 1 / d = 2**(128 - e) for each exponent byte e, float32, 2**127 for e = 0 (see encode_mxfp4)
INVERSE_SCALES = np.ldexp(F32(1), 128 - np.maximum(np.arange(256), 1)).astype(np.float32)


def e8m0_half(e: np.ndarray) -> np.ndarray:
    """2**(e - 128) as float32, from uint8 exponents ``e`` (any shape), as
    ``ggml_e8m0_to_fp32_half``: subnormal for e < 2."""
    e32 = e.astype(np.uint32)
    bits = np.where(e32 < 2, np.uint32(0x00200000) << e32, (e32 - 1) << 23)
    return bits.astype(np.uint32).view(np.float32)


def shared_exponent(amax: np.ndarray) -> np.ndarray:
    """uint8 e = floor(log2(amax)) - 2 + 127, 0 where amax is 0; float32 (n,) -> uint8 (n,).

    Computed as gguf-py computes it (float32 log2, then a cast that wraps below 0 as x86's
    conversion does for C's ``(uint8_t)``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        e = np.floor(np.log2(amax)) - F32(2) + F32(127)
        e[amax == 0] = 0  # (amax >= 0) -inf there
        return e.astype(np.uint8)


def encode_mxfp4(x: np.ndarray, out: np.ndarray) -> None:
    """float32 (n, 32) -> uint8 (n, 17) ``out``."""
    n = x.shape[0]
    bits = element_quads(x).view(np.int32)
    shape = bits.shape
    magnitude = np.bitwise_and(bits, 0x7FFFFFFF, out=legacy_buffer("abs", shape, np.int32))
    e = shared_exponent(reduce_blocks(magnitude, np.maximum).view(np.float32))
    # a = |x| / d exactly (d = 2**(e - 128) is a power of two); 2**128 overflows float32, so
    # the blocks with e = 0 take 2**127 and are doubled after
    a = np.multiply(
        magnitude.view(np.float32),
        spread_blocks(np.take(INVERSE_SCALES, e), "factor"),
        out=legacy_buffer("values", shape, np.float32),
    )
    small = np.flatnonzero(e == 0)
    if small.size:
        a.reshape(8, n, 4)[:, small] *= F32(2)
    # from 2 on (a < 16 always): (bits + 2**21 - 1) >> 22 is 256 + the code - 2, rounded
    # half down, since the low 22 bits of a value on the grid are 0 and a tie's are 2**21;
    # below 2 (taken as 2 here, so 256) the comparisons with 0.5 and 1.5 add the code, and
    # from 2 on they add the 2. (Two arrays, not an array and a scalar: NumPy's SIMD loop.)
    row = legacy_buffer("row", (shape[1],), np.float32)
    row.fill(2.0)
    upper = np.maximum(a, row, out=legacy_buffer("upper", shape, np.float32)).view(np.int32)
    np.add(upper, (1 << 21) - 1, out=upper)
    np.right_shift(upper, 22, out=upper)
    code = legacy_buffer("codes", shape, np.uint8)
    np.copyto(code, upper, casting="unsafe")  # mod 256: the code - 2
    above = legacy_buffer("above", shape, np.bool_)
    np.greater(a, F32(1.5), out=above)
    np.add(code, above.view(np.uint8), out=code)
    np.greater(a, F32(0.5), out=above)  # the code is not 0
    np.add(code, above.view(np.uint8), out=code)
    clamp = legacy_buffer("top", (shape[1],), np.uint8)
    clamp.fill(7)
    np.minimum(code, clamp, out=code)
    # negative values take the negated grid point, 8 codes on, except 0 (code 0 comes first)
    negative = np.signbit(bits.view(np.float32), out=legacy_buffer("negative", shape, np.bool_))
    np.logical_and(negative, above, out=negative)
    sign = negative.view(np.uint32)  # 0/1 bytes shifted within their bytes
    np.left_shift(sign, 3, out=sign)
    np.bitwise_or(code, negative.view(np.uint8), out=code)
    out[:, 0] = e
    pack_quads(code, out[:, 1:])


def decode_mxfp4(raw: np.ndarray, out: np.ndarray) -> None:
    """uint8 (n, 17) -> float32 (n, 32) ``out``: kvalue * d."""
    pairs = np.take(PAIRS, raw[:, 1:], axis=0)  # (n, 16, 2): elements j and j + 16
    d = e8m0_half(raw[:, :1])[:, :, None]
    np.multiply(pairs.transpose(0, 2, 1), d, out=out.reshape(-1, 2, 16))
