"""The edge-value table (as ml_dtypes does it), run through every scheme and setting.

Zeros, negative zeros, subnormals, values near float32's max, constant arrays, single
elements, empty and 0-d arrays go through every scheme x bits 2..8 x granularity x
calibration x input dtype x scale dtype. Every combination must quantize without a warning
or floating-point exception and give codes, scales and a reconstruction that obey the spec.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import replace

import ml_dtypes
import numpy as np
import pytest

from quantcli.core import QuantSpec, clipped_mask, param_shape, quantize
from quantcli.errors import InputError, NonFiniteError, SpecError

F32 = np.finfo(np.float32)
SUB32 = float(F32.smallest_subnormal)  # 1.4e-45
MAX32 = float(F32.max)

EDGE_CASES: dict[str, np.ndarray] = {
    "zeros": np.zeros((3, 5)),
    "negative_zeros": np.full((3, 5), -0.0),
    "signed_zeros": np.array([[0.0, -0.0, 0.0, -0.0], [-0.0, -0.0, 0.0, 0.0]]),
    "smallest_subnormal": np.full((2, 5), SUB32),
    "smallest_subnormal_mixed": np.array([[SUB32, -SUB32, 0.0, SUB32], [0.0, -0.0, -SUB32, SUB32]]),
    "subnormal_1e-40": np.array([[1e-40, -1e-40, 0.0, 3e-40, -2.5e-40, 1e-40, 7e-41]] * 2),
    "tiny_1e-30": np.array([[1e-30, -1e-30, 0.0], [2e-30, 1e-30, -3e-30]]),
    "huge_3e38": np.array([[3e38, -3e38, 0.0, 1.0, -2.5], [3e38, 3e38, -1.0, 0.0, 2e38]]),
    "huge_positive": np.full((2, 3), 3e38),
    "huge_negative": np.full((3, 2), -3e38),
    "huge_pair": np.array([-3e38, 3e38]),
    "float32_max": np.array([[MAX32, -MAX32, 0.0, MAX32], [-MAX32, 1.0, MAX32, -MAX32]]),
    "float32_max_positive": np.full((2, 4), MAX32),
    "float32_max_negative": np.full((2, 4), -MAX32),
    "equal_7.5": np.full((4, 7), 7.5),
    "equal_-3": np.full((4, 7), -3.0),
    "mixed_edges": np.array(
        [[0.0, -0.0, SUB32, 1e-40], [1e-30, 7.5, -3.0, 3e38], [-3e38, 1, 2, 3]]
    ),
    # more than 10,000 elements: the 99.99th percentile ignores the two outliers, which then
    # lie ~1e68 steps outside the range (x / scale overflows float32)
    "far_outliers": np.concatenate([[3e38, -3e38], np.full(20_000, 1e-30)]).reshape(1, -1),
    "single": np.array([2.5]),
    "single_2d": np.array([[-0.75]]),
    "empty": np.zeros((0,)),
    "empty_3x0": np.zeros((3, 0)),
    "empty_0x5": np.zeros((0, 5)),
    "scalar": np.array(-1.25),
    "scalar_zero": np.array(0.0),
    "scalar_huge": np.array(-3e38),
}

SCHEMES = ("absmax", "zeropoint")
BITS = range(2, 9)
GRANULARITIES = (
    {"granularity": "tensor"},
    {"granularity": "channel", "axis": 0},
    {"granularity": "channel", "axis": -1},
    {"granularity": "group", "group_size": 1},
    {"granularity": "group", "group_size": 3},
    {"granularity": "group", "group_size": 128},
)
CALIBRATIONS = ("minmax", "percentile")
INPUT_DTYPES = (np.float32, np.float16, ml_dtypes.bfloat16, np.float64)
SCALE_DTYPES = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}


def _finfo(dtype):
    return ml_dtypes.finfo(dtype) if dtype == ml_dtypes.bfloat16 else np.finfo(dtype)


def _as_input(values: np.ndarray, dtype) -> np.ndarray | None:
    """``values`` cast to ``dtype``, or None when some value does not fit (becomes inf)."""
    with np.errstate(all="ignore"):
        x = values.astype(dtype)
    return x if np.isfinite(x.astype(np.float64)).all() else None


def _expected_scale_overflow(x: np.ndarray, spec: QuantSpec) -> bool:
    """True when a float32 scale of ``spec`` rounds to inf in the spec's scale dtype: then
    SpecError ("scale ... overflows float16; use --scale-dtype float32") is the right outcome."""
    if spec.scale_dtype == "float32":
        return False
    if np.abs(x.astype(np.float64)).max(initial=0) < 1e4:  # scale <= 2 * max|x| < 65504
        return False
    scale32 = quantize(x, replace(spec, scale_dtype="float32")).scale
    with np.errstate(all="ignore"):
        stored = scale32.astype(SCALE_DTYPES[spec.scale_dtype]).astype(np.float64)
    return not np.isfinite(stored).all()


def _expand(param: np.ndarray, shape: tuple[int, ...], spec: QuantSpec) -> np.ndarray:
    """Stored parameters (``param_shape``) repeated to the tensor's shape, independently of
    the core's layout code: groups are ``group_size`` consecutive elements of the last axis."""
    full = tuple(shape) or (1,)
    if spec.granularity == "group":
        out = np.repeat(param, spec.group_size, axis=-1)[..., : full[-1]]
    else:
        out = np.broadcast_to(param, full)
    return out.reshape(shape)


