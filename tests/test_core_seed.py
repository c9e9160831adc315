"""The seed notebook's figures (GUIDE section 3) on the bundled sample weights, the uniform
quantizer's D^2/12 law, and the error metrics against NumPy."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from quantcli.core import ErrorStats, QuantSpec, clipped_mask, quantize
from quantcli.core.metrics import uniform_mse

SAMPLES = Path(__file__).resolve().parent.parent / "sample_weights"


@pytest.fixture(scope="module")
def seed() -> np.ndarray:
    x = np.load(SAMPLES / "seed_outlier.npy")
    # 10,000 draws of U(-50, 150), the last one replaced by the outlier 1000
    assert x.shape == (10_000,) and x.dtype == np.float32
    assert x[-1] == 1000 and -50 <= x[:-1].min() and x[:-1].max() <= 150
    return x


@pytest.fixture(scope="module")
def uniform_block() -> np.ndarray:
    return np.load(SAMPLES / "uniform_4x128x256.npy")


def seed_stats(x: np.ndarray, scheme: str, calibration: str):
    spec = QuantSpec(scheme=scheme, bits=8, granularity="tensor", calibration=calibration)
    qt = quantize(x, spec)
    clipped = clipped_mask(x, qt)
    return qt, clipped, ErrorStats.of(x, qt.dequantize(), clipped)


def test_d_squared_over_12_predictions():
    # GUIDE: D = 1050/255 -> 1.41; D = 1000/127 -> 5.17; D = 200/255 -> 0.051
    assert uniform_mse(1050 / 255) == pytest.approx(1.41, rel=0.01)
    assert uniform_mse(1000 / 127) == pytest.approx(5.17, rel=0.01)
    assert uniform_mse(200 / 255) == pytest.approx(0.051, rel=0.01)
    assert uniform_mse(3.0) == 0.75  # 9 / 12


def test_zeropoint_minmax_mse(seed):
    qt, clipped, stats = seed_stats(seed, "zeropoint", "minmax")
    # range [-50, 1000] (min(x) = -49.98): 255 steps of 1050/255
    assert float(qt.scale[0]) == pytest.approx((1000 + 49.98) / 255, rel=1e-6)
    assert not clipped.any()
    assert stats.mse == pytest.approx(1.41, rel=0.05)
    assert stats.mse == pytest.approx(uniform_mse(1050 / 255), rel=0.05)
    assert stats.mse == pytest.approx(np.mean((seed - qt.dequantize()) ** 2.0), rel=1e-9)


def test_absmax_minmax_mse(seed):
    qt, clipped, stats = seed_stats(seed, "absmax", "minmax")
    assert float(qt.scale[0]) == pytest.approx(1000 / 127, rel=1e-6)
    assert stats.mse == pytest.approx(5.11, rel=0.05)
    assert stats.mse == pytest.approx(uniform_mse(1000 / 127), rel=0.05)  # 5.17


def test_zeropoint_percentile_mse_with_and_without_the_outlier(seed):
    qt, clipped, stats = seed_stats(seed, "zeropoint", "percentile")
    # the 99.99th percentile is below the outlier: only the outlier is clipped
    assert clipped.sum() == 1 and clipped[-1]
    assert stats.clipped == 1 and stats.clipped_fraction == pytest.approx(1e-4)
    hi = float(np.percentile(seed, 99.99))
    assert float(qt.clip_hi[0]) == pytest.approx(hi, rel=1e-6)
    assert stats.mse == pytest.approx(72.3, rel=0.05)
    # with the outlier, its own error dominates: (1000 - hi)^2 / n
    assert stats.mse == pytest.approx((1000 - hi) ** 2 / seed.size, rel=0.01)
    assert stats.mse_unclipped == pytest.approx(0.05, rel=0.05)
    assert stats.mse_unclipped == pytest.approx(uniform_mse(200 / 255), rel=0.05)
    err = seed.astype(np.float64) - qt.dequantize()
    assert stats.mse_unclipped == pytest.approx(np.mean(err[:-1] ** 2), rel=1e-9)


@pytest.mark.parametrize("scheme", ["absmax", "zeropoint"])
@pytest.mark.parametrize("axis, rel", [(0, 0.03), (1, 0.10)])
def test_per_channel_mse_follows_each_channels_own_range(uniform_block, scheme, axis, rel):
    x = uniform_block.astype(np.float64)
    spec = QuantSpec(scheme=scheme, bits=8, granularity="channel", axis=axis)
    x_hat = quantize(uniform_block, spec).dequantize()
    others = tuple(i for i in range(3) if i != axis)
    mse = ((x - x_hat) ** 2).mean(axis=others)
    lo = np.minimum(x.min(axis=others), 0)
    hi = np.maximum(x.max(axis=others), 0)
    if scheme == "absmax":
        step = np.maximum(hi, -lo) / 127
    else:
        step = (hi - lo) / 255
    predicted = step**2 / 12
    np.testing.assert_allclose(mse, predicted, rtol=rel)
    # the channels holding the planted max + 1 / min - 1 have a wider range, hence a larger step
    assert step.max() > step.min()


def test_per_channel_mse_on_short_channels_on_average(uniform_block):
    # 512 elements a channel: each channel's MSE is noisy (about 4%), their mean is not
    x = uniform_block.astype(np.float64)
    spec = QuantSpec(scheme="zeropoint", bits=8, granularity="channel", axis=2)
    x_hat = quantize(uniform_block, spec).dequantize()
    mse = ((x - x_hat) ** 2).mean(axis=(0, 1))
    step = (np.maximum(x.max(axis=(0, 1)), 0) - np.minimum(x.min(axis=(0, 1)), 0)) / 255
    ratio = mse / (step**2 / 12)
    assert ratio.mean() == pytest.approx(1.0, abs=0.02)
    assert 0.8 < ratio.min() and ratio.max() < 1.2


def test_sqnr_of_a_full_scale_uniform_quantizer_is_about_6_db_a_bit():
    # signal power A^2 / 3 over noise D^2 / 12 with D = 2A / (2^b - 1): 20 log10(2^b - 1) dB,
    # i.e. 6.02 dB a bit less the 2^b - 1 levels' shortfall (0.56 dB at 4 bits)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 100_000).astype(np.float32)
    for bits in (4, 6, 8):
        spec = QuantSpec(scheme="zeropoint", bits=bits, granularity="tensor")
        stats = ErrorStats.of(x, quantize(x, spec).dequantize())
        assert stats.sqnr_db == pytest.approx(20 * math.log10(2**bits - 1), abs=0.1)
        assert stats.sqnr_db == pytest.approx(6.02 * bits, abs=0.6)


# -- metrics against NumPy ------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((64, 97)).astype(np.float32)
    spec = QuantSpec(scheme="absmax", bits=4, granularity="group", group_size=32)
    qt = quantize(x, spec)
    return x, qt.dequantize()


def test_metrics_against_numpy(pair):
    x, x_hat = pair
    x64, h64 = x.astype(np.float64), x_hat.astype(np.float64)
    e = x64 - h64
    stats = ErrorStats.of(x, x_hat)
    assert stats.count == x.size and stats.clipped == 0
    assert stats.mse == pytest.approx(np.mean(e**2), rel=1e-12)
    assert stats.rmse == pytest.approx(math.sqrt(np.mean(e**2)), rel=1e-12)
    sqnr = 10 * math.log10(np.sum(x64**2) / np.sum(e**2))
    assert stats.sqnr_db == pytest.approx(sqnr, rel=1e-12)
    cosine = np.dot(x64.ravel(), h64.ravel()) / (np.linalg.norm(x64) * np.linalg.norm(h64))
    assert stats.cosine == pytest.approx(cosine, rel=1e-12)
    assert stats.max_abs_error == np.abs(e).max()
    d = stats.as_dict()
    assert d["mse"] == stats.mse and d["sqnr_db"] == stats.sqnr_db
    assert d["cosine"] == stats.cosine and d["max_abs_error"] == stats.max_abs_error
    assert d["clipped_fraction"] == 0 and d["mse_unclipped"] == stats.mse


def test_metrics_accept_low_precision_inputs(pair):
    import ml_dtypes

    x, x_hat = pair
    xb, hb = x.astype(ml_dtypes.bfloat16), x_hat.astype(np.float16)
    stats = ErrorStats.of(xb, hb)
    e = xb.astype(np.float64) - hb.astype(np.float64)
    assert stats.mse == pytest.approx(np.mean(e**2), rel=1e-12)


def test_merge_of_halves_equals_the_whole(pair):
    x, x_hat = pair
    clipped = np.abs(x) > 2.5
    whole = ErrorStats.of(x, x_hat, clipped)
    top = ErrorStats.of(x[:20], x_hat[:20], clipped[:20])
    bottom = ErrorStats.of(x[20:], x_hat[20:], clipped[20:])
    merged = top.merge(bottom)
    assert merged.count == whole.count and merged.clipped == whole.clipped > 0
    for name in ("mse", "rmse", "sqnr_db", "cosine", "mse_unclipped", "clipped_fraction"):
        assert getattr(merged, name) == pytest.approx(getattr(whole, name), rel=1e-12), name
    assert merged.max_abs_error == whole.max_abs_error
    assert max(top.max_abs_error, bottom.max_abs_error) == whole.max_abs_error
    # merging with the empty statistics changes nothing
    assert ErrorStats().merge(whole) == whole


def test_mse_unclipped_against_numpy(pair):
    x, x_hat = pair
    clipped = np.abs(x) > 2.0
    stats = ErrorStats.of(x, x_hat, clipped)
    e = x.astype(np.float64) - x_hat
    assert stats.clipped == clipped.sum()
    assert stats.mse_unclipped == pytest.approx(np.mean(e[~clipped] ** 2), rel=1e-12)
    assert stats.mse == pytest.approx(np.mean(e**2), rel=1e-12)


def test_metric_edge_cases():
    zeros = np.zeros(5, np.float32)
    ones = np.ones(5, np.float32)
    exact = ErrorStats.of(ones, ones)
    assert exact.mse == 0 and exact.sqnr_db == math.inf and exact.cosine == pytest.approx(1.0)
    both_zero = ErrorStats.of(zeros, zeros)
    assert both_zero.cosine == 1.0 and both_zero.sqnr_db == math.inf
    assert ErrorStats.of(zeros, ones).sqnr_db == -math.inf
    assert ErrorStats.of(zeros, ones).cosine == 0.0
    assert ErrorStats.of(ones, -ones).cosine == pytest.approx(-1.0)
    empty = ErrorStats.of(np.zeros(0), np.zeros(0))
    assert (empty.count, empty.mse, empty.max_abs_error, empty.mse_unclipped) == (0, 0, 0, 0)
    everything_clipped = ErrorStats.of(ones, zeros, np.ones(5, bool))
    assert everything_clipped.mse_unclipped == 0 and everything_clipped.mse == 1
