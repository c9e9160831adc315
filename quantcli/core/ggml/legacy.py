"""llama.cpp's first block types: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 (blocks of 32 elements).

Layouts (little-endian, fields in this order; d and m are IEEE float16):

- Q8_0 ``{d; int8 q[32]}``, 34 bytes: x = d * q, d = amax / 127, q = roundf(x / d).
- Q4_0 ``{d; u8 qs[16]}``, 18 bytes: x = d * (q - 8), d = (signed value of largest
  magnitude) / -8, q = min(15, trunc(x / d + 8.5)).
- Q4_1 ``{d, m; u8 qs[16]}``, 20 bytes: x = d * q + m, m = min, d = (max - min) / 15,
  q = min(15, trunc((x - m) / d + 0.5)).
- Q5_0 ``{d; u8 qh[4]; u8 qs[16]}``, 22 bytes: as Q4_0 with 32 levels (d = max / -16, + 16.5).
- Q5_1 ``{d, m; u8 qh[4]; u8 qs[16]}``, 24 bytes: as Q4_1 with 32 levels (d = range / 31).

In ``qs``, element j is the low nibble and j + 16 the high nibble of byte j; in ``qh`` (a
little-endian uint32) bit j is bit 4 of element j. "x / d" is computed as x * (1 / d) in
float32, as the C reference (``quantize_row_*_ref`` in ggml-quants.c) does, and the encoders
give the same bytes as gguf-py's NumPy port of it (``gguf.quants.quantize``), ties and zero
blocks included. Encoders map float32 (n, 32) blocks into uint8 (n, bytes) and decoders back.
"""

from __future__ import annotations

import numpy as np

from quantcli.core.ggml.common import (
    F32,
    f16_bytes,
    f16_values,
    inverse_or_zero,
    round_half_away,
)

QK = 32
HALF = QK // 2


def _pick(x: np.ndarray, index: np.ndarray) -> np.ndarray:
    """x[i, index[i]] for float32 (n, 32) and intp (n,) -> (n,)."""
    return np.take_along_axis(x, index[:, None], axis=1)[:, 0]


def absmax(x: np.ndarray) -> np.ndarray:
    """Largest magnitude of each block, float32 (n, 32) -> (n,). (argmax, then a gather, is
    faster than NumPy's max over short rows.)"""
    a = np.abs(x)
    return _pick(a, a.argmax(axis=1))


def signed_absmax(x: np.ndarray) -> np.ndarray:
    """The first value of largest magnitude of each block, float32 (n, 32) -> (n,): the
    first of +a and -a when both occur, the first element of an all-zero block (as C's
    strict comparison and gguf-py's argmax pick it)."""
    return _pick(x, np.abs(x).argmax(axis=1))


def block_min_max(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) of each block, float32 (n, 32) -> (n,), (n,), with the sign of a zero
    extreme as NumPy's min and max give it (which gguf-py, and so the stored m, follows)."""
    lo = _pick(x, x.argmin(axis=1))
    hi = _pick(x, x.argmax(axis=1))
    for value, reduce in ((lo, np.min), (hi, np.max)):
        zero = np.flatnonzero(value == 0)
        if zero.size:
            value[zero] = reduce(x[zero], axis=1)
    return lo, hi


def pack_nibbles(q: np.ndarray, out: np.ndarray) -> None:
    """uint8 codes (n, 32), each < 16 -> uint8 (n, 16): j low, j + 16 high. Eight codes at a
    time, as uint64 words (codes below 16 shifted by 4 never carry into the next byte)."""
    words = np.ascontiguousarray(q).view(np.uint64)  # (n, 4): codes 0-7, 8-15, 16-23, 24-31
    packed = np.left_shift(words[:, 2:], np.uint64(4))
    np.bitwise_or(packed, words[:, :2], out=packed)
    out[...] = packed.view(np.uint8)


def pack_high_bits(q: np.ndarray, out: np.ndarray) -> None:
    """uint8 codes (n, 32) < 32 -> uint8 (n, 4): bit 4 of element j at bit j (little endian)."""
    out[...] = np.packbits(q >> 4, axis=1, bitorder="little")


def unpack_nibbles(qs: np.ndarray, out: np.ndarray) -> None:
    """uint8 (n, 16) -> codes 0..15 into (n, 32) ``out`` (any numeric dtype)."""
    np.bitwise_and(qs, 0x0F, out=out[:, :HALF], casting="unsafe")
    np.right_shift(qs, 4, out=out[:, HALF:], casting="unsafe")


def unpack_high_bits(qh: np.ndarray) -> np.ndarray:
    """uint8 (n, 4) -> uint8 (n, 32) of 0 or 16: bit j of the little-endian word, times 16."""
    bits = np.unpackbits(np.ascontiguousarray(qh), axis=1, bitorder="little")
    return np.left_shift(bits, 4, out=bits)


# --- Q8_0 ---


def encode_q8_0(x: np.ndarray, out: np.ndarray) -> None:
    """float32 (n, 32) -> uint8 (n, 34) ``out``."""
    d = absmax(x) / F32(127)
    v = np.multiply(x, inverse_or_zero(d)[:, None])
    q = round_half_away(v)
    f16_bytes(d, out[:, :2])
    out[:, 2:] = q.astype(np.int8).view(np.uint8)


