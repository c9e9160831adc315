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
)
from quantcli.core.parallel import scratch

QK = 32
HALF = QK // 2
# four float32 as one 16-byte unit: the element-major layout below moves these, not floats
QUAD = np.dtype("V16")
SIGN = np.int32(-0x80000000)
# largest float32 below 0.5: trunc(v + copysign(ROUND_BIAS, v)) is C's roundf(v) for every
# float32 v (adding 0.5 instead rounds 0.49999997 up to 1), checked on all of them
ROUND_BIAS = np.nextafter(F32(0.5), F32(0))


def legacy_buffer(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """This thread's reusable scratch array for one purpose of the legacy codecs."""
    return scratch("ggml-legacy-" + name, shape, dtype)


def element_quads(x: np.ndarray) -> np.ndarray:
    """float32 (n, 32) blocks -> float32 (8, 4n), [j, 4i + k] = x[i, 4j + k] (a scratch array).

    Row j holds elements 4j..4j+3 of every block, so an operation over the 32 elements of
    every block is 8 long contiguous rows: reductions are 7 elementwise maxima of whole rows
    (not 4096 reductions of 32), and a per-block factor spread over (4n,) broadcasts along
    them. Moving 16-byte units makes the transpose a quarter of a float32 one's cost."""
    n = x.shape[0]
    quads = legacy_buffer("quads", (8, n), QUAD)
    np.copyto(quads, np.ascontiguousarray(x).view(QUAD).T)
    return quads.view(np.float32).reshape(8, 4 * n)


def reduce_blocks(a: np.ndarray, ufunc: np.ufunc) -> np.ndarray:
    """``ufunc`` (np.maximum or np.minimum) over the 32 elements of each block, from the
    element-major (8, 4n) layout of ``element_quads``: (n,) of a's dtype."""
    lanes = ufunc.reduce(a, axis=0)  # (4n,): four lanes per block
    block = ufunc(lanes[0::4], lanes[1::4])
    ufunc(block, lanes[2::4], out=block)
    return ufunc(block, lanes[3::4], out=block)


def spread_blocks(v: np.ndarray, name: str) -> np.ndarray:
    """(n,) -> (4n,) scratch, each value four times: a per-block factor for (8, 4n) rows."""
    wide = legacy_buffer(name, (v.shape[0], 4), v.dtype)
    for k in range(4):
        wide[:, k] = v
    return wide.reshape(-1)


def store_quads(codes: np.ndarray, out: np.ndarray) -> None:
    """uint8 (r, 4n) in element-major order -> uint8 (n, 4r) ``out`` (last axis contiguous):
    byte 4j + k of block i is codes[j, 4i + k], moved four bytes at a time."""
    words = codes.view(np.uint32)  # (r, n)
    columns = out.view(np.uint32)  # (n, r), rows of blocks apart
    # one strided copy a row: a single transposing copy runs its inner loop over r only
    for j in range(words.shape[0]):
        np.copyto(columns[:, j], words[j])


def clamp_codes(codes: np.ndarray, top: int) -> None:
    """min(codes, top) in place, uint8 (8, 4n). Against a row of ``top`` rather than the
    scalar: NumPy's SIMD loop takes two arrays (with a scalar it ran 15x slower)."""
    row = legacy_buffer("top", (codes.shape[1],), np.uint8)
    row.fill(top)
    np.minimum(codes, row, out=codes)


def pack_quads(codes: np.ndarray, out: np.ndarray) -> None:
    """uint8 codes < 16 (8, 4n), element-major -> uint8 (n, 16) ``out``: element j low and
    j + 16 high nibble of byte j. ``codes`` is changed. Shifted as uint32 words (a code
    below 16 shifted by 4 stays in its byte; NumPy's uint8 shift is 8x slower)."""
    words = codes.view(np.uint32)
    np.left_shift(words[4:], 4, out=words[4:])
    np.bitwise_or(words[:4], words[4:], out=words[:4])
    store_quads(codes[:4], out)


# bits 28..31 of (four 0/16 bytes) * FIFTH_GATHER are bit 4 of bytes 0..3 (little-endian,
# byte k at bit 8k): the 16 partial products land on distinct bits, so nothing carries
FIFTH_GATHER = np.uint32(0x01020408)
# row j of the fifth bits' words, elements 4j..4j+3: its nibble goes to bits 4j..4j+3
FIFTH_PLACE = (np.uint32(1) << np.arange(0, 32, 4, dtype=np.uint32))[:, None]


def _fifth_bits(codes: np.ndarray, out: np.ndarray) -> None:
    """Bit 4 of each of the 32 codes (< 32) of a block, element-major uint8 (8, 4n), as the
    little-endian uint32 ``qh`` (bit j from element j) into uint8 (n, 4) ``out``; then the
    codes keep their low four bits."""
    n = codes.shape[1] // 4
    words = legacy_buffer("fifth-bits", (8, n), np.uint32)  # row j: elements 4j..4j+3
    np.bitwise_and(codes.view("<u4"), 0x10101010, out=words)
    np.multiply(words, FIFTH_GATHER, out=words)
    np.right_shift(words, 28, out=words)
    np.multiply(words, FIFTH_PLACE, out=words)
    np.copyto(out.view("<u4")[:, 0], np.bitwise_or.reduce(words, axis=0))
    np.bitwise_and(codes, 0x0F, out=codes)


def signed_absmax(x: np.ndarray, quads: np.ndarray) -> np.ndarray:
    """The first value of largest magnitude of each block, float32 (n, 32) -> (n,), given the
    blocks' ``element_quads``: the first of +a and -a when both occur, the first element of
    an all-zero block (as gguf-py's argmax picks it).

    Non-negative floats order like their bits read as int32 and negative ones like their bits
    read as uint32 (-0.0 the least), so the int32 maximum of a block is its largest value
    when it holds one >= +0.0 and the uint32 maximum its most negative value when it holds
    one <= -0.0 (each is the other extreme otherwise). The larger magnitude of the two is the
    peak; when they are +a and -a, the few such blocks take the first one as C does."""
    bits = quads.view(np.int32)
    hi = reduce_blocks(bits, np.maximum)
    lo = reduce_blocks(bits.view(np.uint32), np.maximum).view(np.int32)
    peak = hi.view(np.float32)
    lo_value = lo.view(np.float32)
    peak = np.where(peak > -lo_value, peak, lo_value)
    both = np.flatnonzero(np.bitwise_xor(hi, lo, out=hi) == SIGN)  # +a and -a, a may be 0
    if both.size:
        part = x[both]
        peak[both] = np.take_along_axis(part, np.abs(part).argmax(axis=1)[:, None], axis=1)[:, 0]
    return peak


def block_min_max(x: np.ndarray, quads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) of each block, float32 (n, 32) -> (n,), (n,), given the blocks'
    ``element_quads``, with the sign of a zero extreme as NumPy's min and max of the block
    give it (which gguf-py, and so the stored m, follows)."""
    lo = reduce_blocks(quads, np.minimum)
    hi = reduce_blocks(quads, np.maximum)
    # the maxima above may give the other zero: redo those blocks as NumPy's min and max
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
    bits = element_quads(x).view(np.int32)
    magnitude = np.bitwise_and(bits, 0x7FFFFFFF, out=legacy_buffer("abs", bits.shape, np.int32))
    d = reduce_blocks(magnitude, np.maximum).view(np.float32) / F32(127)
    # roundf(x / d) as trunc(|x| * (1 / d) + ROUND_BIAS) with x's sign: the product's
    # magnitude is |x * (1 / d)|, and the sign is set on the bits before the truncating cast
    v = np.multiply(
        magnitude.view(np.float32),
        spread_blocks(inverse_or_zero(d), "factor"),
        out=legacy_buffer("values", bits.shape, np.float32),
    )
    np.add(v, ROUND_BIAS, out=v)
    sign = np.bitwise_and(bits, SIGN, out=magnitude)
    np.bitwise_or(v.view(np.int32), sign, out=v.view(np.int32))
    codes = legacy_buffer("codes", bits.shape, np.int8)
    np.copyto(codes, v, casting="unsafe")
    f16_bytes(d, out[:, :2])
    store_quads(codes.view(np.uint8), out[:, 2:])


def decode_q8_0(raw: np.ndarray, out: np.ndarray) -> None:
    """uint8 (n, 34) -> float32 (n, 32) ``out``: q * d."""
    np.multiply(raw[:, 2:].view(np.int8), f16_values(raw[:, :2]), out=out)


# --- Q4_0 / Q5_0: symmetric, d = (signed absmax) / -levels/2 ---


def _symmetric_codes(x: np.ndarray, half_levels: int) -> tuple[np.ndarray, np.ndarray]:
    """(d float32 (n,), codes uint8 (8, 4n) element-major) of Q4_0 (half_levels 8) or Q5_0
    (16)."""
    quads = element_quads(x)
    d = signed_absmax(x, quads) / F32(-half_levels)
    v = np.multiply(
        quads,
        spread_blocks(inverse_or_zero(d), "factor"),
        out=legacy_buffer("values", quads.shape, F32),
    )
    np.add(v, F32(half_levels + 0.5), out=v)
    # the cast truncates toward zero, as C's (int8_t) cast does
    q = legacy_buffer("codes", quads.shape, np.uint8)
    np.copyto(q, v, casting="unsafe")
    clamp_codes(q, 2 * half_levels - 1)
    return d, q


def encode_q4_0(x: np.ndarray, out: np.ndarray) -> None:
    """float32 (n, 32) -> uint8 (n, 18) ``out``."""
    d, q = _symmetric_codes(x, 8)
    f16_bytes(d, out[:, :2])
    pack_quads(q, out[:, 2:])


def decode_q4_0(raw: np.ndarray, out: np.ndarray) -> None:
    """uint8 (n, 18) -> float32 (n, 32) ``out``: (q - 8) * d."""
    unpack_nibbles(raw[:, 2:], out)
    np.subtract(out, F32(8), out=out)
    np.multiply(out, f16_values(raw[:, :2]), out=out)


def encode_q5_0(x: np.ndarray, out: np.ndarray) -> None:
    """float32 (n, 32) -> uint8 (n, 22) ``out``."""
    d, q = _symmetric_codes(x, 16)
    f16_bytes(d, out[:, :2])
    _fifth_bits(q, out[:, 2:6])
    pack_quads(q, out[:, 6:])


def decode_q5_0(raw: np.ndarray, out: np.ndarray) -> None:
    """uint8 (n, 22) -> float32 (n, 32) ``out``: (q - 16) * d."""
    q = np.empty(out.shape, np.uint8)
    unpack_nibbles(raw[:, 6:], q)
    np.bitwise_or(q, unpack_high_bits(raw[:, 2:6]), out=q)
    np.subtract(q, F32(16), out=out)
    np.multiply(out, f16_values(raw[:, :2]), out=out)


# --- Q4_1 / Q5_1: with a minimum, d = (max - min) / (levels - 1) ---


def _affine_codes(x: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(d, m float32 (n,), codes uint8 (8, 4n) element-major) of Q4_1 (levels 16) or Q5_1
    (32)."""
    quads = element_quads(x)
    lo, hi = block_min_max(x, quads)
    # as in C, max - min may overflow to inf (then 1 / d is 0, and x - min may be inf too:
    # inf * 0 is NaN, which the cast turns into a code as C's does)
    with np.errstate(over="ignore", invalid="ignore"):
        d = (hi - lo) / F32(levels - 1)
        v = np.subtract(
            quads, spread_blocks(lo, "offset"), out=legacy_buffer("values", quads.shape, F32)
        )
        np.multiply(v, spread_blocks(inverse_or_zero(d), "factor"), out=v)
        np.add(v, F32(0.5), out=v)
        q = legacy_buffer("codes", quads.shape, np.uint8)
        np.copyto(q, v, casting="unsafe")
    clamp_codes(q, levels - 1)
    return d, lo, q


def encode_q4_1(x: np.ndarray, out: np.ndarray) -> None:
    """float32 (n, 32) -> uint8 (n, 20) ``out``."""
    d, m, q = _affine_codes(x, 16)
    f16_bytes(d, out[:, :2])
    f16_bytes(m, out[:, 2:4])
    pack_quads(q, out[:, 4:])


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
    _fifth_bits(q, out[:, 4:8])
    pack_quads(q, out[:, 8:])


def decode_q5_1(raw: np.ndarray, out: np.ndarray) -> None:
    """uint8 (n, 24) -> float32 (n, 32) ``out``: q * d + m."""
    q = np.empty(out.shape, np.uint8)
    unpack_nibbles(raw[:, 8:], q)
    np.bitwise_or(q, unpack_high_bits(raw[:, 4:8]), out=q)
    np.multiply(q, f16_values(raw[:, :2]), out=out)
    np.add(out, f16_values(raw[:, 2:4]), out=out)
