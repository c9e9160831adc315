"""Q4_K and Q5_K (ggml types 12 and 13): 4- and 5-bit codes with a minimum, in super-blocks
of 256 = 8 sub-blocks of 32, each with a 6-bit scale and a 6-bit minimum under two float16
super-block scales.

Layouts: Q4_K ``{f16 d, dmin; u8 scales[12]; u8 qs[128]}``, 144 bytes = 4.5 bits per weight;
Q5_K ``{f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}``, 176 bytes = 5.5 bits per
weight. x = d * sc[j] * q - dmin * m[j] for sub-block j. In ``qs`` each 64 elements take 32
bytes, the first 32 in the low nibbles and the next 32 in the high ones; in Q5_K, bit 4 of
element 32 k + l is bit k of qh[l]. ``scales`` packs sc[j] and m[j] (``get_scale_min_k4``):
for j < 4, sc[j] = scales[j] & 63 and m[j] = scales[j + 4] & 63; for j >= 4, the low 4 bits
are in scales[j + 4] (sc low nibble, m high nibble) and the top 2 bits in the top 2 bits of
scales[j - 4] (sc) and scales[j] (m).

Encoding as ``quantize_row_q4_K_ref`` / ``quantize_row_q5_K_ref``: each sub-block's scale
and minimum by ``make_qkx2_quants`` with weights sqrt(mean x^2) + |x| (Q4_K: 15 levels,
candidates -1 .. +1 around 15 in steps of 0.1; Q5_K: 31 levels, -0.5 .. +1 around 31);
the largest scale and minimum set d = max / 63 and dmin = max_min / 63, the sub-block
values are nearest_int(63 / max * value) (6 bits), and the codes are recomputed from the
stored values as nearest_int((x + dmin * m) / (d * sc)).
"""

from __future__ import annotations

import numpy as np

from quantcli.core.ggml.common import (
    F32,
    f16_bytes,
    f16_values,
    nearest_int,
    pack_bit_planes,
    sum_rows,
    unpack_bit_planes,
)
from quantcli.core.ggml.kquant_search import (
    block_major,
    element_major,
    largest_positive,
    make_qkx2_quants,
)

# weights beyond this make max - min overflow float32 in the search: round as C does there
EXACT_ROUNDING_ABOVE = F32(1e37)


def _search(x: np.ndarray, nmax: int, rmin: float, nstep: int):
    """Sub-block scales and minima of super-blocks x float32 (B, 256): (xt (32, 8B),
    scale (B, 8), the_min (B, 8), codes (32, 8B))."""
    blocks = x.shape[0]
    xt = element_major(x, 32)
    sum_x2 = sum_rows(xt * xt)
    av_x = np.sqrt(sum_x2 / F32(32))
    weights = np.abs(xt)
    weights += av_x
    exact = bool(np.abs(x).max(initial=0) > EXACT_ROUNDING_ABOVE)
    scale, the_min, codes = make_qkx2_quants(
        xt, weights, nmax, rmin, F32(0.1), nstep, use_mad=False, exact=exact
    )
    return xt, scale.reshape(blocks, 8), the_min.reshape(blocks, 8), codes