def decode_q8_0(raw: np.ndarray, out: np.ndarray) -> None:
    """uint8 (n, 34) -> float32 (n, 32) ``out``: q * d."""
    np.multiply(raw[:, 2:].view(np.int8), f16_values(raw[:, :2]), out=out)


# --- Q4_0 / Q5_0: symmetric, d = (signed absmax) / -levels/2 ---


def _symmetric_codes(x: np.ndarray, half_levels: int) -> tuple[np.ndarray, np.ndarray]:
    """(d float32 (n,), codes uint8 (n, 32)) of Q4_0 (half_levels 8) or Q5_0 (16)."""
    d = signed_absmax(x) / F32(-half_levels)
    v = np.multiply(x, inverse_or_zero(d)[:, None])
    np.add(v, F32(half_levels + 0.5), out=v)
    # the cast truncates toward zero, as C's (int8_t) cast does
    q = v.astype(np.uint8)
    np.minimum(q, 2 * half_levels - 1, out=q)
    return d, q


def encode_q4_0(x: np.ndarray, out: np.ndarray) -> None:
    """float32 (n, 32) -> uint8 (n, 18) ``out``."""
    d, q = _symmetric_codes(x, 8)
    f16_bytes(d, out[:, :2])
    pack_nibbles(q, out[:, 2:])


def decode_q4_0(raw: np.ndarray, out: np.ndarray) -> None:
    """uint8 (n, 18) -> float32 (n, 32) ``out``: (q - 8) * d."""
    unpack_nibbles(raw[:, 2:], out)
    np.subtract(out, F32(8), out=out)
    np.multiply(out, f16_values(raw[:, :2]), out=out)


def encode_q5_0(x: np.ndarray, out: np.ndarray) -> None:
    """float32 (n, 32) -> uint8 (n, 22) ``out``."""
    d, q = _symmetric_codes(x, 16)
    f16_bytes(d, out[:, :2])
    pack_high_bits(q, out[:, 2:6])
    np.bitwise_and(q, 0x0F, out=q)
    pack_nibbles(q, out[:, 6:])


def decode_q5_0(raw: np.ndarray, out: np.ndarray) -> None:
    """uint8 (n, 22) -> float32 (n, 32) ``out``: (q - 16) * d."""
    q = np.empty(out.shape, np.uint8)
    unpack_nibbles(raw[:, 6:], q)
    np.bitwise_or(q, unpack_high_bits(raw[:, 2:6]), out=q)
    np.subtract(q, F32(16), out=out)
    np.multiply(out, f16_values(raw[:, :2]), out=out)


# --- Q4_1 / Q5_1: with a minimum, d = (max - min) / (levels - 1) ---


def _affine_codes(x: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(d, m float32 (n,), codes uint8 (n, 32)) of Q4_1 (levels 16) or Q5_1 (32)."""
    lo, hi = block_min_max(x)
    with np.errstate(over="ignore"):  # max - min may overflow to inf, as in C
        d = (hi - lo) / F32(levels - 1)
    v = np.subtract(x, lo[:, None])
    with np.errstate(invalid="ignore"):  # inf * 0 when d is inf
        np.multiply(v, inverse_or_zero(d)[:, None], out=v)
    np.add(v, F32(0.5), out=v)
    with np.errstate(invalid="ignore"):
        q = v.astype(np.uint8)
    np.minimum(q, levels - 1, out=q)
    return d, lo, q


def encode_q4_1(x: np.ndarray, out: np.ndarray) -> None:
    """float32 (n, 32) -> uint8 (n, 20) ``out``."""
    d, m, q = _affine_codes(x, 16)
    f16_bytes(d, out[:, :2])
    f16_bytes(m, out[:, 2:4])
    pack_nibbles(q, out[:, 4:])


def decode_q4_1(raw: np.ndarray, out: np.ndarray) -> None:
    """uint8 (n, 20) -> float32 (n, 32) ``out``: q * d + m."""
    unpack_nibbles(raw[:, 4:], out)
    np.multiply(out, f16_values(raw[:, :2]), out=out)
    np.add(out, f16_values(raw[:, 2:4]), out=out)


def encode_q5_1(x: np.ndarray, out: np.ndarray) -> None:
    """float32 (n, 32) -> uint8 (n, 24) ``out``."""
    d, m, q = _affine_codes(x, 32)
    f16_bytes(d, out[:, :2])
    f16_bytes(m, out[:, 2:4])
    pack_high_bits(q, out[:, 4:8])
    np.bitwise_and(q, 0x0F, out=q)
    pack_nibbles(q, out[:, 8:])


def decode_q5_1(raw: np.ndarray, out: np.ndarray) -> None:
    """uint8 (n, 24) -> float32 (n, 32) ``out``: q * d + m."""
    q = np.empty(out.shape, np.uint8)
    unpack_nibbles(raw[:, 8:], q)
    np.bitwise_or(q, unpack_high_bits(raw[:, 4:8]), out=q)
    np.multiply(q, f16_values(raw[:, :2]), out=out)
    np.add(out, f16_values(raw[:, 2:4]), out=out)
