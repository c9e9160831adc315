"""quantcli.core.percentile must equal np.percentile bit for bit (value, sign of zero, dtype,
type and shape), whatever path it takes.

Small arrays normally go straight to np.percentile, so the property tests shrink the
module's thresholds (blocks of a few elements, samples of a handful) to drive tiny arrays
through the sampled-bracket, tie, retry, exact and signed-zero fallback paths.  The large
tests run the real thresholds on ~2 Mi elements.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import quantcli.core.percentile as pct
from quantcli.core.percentile import abs_percentile, abs_percentiles, percentile, percentiles

# name -> overrides of the module's tunables
CONFIGS = {
    "real": {},
    # every array takes the fast path; blocks, samples and margins are tiny, so the sample
    # misleads often and the tie / retry / exact paths all run
    "tiny": {"_SMALL": 0, "_BLOCK": 7, "_SORT_MAX": 4, "_FLAT_SAMPLE": 8, "_ROW_SAMPLE": 4},
    # moderate: brackets usually succeed, rows longer than 8 are bracketed
    "small": {"_SMALL": 0, "_BLOCK": 64, "_SORT_MAX": 8, "_FLAT_SAMPLE": 32, "_ROW_SAMPLE": 8},
    # several rows sampled and bracketed with thin margins (so some rows are redone)
    "rows": {
        "_SMALL": 0,
        "_BLOCK": 700,
        "_SORT_MAX": 4,
        "_FLAT_SAMPLE": 16,
        "_ROW_SAMPLE": 16,
        "_MARGINS_ROWS": ((1.0, 1.0), (3.0, 2.0)),
    },
    # one-element-wide margins: wrong brackets on every other call
    "no_margin": {
        "_SMALL": 0,
        "_BLOCK": 33,
        "_SORT_MAX": 2,
        "_FLAT_SAMPLE": 16,
        "_ROW_SAMPLE": 4,
        "_MARGINS_FLAT": ((0.0, 0.0), (0.5, 1.0)),
        "_MARGINS_ROWS": ((0.0, 0.0), (0.5, 1.0)),
    },
}


@contextlib.contextmanager
def tuned(name):
    saved = {key: getattr(pct, key) for key in CONFIGS[name]}
    for key, value in CONFIGS[name].items():
        setattr(pct, key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(pct, key, value)


def _bits(x):
    x = np.asarray(x)
    return x.view(np.dtype(f"u{x.dtype.itemsize}"))


def assert_identical(got, want):
    assert type(got) is type(want), (type(got), type(want))
    got_a, want_a = np.asarray(got), np.asarray(want)
    assert got_a.dtype == want_a.dtype
    assert got_a.shape == want_a.shape
    np.testing.assert_array_equal(got_a, want_a)
    np.testing.assert_array_equal(_bits(got_a), _bits(want_a))  # -0.0 vs 0.0, NaN sign


def check_all(a, q, axis, keepdims, q_other=None):
    """Every public function against np.percentile (warnings from inf - inf are NumPy's)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        want = np.percentile(a, q, axis=axis, keepdims=keepdims)
        assert_identical(percentile(a, q, axis=axis, keepdims=keepdims), want)
        want_abs = np.percentile(np.abs(a), q, axis=axis, keepdims=keepdims)
        assert_identical(abs_percentile(a, q, axis=axis, keepdims=keepdims), want_abs)
        if q_other is not None:
            want_other = np.percentile(a, q_other, axis=axis, keepdims=keepdims)
            lo, hi = percentiles(a, (q_other, q), axis=axis, keepdims=keepdims)
            assert_identical(lo, want_other)
            assert_identical(hi, want)
            want_other = np.percentile(np.abs(a), q_other, axis=axis, keepdims=keepdims)
            lo, hi = abs_percentiles(a, (q_other, q), axis=axis, keepdims=keepdims)
            assert_identical(lo, want_other)
            assert_identical(hi, want_abs)


# ------------------------------------------------------------------------------------------
# strategies

DTYPES = (np.float16, np.float32, np.float64)


def _specials(dtype):
    fi = np.finfo(dtype)
    tiny = float(fi.smallest_subnormal)
    return [
        0.0,
        -0.0,
        tiny,
        -tiny,
        2 * tiny,
        float(fi.tiny),
        1.0,
        -1.0,
        0.5,
        -2.5,
        float(fi.max),
        -float(fi.max),
        np.inf,
        -np.inf,
    ]


@st.composite
def arrays(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=12))
    kind = draw(st.sampled_from(["any", "ties", "few", "equal", "zeros", "normal"]))
    width = np.dtype(dtype).itemsize * 8
    finite = st.floats(allow_nan=False, allow_infinity=False, width=width)
    if kind == "any":
        elements = st.one_of(finite, st.sampled_from(_specials(dtype)))
    elif kind == "ties":  # a small palette of values, many repeats (incl. both zeros)
        palette = draw(
            st.lists(st.one_of(finite, st.sampled_from(_specials(dtype))), min_size=1, max_size=5)
        )
        elements = st.sampled_from(palette)
    elif kind == "few":  # quantized-looking data
        elements = st.sampled_from([-1.5, -0.5, -0.0, 0.0, 0.5, 1.5])
    elif kind == "equal":
        elements = st.just(draw(st.sampled_from(_specials(dtype)) | finite))
    elif kind == "zeros":
        elements = st.sampled_from([0.0, -0.0, 0.0, 1.0])
    else:
        seed = draw(st.integers(0, 2**32 - 1))
        scale = draw(st.sampled_from([1.0, 1e-3, 1e3]))
        return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)
    return draw(hnp.arrays(dtype, shape, elements=elements))


