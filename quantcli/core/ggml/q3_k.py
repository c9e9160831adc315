"""Q3_K (ggml type 11): 3-bit codes in super-blocks of 256 = 16 sub-blocks of 16, each with
a signed 6-bit scale under one float16 super-block scale.

Layout ``{u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d}``, 110 bytes = 3.4375 bits per
weight. x = d * (s[j] - 32) * (q - 4) with q = low 2 bits + 4 * high bit: the low bits of
element 128 h + 32 k + l are at bits 2k of qs[32 h + l] (as Q2_K), the high bit of element e
is bit e // 32 of hmask[e % 32]. The 6-bit s[j]: low 4 bits in scales[j] (j < 8, low nibble)
or scales[j - 8] (high nibble), top 2 bits at bits 2 (j // 4) of scales[8 + j % 4].

Encoding as ``quantize_row_q3_K_ref``: each sub-block's scale by ``make_q3_quants``
(coordinate descent, weights x^2); the scale of largest magnitude m sets d = m / -32 and
s = nearest_int(-32 / m * scale) + 32 clipped to 0..63; codes are recomputed from the stored
scales as nearest_int(x / (d * (s - 32))) clipped to -4..3.
"""

from __future__ import annotations

import numpy as np

from quantcli.core.ggml.common import (
    F32,
    f16_bytes,
    f16_values,
    nearest_int,
    pack_bit_planes,
    unpack_bit_planes,
)
from quantcli.core.ggml.kquant_search import (
    block_major,
    element_major,
    largest_scale,
    make_q3_quants_rmse,
)
from quantcli.core.ggml.q2_k import pack_2bit, unpack_2bit


def pack_scales(s: np.ndarray, out: np.ndarray) -> None:
    """6-bit scales uint8 (B, 16) -> the 12 ``scales`` bytes (B, 12) in ``out``."""
    low = s & 0x0F
    out[:, 0:8] = low[:, :8] | (low[:, 8:] << 4)
    top = (s >> 4).reshape(-1, 4, 4)  # [j // 4, j % 4]
    out[:, 8:12] = top[:, 0] | (top[:, 1] << 2) | (top[:, 2] << 4) | (top[:, 3] << 6)


def unpack_scales(raw: np.ndarray) -> np.ndarray:
    """The 12 ``scales`` bytes uint8 (B, 12) -> 6-bit scales uint8 (B, 16)."""
    low = np.concatenate([raw[:, 0:8] & 0x0F, raw[:, 0:8] >> 4], axis=1)
    shifts = np.array([0, 2, 4, 6], np.uint8).reshape(1, 4, 1)
    top = ((raw[:, 8:12].reshape(-1, 1, 4) >> shifts) & 0x03).reshape(-1, 16)
    return low | (top << 4)


def encode_q3_k(x: np.ndarray, out: np.ndarray) -> None:
    """float32 (B, 256) -> uint8 (B, 110) ``out``."""
    blocks = x.shape[0]
    xt = element_major(x, 16)
    scale, codes = make_q3_quants_rmse(xt, 4)
    scales = scale.reshape(blocks, 16)
    max_scale = largest_scale(scales)
    nonzero = max_scale != 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F32(-32) / max_scale
        s = nearest_int(iscale[:, None] * scales)
        d = F32(1) / iscale
    np.clip(s, F32(-32), F32(31), out=s)
    s = (s + F32(32)).astype(np.uint8)
    s[~nonzero] = 0
    d[~nonzero] = 0
    pack_scales(s, out[:, 96:108])
    f16_bytes(d, out[:, 108:110])
    dd = (f16_values(out[:, 108:110]) * (s.astype(np.float32) - F32(32))).reshape(-1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        requant = nearest_int(xt / dd)
    np.clip(requant, F32(-4), F32(3), out=requant)
    requant += F32(4)
    keep = dd == 0
    if keep.any():
        requant[:, keep] = codes[:, keep]
    q = block_major(requant, blocks)
    high = q >> 2
    out[:, 0:32] = pack_bit_planes(high.reshape(-1, 8, 32))
    pack_2bit(q & 0x03, out[:, 32:96])


def decode_q3_k(raw: np.ndarray, out: np.ndarray) -> None:
    """uint8 (B, 110) -> float32 (B, 256) ``out``: (d * (s - 32)) * (q - 4)."""
    s = unpack_scales(raw[:, 96:108]).astype(np.int8) - np.int8(32)
    d = f16_values(raw[:, 108:110]) * s
    low = unpack_2bit(raw[:, 32:96])
    high = unpack_bit_planes(raw[:, 0:32])
    v = out.reshape(-1, 16, 16)
    q = (low | (high.reshape(-1, 256) << 2)).astype(np.int8) - np.int8(4)
    np.multiply(q.reshape(-1, 16, 16), d[:, :, None], out=v)
