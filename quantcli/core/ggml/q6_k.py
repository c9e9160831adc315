"""Q6_K (ggml type 14): 6-bit codes in super-blocks of 256, 16 sub-blocks of 16 with int8
scales under one float16 scale.

Layout ``{u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}``, 210 bytes = 6.5625 bits per weight.
x = d * scales[j] * (q - 32) for element i of sub-block j = i // 16. In each half h (128
elements) of the super-block, element 32 k + l (k = 0..3, l = 0..31) keeps its low 4 bits
in ql[64 h + 32 (k % 2) + l] (low nibble for k < 2, high for k >= 2) and its high 2 bits at
bits 2k of qh[32 h + l].

Encoding as ``quantize_row_q6_K_ref``: each sub-block's scale by ``make_qx_quants`` (32
levels each side, weights x^2); the sub-block scale of largest magnitude m sets
d = m / -128 and scales = min(127, nearest_int(-128 / m * scale)); codes are then recomputed
from the stored scales as nearest_int(x / (d * scale)) clipped to -32..31.
"""

from __future__ import annotations

import numpy as np

from quantcli.core.ggml.common import F32, f16_bytes, f16_values, nearest_int
from quantcli.core.ggml.kquant_search import (
    GROUP_MAX_EPS,
    block_major,
    element_major,
    largest_scale,
    make_qx_quants_rmse,
)

QK_K = 256


def encode_q6_k(x: np.ndarray, out: np.ndarray) -> None:
    """float32 (B, 256) -> uint8 (B, 210) ``out``."""
    blocks = x.shape[0]
    xt = element_major(x, 16)
    scale, codes = make_qx_quants_rmse(xt, 32)
    scales = scale.reshape(blocks, 16)
    max_scale = largest_scale(scales)
    zero = np.abs(max_scale) < GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F32(-128) / max_scale
        d = F32(1) / iscale
        sc = nearest_int(iscale[:, None] * scales)
        np.minimum(sc, F32(127), out=sc)
        sc[zero] = 0
        d[zero] = 0
        # codes again from the stored scales, where their product is not zero (C's "if (!d)":
        # a NaN product, from an inf d, requantizes, to code 32)
        dd = (f16_values(f16_bytes_of(d)) * sc).reshape(-1)
        requant = nearest_int(xt / dd)
    np.clip(requant, F32(-32), F32(31), out=requant)
    requant += F32(32)
    keep = dd == 0
    requant[:, keep] = codes[:, keep]
    q = block_major(requant, blocks)
    q[zero] = 0
    pack_q6(q, out[:, :192])
    out[:, 192:208] = sc.astype(np.int8).view(np.uint8)
    f16_bytes(d, out[:, 208:210])


def f16_bytes_of(d: np.ndarray) -> np.ndarray:
    """float32 (B,) -> uint8 (B, 2) float16 bytes."""
    raw = np.empty((d.shape[0], 2), np.uint8)
    f16_bytes(d, raw)
    return raw


def pack_q6(q: np.ndarray, out: np.ndarray) -> None:
    """Codes uint8 (B, 256) in 0..63 -> ql (B, 128) and qh (B, 64) into ``out`` (B, 192)."""
    b = q.shape[0]
    q4 = q.reshape(b, 2, 4, 32)
    ql = out[:, :128].reshape(b, 2, 2, 32)
    np.left_shift(q4[:, :, 2:] & 0x0F, 4, out=ql)
    ql |= q4[:, :, :2] & 0x0F
    hi = q4 >> 4
    qh = out[:, 128:].reshape(b, 2, 32)
    np.left_shift(hi[:, :, 3], 6, out=qh)
    qh |= hi[:, :, 2] << 4
    qh |= hi[:, :, 1] << 2
    qh |= hi[:, :, 0]


def decode_q6_k(raw: np.ndarray, out: np.ndarray) -> None:
    """uint8 (B, 210) -> float32 (B, 256) ``out``: (d * scale) * (q - 32)."""
    b = raw.shape[0]
    ql = raw[:, :128].reshape(b, 2, 1, 2, 32)
    qh = raw[:, 128:192].reshape(b, 2, 1, 32)
    low = np.empty((b, 2, 2, 2, 32), np.uint8)  # half, nibble, k % 2, l
    np.bitwise_and(ql[:, :, 0], 0x0F, out=low[:, :, 0])
    np.right_shift(ql[:, :, 0], 4, out=low[:, :, 1])
    high = (qh >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 0x03
    q = low.reshape(b, 2, 4, 32) | (high << 4)
    d = f16_values(raw[:, 208:210]) * raw[:, 192:208].view(np.int8)  # (B, 16)
    v = out.reshape(b, 16, 16)
    np.subtract(q.reshape(b, 16, 16), F32(32), out=v, dtype=np.float32)
    np.multiply(v, d[:, :, None], out=v)
