"""Weights the ggml codec tests share: ordinary, badly scaled, tied and edge-valued blocks."""

from __future__ import annotations

import numpy as np

# one table of edge magnitudes: zeros of both signs, subnormals, the float32 normal limit,
# 1/d overflow (amax below ~3.7e-37 makes 1 / (amax / 127) inf), float16's limit, values
# whose scale overflows float16, the float32 limit, and halves that make ties
EDGE_VALUES = np.array(
    [0.0, -0.0, 1e-45, -1e-45, 1e-40, 1.2e-38, 3e-37, 1e-30, 6e-5, 65504.0, 1e7, 3e38,
     -3.4e38, 0.5, -0.5, 1.5, 2.5, 127.0, -8.0, 8.0, 16.0, -16.0, 7.5, 6.0, 5.0],
    np.float32,
)  # fmt: skip


def edge_blocks(block: int) -> np.ndarray:
    """float32 (k, block): every ordered pair of edge values placed in an otherwise zero
    block (first element and two more), the edge table tiled in all orders and signs, and
    all-zero blocks of both zero signs."""
    e = EDGE_VALUES
    pairs = np.array(np.meshgrid(e, e)).reshape(2, -1).T
    blocks = np.zeros((pairs.shape[0], block), np.float32)
    blocks[:, 0] = pairs[:, 0]
    blocks[:, 5] = pairs[:, 1]
    blocks[:, 7] = pairs[:, 1] * np.float32(0.37)
    tiled = np.resize(e, (4, block * 4))
    tiled[1] *= -1
    tiled[2] = tiled[2][::-1]
    tiled[3] = np.roll(tiled[3], 7)
    zeros = np.zeros((2, block), np.float32)
    zeros[1, ::3] = -0.0
    return np.concatenate([blocks, tiled.reshape(-1, block), zeros]).astype(np.float32)


def mixed_weights(rows: int, n: int, seed: int = 20261130) -> np.ndarray:
    """float32 (rows, n): Gaussian rows, rows scaled from 1e-30 to 1e30, spiky rows (one
    outlier every 97 values), heavy-tailed rows, rows on a coarse grid (many exact ties), and
    non-negative rows, in about equal parts."""
    rng = np.random.default_rng(seed)
    k = max(1, rows // 6)
    normal = rng.standard_normal((rows - 5 * k, n))
    scaled = rng.standard_normal((k, n)) * 10.0 ** rng.uniform(-30, 30, (k, 1))
    spiky = rng.standard_normal((k, n)) * 0.02
    spiky[:, ::97] *= 300
    heavy = rng.standard_t(2, (k, n))
    grid = np.round(rng.standard_normal((k, n)) * 4) / 4
    relu = np.maximum(rng.standard_normal((k, n)), 0)
    return np.concatenate([normal, scaled, spiky, heavy, grid, relu]).astype(np.float32)


def relative_mse(w: np.ndarray, w_hat: np.ndarray) -> float:
    """||w - w_hat||^2 / ||w||^2, accumulated in float64."""
    w64 = w.astype(np.float64)
    return float(((w64 - w_hat) ** 2).sum() / (w64**2).sum())
