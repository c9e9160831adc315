"""MXFP4 (ggml type 39): blocks of 32 E2M1 values under one E8M0 power-of-two scale.

Layout ``{u8 e; u8 qs[16]}``, 17 bytes = 4.25 bits per weight; element j is the low nibble and
j + 16 the high nibble of byte j. A code indexes ggml's ``kvalues_mxfp4`` (the E2M1 values
doubled: 0 1 2 3 4 6 8 12, then the same negated, 0 first), and x = kvalue * d with
d = 2**(e - 128), half the E8M0 scale 2**(e - 127).

Encoding as ``quantize_row_mxfp4_ref``: e = floor(log2(amax)) - 2 + 127 (0 for a zero block)
and each element takes the code of least |kvalue * d - x|, the lowest code on a tie (so a
tie goes toward zero). Only the two grid points around |x| / d can win, so the encoder
compares |x| / d with the midpoint between them instead of computing all 16 errors.
"""

from __future__ import annotations

import numpy as np

from quantcli.core.ggml.common import F32
from quantcli.core.ggml.legacy import pack_nibbles

KVALUES = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.float32)
# byte -> (value of its low nibble's code, value of its high nibble's code)
PAIRS = np.stack([np.tile(KVALUES, 16), np.repeat(KVALUES, 16)], axis=1)
# for a = |x| / d in [0, 16), indexed by floor(a): the code of the grid point at or below a,
# and the midpoint between that point and the next one up
GRID_BELOW = np.array([0, 1, 2, 3, 4, 4, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7], np.uint8)
MIDPOINT = np.array([0.5, 1.5, 2.5, 3.5, 5, 5, 7, 7, 10, 10, 10, 10] + [np.inf] * 4, np.float32)


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
        e = np.where(amax > 0, np.floor(np.log2(amax)) - F32(2) + F32(127), F32(0))
        return e.astype(np.uint8)


def encode_mxfp4(x: np.ndarray, out: np.ndarray) -> None:
    """float32 (n, 32) -> uint8 (n, 17) ``out``."""
    ax = np.abs(x)
    e = shared_exponent(np.take_along_axis(ax, ax.argmax(axis=1)[:, None], axis=1)[:, 0])
    # a = |x| / d exactly (d = 2**(e - 128) is a power of two); 2**128 overflows float32, so
    # the rows with e = 0 take 2**127 and are doubled after
    scale = np.ldexp(F32(1), 128 - np.maximum(e, 1).astype(np.int32)).astype(np.float32)
    a = np.multiply(ax, scale[:, None])
    small = np.flatnonzero(e == 0)
    if small.size:
        a[small] *= F32(2)
    np.minimum(a, F32(15), out=a)
    index = a.astype(np.uint8)
    # the grid point below |x| unless |x| lies above the midpoint to the next one: C's
    # least-error search, since both errors are exact float32 differences (Sterbenz) and a
    # tie keeps the lower code
    code = np.take(GRID_BELOW, index)
    code += a > np.take(MIDPOINT, index)
    # negative values take the negated grid point, 8 codes on, except 0 (code 0 comes first)
    code += ((x < 0) & (code > 0)).view(np.uint8) << 3
    out[:, 0] = e
    pack_nibbles(code, out[:, 1:])


def decode_mxfp4(raw: np.ndarray, out: np.ndarray) -> None:
    """uint8 (n, 17) -> float32 (n, 32) ``out``: kvalue * d."""
    pairs = np.take(PAIRS, raw[:, 1:], axis=0)  # (n, 16, 2): elements j and j + 16
    d = e8m0_half(raw[:, :1])[:, :, None]
    np.multiply(pairs.transpose(0, 2, 1), d, out=out.reshape(-1, 2, 16))
