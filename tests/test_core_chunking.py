"""Chunked, multi-threaded quantization gives exactly what one whole-array pass gives.

The sample arrays are far smaller than a real chunk, so these tests shrink the chunk size to a
few elements: every granularity then spans many chunks (and both threads).
"""

from __future__ import annotations

import numpy as np
import pytest

import quantcli.core.quantizer as quantize_module
from quantcli.core import ErrorStats, QuantSpec, clipped_mask, quantize

SPECS = [
    QuantSpec("absmax", 8, "tensor"),
    QuantSpec("zeropoint", 4, "tensor", calibration="percentile", percentile=99.0),
    QuantSpec("absmax", 3, "channel", axis=0),
    QuantSpec("zeropoint", 8, "channel", axis=1),
    QuantSpec("absmax", 8, "channel", axis=-1, calibration="percentile", percentile=97.5),
    QuantSpec("absmax", 4, "group", group_size=7),
    QuantSpec("zeropoint", 2, "group", group_size=16, scale_dtype="float16"),
    QuantSpec("zeropoint", 5, "group", group_size=5, calibration="percentile", percentile=90),
    QuantSpec("fullrange", 4, "channel", axis=1),
    QuantSpec("fullrange-ct", 3, "group", group_size=6, calibration="percentile", percentile=95),
    QuantSpec("fp8", granularity="tensor"),
    QuantSpec("fp8-e5m2", granularity="channel", axis=2),
    QuantSpec("nf4", group_size=7, calibration="percentile", percentile=90),
    QuantSpec("nf4", granularity="tensor"),
    QuantSpec("mxfp4"),
    QuantSpec("mxfp4-ct", calibration="percentile", percentile=99),
    QuantSpec("nvfp4"),
    QuantSpec("fullrange", 4, "group", group_size=8, search="mse"),
    QuantSpec("nf4", group_size=7, search="wmse"),
    QuantSpec("zeropoint", 3, "group", group_size=9, search="mse"),
    QuantSpec("zeropoint", 4, "group", group_size=16, search="hqq", scale_dtype="float16"),
    QuantSpec("absmax", 4, "channel", search="mse"),
    QuantSpec("mxfp4", search="mse"),
    QuantSpec("nvfp4", search="mse"),
    QuantSpec("mxfp4-ct", search="wmse"),
]


def arrays():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 9, 37)).astype(np.float32)
    x[2, 3, 5] = 40.0  # an outlier that percentile calibration clips
    return x


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.label())
@pytest.mark.parametrize("threads", ["1", "2"])
def test_chunked_equals_whole(spec, threads, monkeypatch):
    x = arrays()
    whole = quantize(x, spec, measure=True)
    monkeypatch.setattr(quantize_module, "CHUNK_ELEMENTS", 11)
    monkeypatch.setenv("QUANT_THREADS", threads)
    chunked = quantize(x, spec, measure=True)
    np.testing.assert_array_equal(chunked.codes, whole.codes)
    np.testing.assert_array_equal(chunked.scale, whole.scale)
    if spec.has_zero_point:
        np.testing.assert_array_equal(chunked.zero_point, whole.zero_point)
    np.testing.assert_array_equal(chunked.clip_lo, whole.clip_lo)
    a, b = chunked.stats.as_dict(), whole.stats.as_dict()
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-12), key


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.label())
def test_measured_stats_match_a_separate_dequantize(spec, monkeypatch):
    """The fused statistics equal those of dequantize() computed afterwards."""
    monkeypatch.setattr(quantize_module, "CHUNK_ELEMENTS", 13)
    x = arrays()
    qt = quantize(x, spec, measure=True)
    separate = ErrorStats.of(x, qt.dequantize(), clipped_mask(x, qt))
    fused = qt.stats
    assert fused.count == separate.count == x.size
    assert fused.clipped == separate.clipped
    assert fused.max_abs_error == separate.max_abs_error
    for key, value in separate.as_dict().items():
        assert fused.as_dict()[key] == pytest.approx(value, rel=1e-12), key
    if spec.calibration == "percentile":
        assert fused.clipped > 0


PACKED_SHAPES = [(6, 9, 37), (5, 40), (33,), (), (0, 8), (3, 0)]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.label())
@pytest.mark.parametrize("shape", PACKED_SHAPES, ids=str)
@pytest.mark.parametrize("threads", ["1", "2"])
def test_packed_in_chunks_equals_pack_afterwards(spec, shape, threads, monkeypatch):
    """quantize(packed=True) packs each group chunk while in cache (and other granularities
    at the end): the bytes, statistics and reconstruction equal pack(quantize().codes)."""
    from quantcli.core.packing import pack

    ndim = max(len(shape), 1)
    if spec.granularity == "channel" and not -ndim <= spec.axis < ndim:
        pytest.skip("the channel axis does not exist in this shape")
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    whole = quantize(x, spec, measure=True)
    monkeypatch.setattr(quantize_module, "CHUNK_ELEMENTS", 11)
    monkeypatch.setenv("QUANT_THREADS", threads)
    packed = quantize(x, spec, measure=True, packed=True)
    expected = pack(whole.codes, spec.bits)
    assert packed.packed == (spec.bits < 8)
    assert packed.codes.shape == expected.shape
    np.testing.assert_array_equal(packed.codes, expected)
    np.testing.assert_array_equal(packed.unpacked_codes(), whole.codes)
    np.testing.assert_array_equal(packed.dequantize(), whole.dequantize())
    assert packed.stats.sum_sq_error == pytest.approx(whole.stats.sum_sq_error, rel=1e-12)
    assert packed.stats.count == whole.stats.count


def test_a_group_longer_than_the_row_costs_no_more_than_the_row():
    """--group-size 100000000 once allocated memory for the group size (191 GiB): a group is
    cut to the row, so the result equals one group per row and memory follows the array."""
    import tracemalloc

    x = np.random.default_rng(1).standard_normal((64, 384)).astype(np.float32)
    row = quantize(x, QuantSpec("absmax", 4, "group", group_size=384), measure=True)
    tracemalloc.start()
    try:
        huge = quantize(x, QuantSpec("absmax", 4, "group", group_size=100_000_000), measure=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert huge.scale.shape == row.scale.shape == (64, 1)
    np.testing.assert_array_equal(huge.codes, row.codes)
    np.testing.assert_array_equal(huge.scale, row.scale)
    assert peak < 40 * x.nbytes  # the array's size in temporaries, not the group size's