# q in (50, 100], its complement, and the usual suspects
HIGH_Q = st.one_of(
    st.floats(min_value=50, max_value=100, exclude_min=True),
    st.sampled_from([99.99, 99.9, 99.0, 100.0, 100, 75, 50.5, 99]),
)


@st.composite
def q_values(draw):
    q = draw(HIGH_Q)
    if draw(st.booleans()):
        q = 100 - q  # the low side of an asymmetric range
    return draw(st.sampled_from([lambda v: v, np.float64, np.float32]))(q)


@st.composite
def axes(draw, ndim):
    choice = draw(st.sampled_from(["none", "int", "tuple"]))
    if choice == "none":
        return None
    picked = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
    picked = [ax - ndim if draw(st.booleans()) else ax for ax in picked]
    if choice == "int":
        return picked[0]
    return tuple(picked)


# ------------------------------------------------------------------------------------------
# property tests


@pytest.mark.parametrize("config", ["tiny", "small", "no_margin"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_matches_numpy_bit_for_bit(config, data):
    a = data.draw(arrays())
    q = data.draw(q_values())
    axis = data.draw(axes(a.ndim))
    keepdims = data.draw(st.booleans())
    q_other = 100 - float(q)
    with tuned(config):
        check_all(a, q, axis, keepdims, q_other)


@pytest.mark.parametrize("config", ["tiny", "small", "rows", "no_margin"])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_long_rows_with_ties_and_signed_zeros(config, data):
    """Rows long enough to be sampled: ties, both zeros and extremes at every rank."""
    rows = data.draw(st.integers(1, 6))
    cols = data.draw(st.integers(20, 300))
    dtype = data.draw(st.sampled_from(DTYPES))
    palette = data.draw(st.lists(st.sampled_from(_specials(dtype)), min_size=1, max_size=4))
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((rows, cols)).astype(dtype)
    fill = rng.random(a.shape) < data.draw(st.sampled_from([0.0, 0.02, 0.3, 0.7, 1.0]))
    a[fill] = rng.choice(np.array(palette, dtype), size=int(fill.sum()))
    q = data.draw(q_values())
    axis = data.draw(st.sampled_from([None, 0, 1, -1, (0, 1)]))
    with tuned(config):
        check_all(a, q, axis, data.draw(st.booleans()), 100 - float(q))


@pytest.mark.parametrize("config", ["tiny", "real"])
@pytest.mark.parametrize("q", [0, 0.01, 12.5, 50, 99.99, 100])
def test_edge_arrays(config, q):
    fi = np.finfo(np.float32)
    cases = [
        np.zeros((3, 5), np.float32),
        np.full((3, 5), -0.0, np.float32),
        np.array([[0.0, -0.0, 0.0, -0.0], [-0.0, -0.0, 0.0, 0.0]], np.float32),
        np.full((2, 5), fi.smallest_subnormal, np.float32),
        np.array([[fi.max, -fi.max, 0.0, fi.max], [-fi.max, 1.0, fi.max, -fi.max]], np.float32),
        np.array([[np.inf, -np.inf, 1.0], [np.inf, np.inf, -0.0]], np.float32),
        np.full((4, 7), 7.5, np.float32),
        np.array([2.5], np.float32),
    ]
    with tuned(config):
        for a in cases:
            for axis in (None, 0, -1):
                check_all(a, q, axis, False, 100 - q)
                check_all(a, q, axis, True)


# ------------------------------------------------------------------------------------------
# large arrays with the real thresholds


@pytest.fixture(scope="module")
def big():
    return np.random.default_rng(0).standard_normal((2048, 1024), dtype=np.float32)


def _refuse(*args, **kwargs):
    raise AssertionError("the fast path fell back")


@pytest.mark.parametrize("q", [99.99, 0.01, 100, 50, 0, 99.9])
def test_large_whole_array(big, q):
    check_all(big, q, None, False)


def test_large_takes_the_fast_path(big, monkeypatch):
    """No np.percentile, no full partition: the sampled bracket answers directly."""
    monkeypatch.setattr(pct, "_exact_stats", _refuse)
    for absolute in (False, True):
        lo, hi = pct._fast(big, (0.01, 99.99), None, False, absolute, _refuse)
        src = np.abs(big) if absolute else big
        assert_identical(lo, np.percentile(src, 0.01))
        assert_identical(hi, np.percentile(src, 99.99))
    rows = np.abs(big.reshape(256, 8192))
    (got,) = pct._fast(rows, (99.99,), (1,), True, False, _refuse)
    assert_identical(got, np.percentile(rows, 99.99, axis=1, keepdims=True))


@pytest.mark.parametrize("q", [99.99, 50, 0.01])
def test_large_axes(big, q):
    x = big.reshape(256, 8192)
    check_all(x, q, 1, True)
    check_all(x, q, 0, False)  # rows of the reduction are columns in memory
    check_all(big.reshape(256, 64, 128), q, -1, True)  # per-group
    check_all(big.reshape(64, 32, 1024), q, (0, 2), False)


def test_large_ties_zeros_and_inf():
    rng = np.random.default_rng(1)
    n = 1 << 21
    # already-quantized weights: 16 levels, every rank sits in a huge run of ties
    levels = (rng.integers(-8, 8, n) * 0.125).astype(np.float32)
    for q in (99.99, 50, 62.5):
        check_all(levels, q, None, False)
    # sparse weights: most ranks are zeros; all +0.0, then mixed with -0.0
    sparse = np.where(rng.random(n) < 0.6, 0.0, rng.standard_normal(n)).astype(np.float32)
    sparse = sparse.reshape(1024, 2048)
    for q in (50, 30.000001):
        check_all(sparse, q, None, False)
        check_all(sparse, q, 1, False)
    sparse[rng.random(sparse.shape) < 0.3] *= -1  # flips the sign of a third of the zeros
    for q in (50, 30.000001):
        check_all(sparse, q, None, False)
        check_all(sparse, q, 1, False)
    # infinities at the top: q = 100 and 99.99 interpolate inf - inf = nan, like NumPy
    with_inf = rng.standard_normal(n).astype(np.float32)
    with_inf[rng.integers(0, n, 300)] = np.inf
    with_inf[rng.integers(0, n, 3)] = -np.inf
    for q in (100, 99.99, 0.01):
        check_all(with_inf, q, None, False)


def test_large_other_dtypes_and_layouts(big):
    check_all(big.astype(np.float64), 99.99, None, False)
    check_all(big.astype(np.float16), 99.99, None, False)
    check_all(big[:, ::2], 99.9, None, False)  # not contiguous
    check_all(np.asfortranarray(big), 0.01, 1, False)


def test_nan_and_non_float_fall_back(big):
    x = big.copy()
    x[5, 7] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        check_all(x, 99.99, None, False)
        check_all(x.reshape(256, 8192), 50, 1, False)
    ints = (big * 100).astype(np.int32)
    assert_identical(percentile(ints, 99.99), np.percentile(ints, 99.99))
    assert_identical(percentile(big, [1, 99]), np.percentile(big, [1, 99]))


@pytest.mark.parametrize("config", ["tiny", "rows"])
def test_nan_falls_back_on_every_path(config):
    rng = np.random.default_rng(3)
    for shape, axis in [((6, 3), 1), ((5, 40), 1), ((2, 300), 1), ((400,), None), ((7, 9), 0)]:
        a = rng.standard_normal(shape).astype(np.float32)
        a.flat[rng.integers(0, a.size, 2)] = np.nan
        with tuned(config), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for q in (0.01, 50, 99.99):
                check_all(a, q, axis, False, 100 - q)


def test_nan_in_the_sample_falls_back(big):
    x = big.copy()
    x[:, ::3] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        check_all(x, 99.99, None, False)
        check_all(x.reshape(256, 8192), 99.99, 1, False)


@pytest.mark.parametrize("absolute", [False, True])
def test_misleading_sample_is_survived(big, monkeypatch, absolute):
    """A sample whose bracket is useless (or wrong) costs time, never exactness."""
    real_sample, real_stats = pct._sample, pct._bracket_stats
    calls = []

    def bad_sample(b, absolute):
        samp = real_sample(b, absolute)
        if len(calls) == 1:
            samp[0] = 50.0  # everything far below the bracket
            if len(samp) > 1:
                samp[1] = -50.0  # everything far above it
                samp[2] = np.linspace(-1e30, 1e30, samp.shape[1])  # nearly unbounded
        return samp

    def spy_stats(b, ranks, absolute, attempt):
        calls.append(b.shape)
        return real_stats(b, ranks, absolute, attempt)

    monkeypatch.setattr(pct, "_sample", bad_sample)
    monkeypatch.setattr(pct, "_bracket_stats", spy_stats)
    x = big.reshape(256, 8192)
    src = np.abs(x) if absolute else x
    for q in (99.99, 0.01):
        calls.clear()
        (got,) = pct._fast(x, (q,), 1, False, absolute, _refuse)
        assert_identical(got, np.percentile(src, q, axis=1))
        assert calls == [(256, 8192), (3, 8192)]  # only the three bad rows were redone
    calls.clear()
    lo, hi = pct._fast(x, (0.01, 99.99), None, False, absolute, _refuse)
    assert_identical(lo, np.percentile(src, 0.01))
    assert_identical(hi, np.percentile(src, 99.99))
    assert calls == [(1, x.size), (1, x.size)]


def test_errors_like_numpy(big):
    for q in (101, -1, np.nan):
        with pytest.raises(ValueError):
            np.percentile(big, q)
        with pytest.raises(ValueError):
            percentile(big, q)
    with pytest.raises(np.exceptions.AxisError if hasattr(np, "exceptions") else ValueError):
        percentile(big, 50, axis=2)
    with pytest.raises(ValueError):
        percentile(big, 50, axis=(0, -2))
    with pytest.raises(TypeError):
        percentile(big, 50, axis=1.0)


def test_float32_result_dtype(big):
    """A Python float q keeps float32 data float32 (NumPy >= 2); np.float64 q promotes."""
    assert percentile(big, 99.99).dtype == np.percentile(big, 99.99).dtype
    assert percentile(big, np.float64(99.99)).dtype == np.float64