def _six_bit(values: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """uint8 (B, 8) = MIN(63, (uint8_t) nearest_int(63 / peak * values)); 0 where peak <= 0."""
    with np.errstate(divide="ignore"):
        inv = np.where(peak > 0, F32(63) / peak, F32(0))
    q = nearest_int(inv[:, None] * values).astype(np.int32).astype(np.uint8)
    return np.minimum(q, 63, out=q)


def pack_scales(sc: np.ndarray, m: np.ndarray, out: np.ndarray) -> None:
    """6-bit sc, m uint8 (B, 8) -> the 12 ``scales`` bytes (B, 12) in ``out``."""
    out[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    out[:, 4:8] = m[:, :4] | ((m[:, 4:] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:] & 0x0F) | ((m[:, 4:] & 0x0F) << 4)


def unpack_scales(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 12 ``scales`` bytes uint8 (B, 12) -> (sc, m) uint8 (B, 8) (get_scale_min_k4)."""
    q = raw.astype(np.uint8)
    sc = np.concatenate([q[:, 0:4] & 63, (q[:, 8:12] & 0x0F) | ((q[:, 0:4] >> 6) << 4)], axis=1)
    m = np.concatenate([q[:, 4:8] & 63, (q[:, 8:12] >> 4) | ((q[:, 4:8] >> 6) << 4)], axis=1)
    return sc, m


def _encode(x: np.ndarray, out: np.ndarray, nmax: int, rmin: float, nstep: int) -> np.ndarray:
    """Shared part of Q4_K and Q5_K: fills d, dmin and scales (out[:, :16]) and returns the
    codes uint8 (B, 256) in element order."""
    blocks = x.shape[0]
    xt, scales, mins, codes = _search(x, nmax, rmin, nstep)
    max_scale = largest_positive(scales)
    max_min = largest_positive(mins)
    sc = _six_bit(scales, max_scale)
    m = _six_bit(mins, max_min)
    f16_bytes(max_scale / F32(63), out[:, 0:2])
    f16_bytes(max_min / F32(63), out[:, 2:4])
    pack_scales(sc, m, out[:, 4:16])
    d = (f16_values(out[:, 0:2]) * sc).reshape(-1)
    dm = (f16_values(out[:, 2:4]) * m).reshape(-1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        requant = nearest_int((xt + dm) / d)
    np.clip(requant, F32(0), F32(nmax), out=requant)
    # C skips sub-blocks whose d is 0 ("if (!d) continue"): they keep the search's codes
    keep = d == 0
    if keep.any():
        requant[:, keep] = codes[:, keep]
    return block_major(requant, blocks)


def encode_q4_k(x: np.ndarray, out: np.ndarray) -> None:
    """float32 (B, 256) -> uint8 (B, 144) ``out``."""
    q = _encode(x, out, 15, -1.0, 20)
    q4 = q.reshape(-1, 4, 2, 32)
    qs = out[:, 16:].reshape(-1, 4, 32)
    np.left_shift(q4[:, :, 1], 4, out=qs)
    qs |= q4[:, :, 0]


def encode_q5_k(x: np.ndarray, out: np.ndarray) -> None:
    """float32 (B, 256) -> uint8 (B, 176) ``out``."""
    q = _encode(x, out, 31, -0.5, 15)
    out[:, 16:48] = pack_bit_planes(q.reshape(-1, 8, 32) >> 4)
    q4 = (q & 0x0F).reshape(-1, 4, 2, 32)
    qs = out[:, 48:].reshape(-1, 4, 32)
    np.left_shift(q4[:, :, 1], 4, out=qs)
    qs |= q4[:, :, 0]


def _decode(raw: np.ndarray, q: np.ndarray, out: np.ndarray) -> None:
    """(d * sc) * q - dmin * m into ``out`` (B, 256), codes q uint8 (B, 8, 32)."""
    sc, m = unpack_scales(raw[:, 4:16])
    d = f16_values(raw[:, 0:2]) * sc
    dm = f16_values(raw[:, 2:4]) * m
    v = out.reshape(-1, 8, 32)
    np.multiply(q, d[:, :, None], out=v)
    np.subtract(v, dm[:, :, None], out=v)


def decode_q4_k(raw: np.ndarray, out: np.ndarray) -> None:
    """uint8 (B, 144) -> float32 (B, 256) ``out``."""
    qs = raw[:, 16:].reshape(-1, 4, 1, 32)
    q = np.empty((raw.shape[0], 4, 2, 32), np.uint8)
    np.bitwise_and(qs[:, :, 0], 0x0F, out=q[:, :, 0])
    np.right_shift(qs[:, :, 0], 4, out=q[:, :, 1])
    _decode(raw, q.reshape(-1, 8, 32), out)


def decode_q5_k(raw: np.ndarray, out: np.ndarray) -> None:
    """uint8 (B, 176) -> float32 (B, 256) ``out``."""
    qs = raw[:, 48:].reshape(-1, 4, 1, 32)
    q = np.empty((raw.shape[0], 4, 2, 32), np.uint8)
    np.bitwise_and(qs[:, :, 0], 0x0F, out=q[:, :, 0])
    np.right_shift(qs[:, :, 0], 4, out=q[:, :, 1])
    high = unpack_bit_planes(raw[:, 16:48])
    q = q.reshape(-1, 8, 32) | (high << 4)
    _decode(raw, q, out)
