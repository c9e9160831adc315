"""The bit-arithmetic FP8 cast (``schemes/fp8.encode_bits``) against ml_dtypes' cast of the
clipped value, for E4M3 and E5M2: every float32 whose low bits take the patterns that decide
rounding (zero, one, half an fp8 ulp and its neighbours, all ones) under every combination of
sign, exponent and kept mantissa bits; every fp8 value and midpoint and their float32
neighbours; float32 subnormals; and a million random bit patterns."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from quantcli.core.schemes.fp8 import encode_bits

DTYPES = [ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2]


def reference(t: np.ndarray, dtype) -> np.ndarray:
    top = np.float32(ml_dtypes.finfo(dtype).max)
    return np.clip(t, -top, top).astype(dtype).view(np.uint8)


def ours(t: np.ndarray, dtype) -> np.ndarray:
    out = np.empty(t.shape, np.uint8)
    encode_bits(t.copy(), dtype, out)  # encode_bits overwrites its input
    return out


def finite(bits: np.ndarray) -> np.ndarray:
    t = bits.astype(np.uint32).view(np.float32)
    return t[~np.isnan(t)]


def check(t: np.ndarray, dtype) -> None:
    got, want = ours(t, dtype), reference(t, dtype)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, (
        f"{bad.size} differences, e.g. {t[bad[:5]]!r} -> {got[bad[:5]]} not {want[bad[:5]]}"
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_rounding_pattern_of_every_kept_bit_combination(dtype):
    shift = 23 - ml_dtypes.finfo(dtype).nmant  # dropped mantissa bits
    half = 1 << (shift - 1)
    lows = np.array(
        [0, 1, 2, half - 1, half, half + 1, (1 << shift) - 1, (1 << shift) - 2, half // 2],
        np.uint64,
    )
    rng = np.random.default_rng(0)
    lows = np.concatenate([lows, rng.integers(0, 1 << shift, 23, dtype=np.uint64)])
    highs = np.arange(1 << (32 - shift), dtype=np.uint64) << np.uint64(shift)
    check(finite((highs[:, None] + lows[None, :]).reshape(-1)), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_fp8_value_and_midpoint_and_their_neighbours(dtype):
    values = np.arange(256, dtype=np.uint8).view(dtype).astype(np.float32)
    values = np.unique(values[np.isfinite(values)])
    midpoints = ((values[:-1].astype(np.float64) + values[1:]) / 2).astype(np.float32)
    points = np.concatenate([values, midpoints])
    near = [points]
    for direction in (np.inf, -np.inf):
        step = points
        for _ in range(3):
            step = np.nextafter(step, np.float32(direction))
            near.append(step)
    check(np.concatenate(near).astype(np.float32), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_signed_zeros_subnormals_infinities_and_random_bits(dtype):
    special = np.array([0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45, 1e-38, -1e-38], np.float32)
    rng = np.random.default_rng(1)
    subnormals = rng.integers(0, 1 << 23, 100_000, dtype=np.uint64)
    subnormals |= rng.integers(0, 2, subnormals.size, dtype=np.uint64) << np.uint64(31)
    random_bits = rng.integers(0, 1 << 32, 1_000_000, dtype=np.uint64)
    check(np.concatenate([special, finite(subnormals), finite(random_bits)]), dtype)
    # the sign of zero survives, as in the cast
    assert ours(np.array([-0.0, 0.0], np.float32), dtype).tolist() == [0x80, 0]