def _error_bound(x32: np.ndarray, scale: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """Largest allowed |x - x_hat| of every element, from the spec's stored scale.

    float32 scales: half a step, plus float32 rounding of x / scale, of the scale itself
    (levels * scale * eps) and of the product, plus one subnormal step.
    float16 / bfloat16 scales: codes are computed with the float32 scale (as llama.cpp's Q8_0
    does) and reconstructed with the rounded stored scale, so add |code - zp| times the
    rounding error of the scale (half an ulp of the scale dtype, or half its subnormal step).
    """
    levels = max(abs(v) for v in spec.code_range)
    scale64 = np.asarray(scale, np.float64)
    dtype = SCALE_DTYPES[spec.scale_dtype]
    rounding = 0.0
    if dtype != np.float32:
        info = _finfo(dtype)
        rounding = np.maximum(float(info.eps) * scale64, float(info.smallest_subnormal)) / 2
    step = scale64 / 2 * (1 + 1e-6) + 2.0**-22 * levels * scale64 + (levels + 1) * rounding
    bound = _expand(step, x32.shape, spec)
    return bound + 2.0**-22 * np.abs(x32.astype(np.float64)) + 2 * SUB32


def _check_one(x: np.ndarray, spec: QuantSpec, strict_numerics) -> None:
    if _expected_scale_overflow(x, spec):
        with strict_numerics(), pytest.raises(SpecError, match=f"overflows {spec.scale_dtype}"):
            quantize(x, spec)
        return

    with strict_numerics():
        qt = quantize(x, spec)
        x_hat = qt.dequantize()
        mask = clipped_mask(x, qt)

    x32 = x.astype(np.float32)
    qmin, qmax = spec.code_range
    codes = qt.codes
    assert codes.shape == x.shape
    assert codes.dtype == (np.int8 if spec.scheme == "absmax" else np.uint8)
    if codes.size:
        assert codes.min() >= qmin and codes.max() <= qmax

    assert qt.scale.dtype == SCALE_DTYPES[spec.scale_dtype]
    assert qt.scale.shape == param_shape(x.shape, spec)
    scale32 = qt.scale.astype(np.float32)
    assert np.isfinite(scale32).all() and (scale32 > 0).all()

    if spec.scheme == "absmax":
        assert qt.zero_point is None
    else:
        assert qt.zero_point is not None
        assert qt.zero_point.dtype == np.uint8
        assert qt.zero_point.shape == qt.scale.shape
        if qt.zero_point.size:
            assert qt.zero_point.max() <= qmax

    assert x_hat.dtype == np.float32 and x_hat.shape == x.shape
    assert np.isfinite(x_hat).all()

    if not np.any(x32):  # all zeros (either sign) or empty: exact zeros back
        np.testing.assert_array_equal(x_hat, np.zeros(x.shape, np.float32))

    if spec.calibration == "minmax":
        assert not mask.any()
    bound = _error_bound(x32, qt.scale, spec.for_tensor(x.shape))
    err = np.abs(x32.astype(np.float64) - x_hat.astype(np.float64))
    bad = (err > bound) & ~mask
    assert not bad.any(), (
        f"|x - x_hat| above the bound at {np.argwhere(bad)[:3].tolist()}: "
        f"x={x32[bad][:3]}, x_hat={x_hat[bad][:3]}, bound={bound[bad][:3]}"
    )


@pytest.mark.parametrize("calibration", CALIBRATIONS)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("case", list(EDGE_CASES))
def test_edge_values(case, scheme, calibration, strict_numerics):
    values = EDGE_CASES[case]
    checked = 0
    for in_dtype in INPUT_DTYPES:
        x = _as_input(values, in_dtype)
        if x is None:  # e.g. 3e38 in float16: not a value of that dtype
            continue
        for bits, gran, scale_dtype in itertools.product(BITS, GRANULARITIES, SCALE_DTYPES):
            spec = QuantSpec(
                scheme=scheme, bits=bits, calibration=calibration, scale_dtype=scale_dtype, **gran
            )
            try:
                _check_one(x, spec, strict_numerics)
            except BaseException as exc:
                exc.add_note(f"case={case} input={np.dtype(in_dtype)} spec={spec}")
                raise
            checked += 1
    assert checked >= len(BITS) * len(GRANULARITIES) * len(SCALE_DTYPES)


def test_float16_scale_overflow_is_a_spec_error(strict_numerics):
    # 8-bit absmax: scale = amax / 127 >= 65520 rounds to inf in float16
    x = np.array([[127 * 70000.0, 1.0]], np.float32)
    spec = QuantSpec(scheme="absmax", bits=8, granularity="tensor", scale_dtype="float16")
    with strict_numerics(), pytest.raises(SpecError, match="overflows float16"):
        quantize(x, spec)
    # just below: 127 * 65504 is fine, and the float16 scale is 65504 exactly
    x = np.array([[127 * 65504.0, 1.0]], np.float32)
    with strict_numerics():
        qt = quantize(x, spec)
    assert qt.scale.dtype == np.float16 and float(qt.scale[0, 0]) == 65504.0
    assert qt.codes.tolist() == [[127, 0]]


def test_zero_group_gives_scale_one_and_zero_codes(strict_numerics):
    # GUIDE: amax == 0 -> scale 1, codes 0; hi == lo -> scale 1, zp 0
    x = np.array([[0.0, -0.0, 0.0], [1.0, -2.0, 4.0]], np.float32)
    for scheme in SCHEMES:
        spec = QuantSpec(scheme=scheme, granularity="channel", axis=0)
        with strict_numerics():
            qt = quantize(x, spec)
        assert qt.scale[0, 0] == 1.0
        assert qt.codes[0].tolist() == [0, 0, 0]
        if scheme == "zeropoint":
            assert qt.zero_point[0, 0] == 0
        np.testing.assert_array_equal(qt.dequantize()[0], np.zeros(3, np.float32))


@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
@pytest.mark.parametrize("calibration", ["minmax", "percentile"])
@pytest.mark.parametrize("scheme", ["absmax", "zeropoint"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_is_one_error_without_warnings(scheme, calibration, granularity, bad):
    """NaN / inf are counted and reported before any arithmetic can warn about them."""
    x = np.ones((4, 8), np.float32)
    x[1, 2] = x[3, 7] = bad
    spec = QuantSpec(scheme, 8, granularity, group_size=4, calibration=calibration)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(NonFiniteError, match=r"^2 non-finite values .* in tensor w:"):
            quantize(x, spec, "w")


def test_float64_beyond_float32_range_is_refused():
    x = np.array([[1e300, 1.0], [0.5, -2.0]])
    with pytest.raises(InputError, match=r"beyond float32's range .* in tensor big:"):
        quantize(x, QuantSpec(), "big")


NAN_BITS = [0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFFFFFFF]  # quiet/signalling, either sign


@pytest.mark.parametrize("scheme", ["absmax", "zeropoint"])
@pytest.mark.parametrize("nan_bits", NAN_BITS, ids=hex)
@pytest.mark.parametrize("neighbours", [(1.0, -1.0), (2.0, 3.0), (-2.0, -3.0)])
def test_any_nan_in_a_group_is_reported(scheme, nan_bits, neighbours):
    """Group ranges are reduced on the float bits read as integers: a NaN of either sign and
    any payload must still come out, whatever the signs of its neighbours."""
    x = np.tile(np.array(neighbours, np.float32), (3, 4))
    x[1, 5] = np.array(nan_bits, np.uint32).view(np.float32)
    spec = QuantSpec(scheme, 8, "group", group_size=4)
    with pytest.raises(NonFiniteError, match=r"^1 non-finite values \(1 NaN, 0 inf\)"):
        quantize(x, spec, "w")


@pytest.mark.parametrize("group_size", [1, 3, 32])
def test_group_ranges_equal_float_min_max(group_size):
    """The integer-key group reductions give exactly the float min / max (zero included)."""
    rng = np.random.default_rng(7)
    pool = np.array([0.0, -0.0, SUB32, -SUB32, 1e-40, -1e-40, 1e-30, -2.5, 7.0, 3e38, -MAX32])
    x = rng.choice(pool, size=(6, 40)).astype(np.float32)
    x[2] = np.abs(x[2])  # a row without negatives
    x[3] = -np.abs(x[3]) - 1.0  # a row without non-negatives
    edges = np.arange(0, x.shape[1], group_size)
    lo = np.minimum(np.minimum.reduceat(x, edges, axis=1), 0)
    hi = np.maximum(np.maximum.reduceat(x, edges, axis=1), 0)
    zp = quantize(x, QuantSpec("zeropoint", 8, "group", group_size=group_size))
    np.testing.assert_array_equal(zp.clip_lo, lo)
    np.testing.assert_array_equal(zp.clip_hi, hi)
    amax = np.maximum.reduceat(np.abs(x), edges, axis=1)
    ab = quantize(x, QuantSpec("absmax", 8, "group", group_size=group_size))
    np.testing.assert_array_equal(ab.clip_hi, amax)


@pytest.mark.parametrize("scheme", ["absmax", "zeropoint"])
@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
def test_clipped_values_end_at_the_range_when_the_scale_is_raised(scheme, granularity):
    """Weights of ~1e-6 with float16 scales: (hi - lo) / levels is below float16's smallest
    value, so the scale is raised to it and the range ends far inside [qmin, qmax]. A value
    that percentile calibration clipped must come back at the range's end, not at
    qmax * scale."""
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((4, 4000)) * 1e-7).astype(np.float32)
    x[:, 7] = 5e-6  # one outlier per row, above the 99th percentile
    spec = QuantSpec(scheme, 8, granularity, group_size=4000, calibration="percentile",
                     percentile=99.0, scale_dtype="float16", axis=0)  # fmt: skip
    qt = quantize(x, spec)
    step = float(qt.scale.astype(np.float32).max())
    assert step == float(np.float16(2**-24))  # raised to float16's smallest subnormal
    x_hat = qt.dequantize()
    hi = float(qt.clip_hi.max())
    assert hi < 2e-6 and (x_hat[:, 7] <= hi + step / 2 + 1e-12).all()
    assert (x_hat[:, 7] >= hi - step / 2 - 1e-12).all()
    # the example Hypothesis found: subnormal weights, 6 bits, float32 scales
    x = np.array([6.6640234e-38, 1.1210388e-44, 1.1210388e-44, 1.1210388e-44], np.float32)
    qt = quantize(x, QuantSpec("absmax", 6, "tensor", calibration="percentile", percentile=60))
    assert qt.dequantize()[0] <= float(qt.clip_hi[0]) + float(qt.scale[0]) / 2
