"""Q2_K (ggml type 10): 2-bit codes with a minimum, in super-blocks of 256 = 16 sub-blocks
of 16, each with a 4-bit scale and a 4-bit minimum under two float16 super-block scales.

Layout ``{u8 scales[16]; u8 qs[64]; f16 d, dmin}``, 84 bytes = 2.625 bits per weight.
x = d * (scales[j] & 15) * q - dmin * (scales[j] >> 4) for sub-block j. In each half h (128
elements), element 32 k + l (k = 0..3) is at bits 2k of qs[32 h + l].

Encoding as ``quantize_row_q2_K_ref``: each sub-block's scale and minimum by
``make_qkx2_quants`` (3 levels, weights |x|, absolute error, candidates -0.5 .. +1 around 3);
d = max scale / 15 and dmin = max min / 15, 4-bit values nearest_int(15 / max * value), and
the codes recomputed from them as nearest_int((x + dmin * m) / (d * sc)).
"""

from __future__ import annotations

import numpy as np

from quantcli.core.ggml.common import F32, f16_bytes, f16_values, nearest_int
from quantcli.core.ggml.kquant_search import (
    block_major,
    element_major,
    largest_positive,
    make_qkx2_quants,
)
from quantcli.core.ggml.q4_k import EXACT_ROUNDING_ABOVE


def _four_bit(values: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """int32 (B, 16) = nearest_int(15 / peak * values); 0 where peak <= 0."""
    with np.errstate(divide="ignore"):
        inv = np.where(peak > 0, F32(15) / peak, F32(0))
    return nearest_int(inv[:, None] * values).astype(np.int32)


def pack_2bit(q: np.ndarray, out: np.ndarray) -> None:
    """Codes uint8 (B, 256) in 0..3 -> (B, 64) ``out``: element 128 h + 32 k + l at bits 2k
    of byte 32 h + l."""
    q4 = q.reshape(-1, 2, 4, 32)
    qs = out.reshape(-1, 2, 32)
    np.left_shift(q4[:, :, 3], 6, out=qs)
    qs |= q4[:, :, 2] << 4
    qs |= q4[:, :, 1] << 2
    qs |= q4[:, :, 0]


def unpack_2bit(qs: np.ndarray) -> np.ndarray:
    """(B, 64) -> codes uint8 (B, 256) in 0..3."""
    shifts = np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
    return ((qs.reshape(-1, 2, 1, 32) >> shifts) & 0x03).reshape(-1, 256)


def encode_q2_k(x: np.ndarray, out: np.ndarray) -> None:
    """float32 (B, 256) -> uint8 (B, 84) ``out``."""
    blocks = x.shape[0]
    xt = element_major(x, 16)
    exact = bool(np.abs(x).max(initial=0) > EXACT_ROUNDING_ABOVE)
    scale, the_min, codes = make_qkx2_quants(
        xt, np.abs(xt), 3, -0.5, F32(0.1), 15, use_mad=True, exact=exact
    )
    scales = scale.reshape(blocks, 16)
    mins = the_min.reshape(blocks, 16)
    max_scale = largest_positive(scales)
    max_min = largest_positive(mins)
    # C stores the int into a uint8 field (mod 256), then ORs the minimum's value << 4
    packed = (_four_bit(scales, max_scale) | (_four_bit(mins, max_min) << 4)).astype(np.uint8)
    out[:, 0:16] = packed
    f16_bytes(np.where(max_scale > 0, max_scale / F32(15), F32(0)), out[:, 80:82])
    f16_bytes(np.where(max_min > 0, max_min / F32(15), F32(0)), out[:, 82:84])
    d = (f16_values(out[:, 80:82]) * (packed & 0x0F)).reshape(-1)
    dm = (f16_values(out[:, 82:84]) * (packed >> 4)).reshape(-1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        requant = nearest_int((xt + dm) / d)
    np.clip(requant, F32(0), F32(3), out=requant)
    keep = d == 0
    if keep.any():
        requant[:, keep] = codes[:, keep]
    pack_2bit(block_major(requant, blocks), out[:, 16:80])


def decode_q2_k(raw: np.ndarray, out: np.ndarray) -> None:
    """uint8 (B, 84) -> float32 (B, 256) ``out``: (d * sc) * q - dmin * m."""
    scales = raw[:, 0:16]
    d = f16_values(raw[:, 80:82]) * (scales & 0x0F)
    dm = f16_values(raw[:, 82:84]) * (scales >> 4)
    v = out.reshape(-1, 16, 16)
    np.multiply(unpack_2bit(raw[:, 16:80]).reshape(-1, 16, 16), d[:, :, None], out=v)
    np.subtract(v, dm[:, :, None], out=v)
