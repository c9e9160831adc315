"""Properties of quantize / dequantize / pack, checked on generated arrays (hypothesis) and
against the GUIDE's formulas written out directly in NumPy."""

from __future__ import annotations

import os
from dataclasses import replace

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from quantcli.core import (
    QuantSpec,
    clipped_mask,
    dequantize,
    pack,
    packed_length,
    param_shape,
    quantize,
    unpack,
)

F32 = np.finfo(np.float32)
SUB32 = float(F32.smallest_subnormal)
MAX32 = float(F32.max)

SCALE_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}

# QUANT_CORE_EXAMPLES=5000 for a longer search
EXAMPLES = int(os.environ.get("QUANT_CORE_EXAMPLES", "150"))
PROPERTY_SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# finite float32 elements, from realistic weights to float32's extremes
ELEMENTS = {
    "unit": st.floats(-4.0, 4.0, width=32),
    "wide": st.floats(-1e6, 1e6, width=32),
    "extreme": st.floats(-MAX32, MAX32, width=32),
    "tiny": st.floats(-float(np.float32(1e-37)), float(np.float32(1e-37)), width=32),
    "positive": st.floats(0.0, 1e3, width=32),
    "integers": st.integers(-8, 8).map(float),  # many exact ties of x / scale
}


@st.composite
def float_arrays(draw, min_dims=0, max_dims=3, max_side=9):
    kind = draw(st.sampled_from(sorted(ELEMENTS)))
    shape = draw(
        hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=max_side)
    )
    return draw(hnp.arrays(np.float32, shape, elements=ELEMENTS[kind]))


@st.composite
def specs(draw, ndim, **fixed):
    n = max(ndim, 1)
    kwargs = {
        "scheme": draw(st.sampled_from(["absmax", "zeropoint"])),
        "bits": draw(st.integers(2, 8)),
        "granularity": draw(st.sampled_from(["tensor", "channel", "group"])),
        "axis": draw(st.integers(-n, n - 1)),
        "group_size": draw(st.sampled_from([1, 2, 3, 4, 5, 8, 128])),
        "calibration": "minmax",
        "percentile": draw(st.sampled_from([60.0, 90.0, 99.0, 99.99])),
    }
    kwargs.update(fixed)
    return QuantSpec(**kwargs)


@st.composite
def arrays_and_specs(draw, **fixed):
    x = draw(float_arrays())
    return x, draw(specs(x.ndim, **fixed))


def expand(param: np.ndarray, shape: tuple[int, ...], spec: QuantSpec) -> np.ndarray:
    """Stored parameters (``param_shape``) repeated to the tensor's shape, written
    independently of the core's layout code."""
    full = tuple(shape) or (1,)
    if spec.granularity == "group":
        out = np.repeat(param, spec.group_size, axis=-1)[..., : full[-1]]
    else:
        out = np.broadcast_to(param, full)
    return out.reshape(shape)


def error_bound(x: np.ndarray, qt) -> np.ndarray:
    """Half a step of the element's group, plus float32 rounding (of x / scale, of the scale,
    i.e. levels * scale * eps, and of the product) and one subnormal step. For 8-bit codes
    the bound is scale * (0.5 + 6e-5) + 2.4e-7 * |x|: off by one code would be a full step."""
    spec = qt.spec
    levels = max(abs(v) for v in spec.code_range)
    s = expand(qt.scale.astype(np.float64), x.shape, spec)
    return s / 2 * (1 + 1e-6) + 2.0**-22 * (levels * s + np.abs(x.astype(np.float64))) + 2 * SUB32


def abs_error(x: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
    return np.abs(x.astype(np.float64) - x_hat.astype(np.float64))


# -- error bounds ---------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(arrays_and_specs(calibration="minmax", scale_dtype="float32"))
def test_minmax_error_at_most_half_a_step(case):
    x, spec = case
    qt = quantize(x, spec)
    x_hat = qt.dequantize()
    qmin, qmax = spec.code_range
    assert qt.codes.min() >= qmin and qt.codes.max() <= qmax
    assert qt.scale.shape == param_shape(x.shape, spec)
    assert not clipped_mask(x, qt).any()  # minmax clips nothing
    err, bound = abs_error(x, x_hat), error_bound(x, qt)
    assert (err <= bound).all(), (x[err > bound], x_hat[err > bound], bound[err > bound])


@PROPERTY_SETTINGS
@given(arrays_and_specs(calibration="percentile", scale_dtype="float32"))
def test_percentile_error_at_most_half_a_step_on_unclipped(case):
    x, spec = case
    qt = quantize(x, spec)
    x_hat = qt.dequantize()
    qmin, qmax = spec.code_range
    assert qt.codes.min() >= qmin and qt.codes.max() <= qmax
    clipped = clipped_mask(x, qt)
    lo = expand(qt.clip_lo, x.shape, qt.spec)
    hi = expand(qt.clip_hi, x.shape, qt.spec)
    np.testing.assert_array_equal(clipped, (x < lo) | (x > hi))
    err, bound = abs_error(x, x_hat), error_bound(x, qt)
    bad = (err > bound) & ~clipped
    assert not bad.any(), (x[bad], x_hat[bad], bound[bad])
    # clipped elements land on the range's end, never beyond it by more than half a step
    x_hat64 = x_hat.astype(np.float64)
    beyond = np.maximum(lo.astype(np.float64) - x_hat64, x_hat64 - hi.astype(np.float64))
    assert (beyond <= bound).all()


@PROPERTY_SETTINGS
@given(arrays_and_specs(), st.sampled_from(["minmax", "percentile"]))
def test_codes_in_range_for_every_spec(case, calibration):
    x, spec = case
    spec = replace(spec, calibration=calibration)
    # a bfloat16 scale of weights near float32's max may overflow (a SpecError, see the edge
    # value tests); float16 scales overflow from 65504 * qmax
    small = np.abs(x).max() < 1e38
    scale_dtype = "bfloat16" if small and x.size % 2 else "float32"
    qt = quantize(x, replace(spec, scale_dtype=scale_dtype))
    qmin, qmax = spec.code_range
    assert qt.codes.dtype == (np.int8 if spec.scheme == "absmax" else np.uint8)
    assert qt.codes.shape == x.shape
    assert qt.codes.min() >= qmin and qt.codes.max() <= qmax
    if spec.scheme == "zeropoint":
        assert qt.zero_point.max() <= qmax
    assert np.isfinite(qt.dequantize()).all()


def _zero_point_tie(qt) -> bool:
    """True when some group's -lo / scale is (nearly) k + 0.5: rint's tie-breaking then picks
    the zero point, and the reconstruction's range differs from the original's."""
    if qt.zero_point is None:
        return False
    t = -qt.clip_lo.astype(np.float64) / qt.scale.astype(np.float64)
    return bool((np.abs(t - np.floor(t) - 0.5) < 1e-3).any())


@PROPERTY_SETTINGS
@given(arrays_and_specs(calibration="minmax", scale_dtype="float32"))
def test_requantizing_the_reconstruction_gives_the_same_codes(case):
    x, spec = case
    qt = quantize(x, spec)
    assume(not _zero_point_tie(qt))  # see test_requantizing_at_a_zero_point_tie
    again = quantize(qt.dequantize(), spec)
    np.testing.assert_array_equal(again.codes, qt.codes)
    if spec.scheme == "zeropoint":
        np.testing.assert_array_equal(again.zero_point, qt.zero_point)


def test_requantizing_at_a_zero_point_tie():
    # 2-bit zeropoint on [-5, 1]: scale 2, -lo / scale = 2.5 -> zp = rint(2.5) = 2 (half to
    # even, GUIDE), so 1 rounds to code 2 -> 0.0 (an error of exactly half a step) and the
    # reconstruction [-4, 0] has a different range: requantized, it gets scale 4/3 and zp 3.
    spec = QuantSpec(scheme="zeropoint", bits=2, granularity="tensor")
    qt = quantize(np.array([-5.0, 1.0], np.float32), spec)
    assert (float(qt.scale[0]), int(qt.zero_point[0])) == (2.0, 2)
    assert qt.codes.tolist() == [0, 2]
    assert qt.dequantize().tolist() == [-4.0, 0.0]
    again = quantize(qt.dequantize(), spec)
    assert (int(again.zero_point[0]), again.codes.tolist()) == (3, [0, 3])


# -- granularity: ragged groups and channels are independent quantizations ------------------


@pytest.mark.parametrize("calibration", ["minmax", "percentile"])
@pytest.mark.parametrize("scheme", ["absmax", "zeropoint"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_ragged_last_group_equals_separate_pieces(scheme, bits, calibration):
    rng = np.random.default_rng(bits)
    x = (rng.standard_normal((5, 130)) * rng.uniform(0.1, 10, (5, 1))).astype(np.float32)
    x[2, 128:] = [3.0, -0.5]
    x[4, 128:] = 0.0
    group = QuantSpec(
        scheme=scheme, bits=bits, granularity="group", group_size=128, calibration=calibration
    )
    qt = quantize(x, group)
    assert qt.scale.shape == (5, 2)
    tensor = replace(group, granularity="tensor")
    for r in range(5):
        for g, piece in enumerate((slice(0, 128), slice(128, 130))):
            ref = quantize(x[r, piece], tensor)
            np.testing.assert_array_equal(qt.codes[r, piece], ref.codes)
            assert qt.scale[r, g] == ref.scale[0]
            if scheme == "zeropoint":
                assert qt.zero_point[r, g] == ref.zero_point[0]
    x_hat = qt.dequantize()
    for piece in (slice(0, 128), slice(128, 130)):
        ref = quantize(x[:, piece], group)
        np.testing.assert_array_equal(qt.codes[:, piece], ref.codes)
        np.testing.assert_array_equal(x_hat[:, piece], ref.dequantize())


@PROPERTY_SETTINGS
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=7),
        elements=ELEMENTS["wide"],
    ),
    st.sampled_from(["absmax", "zeropoint"]),
    st.integers(2, 8),
    st.sampled_from(["minmax", "percentile"]),
)
def test_channel_axis_1_equals_tensor_per_column(x, scheme, bits, calibration):
    spec = QuantSpec(scheme=scheme, bits=bits, granularity="channel", axis=1)
    spec = replace(spec, calibration=calibration)
    qt = quantize(x, spec)
    x_hat = qt.dequantize()
    tensor = replace(spec, granularity="tensor")
    for j in range(x.shape[1]):
        ref = quantize(x[:, j], tensor)
        np.testing.assert_array_equal(qt.codes[:, j], ref.codes)
        assert qt.scale[0, j].item() == ref.scale.item()
        if scheme == "zeropoint":
            assert qt.zero_point[0, j].item() == ref.zero_point.item()
        np.testing.assert_array_equal(x_hat[:, j], ref.dequantize())


# -- the GUIDE's formulas, written out ------------------------------------------------------


def guide_quantize(x: np.ndarray, spec: QuantSpec):
    """GUIDE section 3 in plain NumPy, one group per row of ``rows`` (float32 throughout;
    the zeropoint width hi - lo in float64, as the core documents, so it cannot overflow)."""
    if spec.granularity == "tensor":
        rows = x.reshape(1, -1)
    elif spec.granularity == "channel":
        rows = np.moveaxis(x, spec.axis, 0).reshape(x.shape[spec.axis], -1)
    else:
        rows = x.reshape(-1, spec.group_size)
    b = spec.bits
    if spec.scheme == "absmax":
        qmax = 2 ** (b - 1) - 1
        amax = np.abs(rows).max(axis=1, keepdims=True)
        scale = amax / np.float32(qmax)
        scale = np.where(amax == 0, np.float32(1), scale)
        q = np.clip(np.rint(rows / scale), -qmax, qmax).astype(np.int8)
        zp = None
        stored = scale.astype(SCALE_DTYPES[spec.scale_dtype]).astype(np.float32)
        x_hat = q.astype(np.float32) * stored
    else:
        levels = 2**b - 1
        lo = np.minimum(rows.min(axis=1, keepdims=True), np.float32(0))
        hi = np.maximum(rows.max(axis=1, keepdims=True), np.float32(0))
        scale = ((hi.astype(np.float64) - lo) / levels).astype(np.float32)
        scale = np.where(hi == lo, np.float32(1), scale)
        zp = np.clip(np.rint(-lo / scale), 0, levels)
        q = np.clip(np.rint(rows / scale) + zp, 0, levels).astype(np.uint8)
        stored = scale.astype(SCALE_DTYPES[spec.scale_dtype]).astype(np.float32)
        x_hat = (q.astype(np.float32) - zp.astype(np.float32)) * stored
        zp = zp.astype(np.uint8)
    return rows, q, scale, zp, x_hat


def _rows_of(a: np.ndarray, x: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """The core's array ``a`` (tensor-shaped or param-shaped) in ``guide_quantize``'s rows."""
    if spec.granularity == "tensor":
        return a.reshape(1, -1)
    if spec.granularity == "channel":
        return np.moveaxis(a, spec.axis, 0).reshape(a.shape[spec.axis], -1)
    return a.reshape(-1, spec.group_size if a.shape == x.shape else 1)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


@pytest.mark.parametrize("scale_dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize(
    "granularity",
    [
        {"granularity": "tensor"},
        {"granularity": "channel", "axis": 0},
        {"granularity": "channel", "axis": 1},
        {"granularity": "group", "group_size": 16},
    ],
    ids=["tensor", "channel0", "channel1", "group16"],
)
@pytest.mark.parametrize("scheme", ["absmax", "zeropoint"])
def test_matches_guide_formulas_bit_for_bit(scheme, granularity, scale_dtype):
    rng = np.random.default_rng(7)
    arrays = [
        rng.standard_normal((8, 64)).astype(np.float32),
        (rng.uniform(-50, 150, (8, 64))).astype(np.float32),
        (rng.standard_normal((8, 64)) * 0.02 + 0.01).astype(np.float32),
        np.round(rng.standard_normal((8, 64)) * 4).astype(np.float32),  # exact ties
    ]
    arrays[0][3] = 0.0  # an all-zero channel / groups
    for x in arrays:
        for bits in (2, 3, 4, 8):
            spec = QuantSpec(scheme=scheme, bits=bits, scale_dtype=scale_dtype, **granularity)
            spec = spec.for_tensor(x.shape)
            qt = quantize(x, spec)
            rows, q, scale, zp, x_hat = guide_quantize(x, spec)
            np.testing.assert_array_equal(_rows_of(qt.codes, x, spec), q)
            stored = _rows_of(qt.scale.astype(np.float32), x, spec)
            np.testing.assert_array_equal(
                _bits(stored), _bits(scale.astype(SCALE_DTYPES[scale_dtype]).astype(np.float32))
            )
            if zp is not None:
                np.testing.assert_array_equal(_rows_of(qt.zero_point, x, spec), zp)
            np.testing.assert_array_equal(_bits(_rows_of(qt.dequantize(), x, spec)), _bits(x_hat))
            # dequantize() from the stored arrays alone gives the same bits
            again = dequantize(qt.codes, qt.scale, qt.zero_point, spec)
            np.testing.assert_array_equal(_bits(again), _bits(qt.dequantize()))


# -- packing ----------------------------------------------------------------------------------


@st.composite
def codes_and_bits(draw):
    bits = draw(st.integers(2, 8))
    signed = draw(st.booleans())
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    dtype = np.int8 if signed else np.uint8
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=13))
    codes = draw(hnp.arrays(dtype, shape, elements=st.integers(lo, hi)))
    return codes, bits, signed


@settings(max_examples=2 * EXAMPLES, deadline=None)
@given(codes_and_bits())
def test_pack_unpack_round_trip(case):
    codes, bits, signed = case
    n = codes.shape[-1] if codes.ndim else 1
    packed = pack(codes, bits)
    if bits == 8:
        np.testing.assert_array_equal(packed, codes)
    else:
        assert packed.dtype == np.uint8
        lead = codes.shape[:-1] if codes.ndim else ()
        assert packed.shape == lead + (packed_length(n, bits),)
    assert packed_length(n, bits) == -(-n * bits // 8)
    back = unpack(packed, bits, n, signed)
    assert back.dtype == (np.int8 if signed else np.uint8)
    assert back.size == codes.size
    np.testing.assert_array_equal(back.reshape(codes.shape), codes)
    if codes.ndim:
        assert back.shape == codes.shape


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7])
@pytest.mark.parametrize("signed", [False, True])
def test_unpack_every_byte_value_against_a_bit_by_bit_reading(bits, signed):
    """Every byte value, as the first byte of a row, in rows of every useful length: unpack
    (table look-ups for 2 and 4 bits, a bit stream otherwise) equals reading the bits one by
    one, LSB first, with the sign taken from the top bit of each field when signed."""
    rng = np.random.default_rng(bits)
    for n in range(1, 8 // bits * 3 + 3):
        packed = rng.integers(0, 256, (256, packed_length(n, bits)), dtype=np.uint8)
        packed[:, 0] = np.arange(256)
        stream = [(int(b) >> k) & 1 for b in packed.reshape(-1) for k in range(8)]
        width = packed.shape[1] * 8
        expected = np.empty((256, n), np.int64)
        for r in range(256):
            for i in range(n):
                field = stream[r * width + i * bits : r * width + (i + 1) * bits]
                value = sum(bit << k for k, bit in enumerate(field))
                if signed and field[-1]:
                    value -= 1 << bits
                expected[r, i] = value
        got = unpack(packed, bits, n, signed)
        assert got.dtype == (np.int8 if signed else np.uint8) and got.shape == (256, n)
        np.testing.assert_array_equal(got.astype(np.int64), expected)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 9, 15, 31, 33, 127])
def test_packed_length_per_row(bits, n):
    codes = np.zeros((3, n), np.uint8)
    expected = (n * bits + 7) // 8
    assert packed_length(n, bits) == expected
    assert pack(codes, bits).shape == (3, expected)


def test_pack_scalar_is_one_row_of_one():
    for bits in range(2, 8):
        packed = pack(np.array(5, np.uint8) & ((1 << bits) - 1), bits)
        assert packed.shape == (1,)
        assert unpack(packed, bits, 1, False).reshape(()) == 5 & ((1 << bits) - 1)
    assert unpack(pack(np.array(-1, np.int8), 3), 3, 1, True).tolist() == [-1]


def test_four_bit_layout_low_nibble_first():
    # element 2i in the low nibble, 2i + 1 in the high nibble (ONNX Runtime)
    codes = np.array([[1, 2, 3, 4, 5], [15, 0, 0, 15, 9]], np.uint8)
    expected = np.array([[0x21, 0x43, 0x05], [0x0F, 0xF0, 0x09]], np.uint8)
    np.testing.assert_array_equal(pack(codes, 4), expected)
    # signed codes as 4-bit two's complement: -1 -> 0xF, -8 -> 0x8, 7 -> 0x7
    signed = np.array([-1, 7, -8, 0, 3], np.int8)
    np.testing.assert_array_equal(pack(signed, 4), np.array([0x7F, 0x08, 0x03], np.uint8))
    np.testing.assert_array_equal(unpack(pack(signed, 4), 4, 5, True), signed)


def test_three_bit_lsb_first_stream():
    # element i at bits [3i, 3i + 3) from the least significant bit of byte 0:
    #   byte 0 = c2[1:0] c1 c0      = 11 010 001   = 0xD1
    #   byte 1 = c5[0] c4 c3 c2[2]  = 0 101 100 0  = 0x58
    #   byte 2 = c7 c6 c5[2:1]      = 000 111 11   = 0x1F
    #   byte 3 = pad c8             = 00000 101    = 0x05   (27 bits -> 4 bytes)
    codes = np.array([1, 2, 3, 4, 5, 6, 7, 0, 5], np.uint8)
    expected = np.array([0xD1, 0x58, 0x1F, 0x05], np.uint8)
    np.testing.assert_array_equal(pack(codes, 3), expected)
    np.testing.assert_array_equal(unpack(expected, 3, 9, False), codes)
    # signed: -1 -> 111, -4 -> 100, 3 -> 011: 11 100 111 = 0xE7, then bit 8 = 0
    signed = np.array([-1, -4, 3], np.int8)
    np.testing.assert_array_equal(pack(signed, 3), np.array([0xE7, 0x00], np.uint8))
    np.testing.assert_array_equal(unpack(np.array([0xE7, 0x00], np.uint8), 3, 3, True), signed)


def test_two_and_five_bit_streams():
    # 2 bits: 3 | 0 << 2 | 1 << 4 | 2 << 6 = 0x93, then 1
    np.testing.assert_array_equal(
        pack(np.array([3, 0, 1, 2, 1], np.uint8), 2), np.array([0x93, 0x01], np.uint8)
    )
    # 5 bits: 31 | 1 << 5 = 0x3F, (1 >> 3) | 16 << 2 = 0x40 -> [0x3F, 0x40]
    np.testing.assert_array_equal(
        pack(np.array([31, 1, 16], np.uint8), 5), np.array([0x3F, 0x40], np.uint8)
    )


def test_rows_are_packed_independently():
    codes = np.array([[1, 2, 3], [4, 5, 6]], np.uint8)  # 9 bits a row -> 2 bytes each
    packed = pack(codes, 3)
    assert packed.shape == (2, 2)
    for r in range(2):
        np.testing.assert_array_equal(packed[r], pack(codes[r], 3))


def test_pack_and_quantize_together():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 37)).astype(np.float32)
    for scheme in ("absmax", "zeropoint"):
        for bits in range(2, 9):
            spec = QuantSpec(scheme=scheme, bits=bits, granularity="group", group_size=8)
            qt = quantize(x, spec)
            packed = pack(qt.codes, bits)
            assert packed.nbytes == 4 * 3 * packed_length(37, bits)
            back = unpack(packed, bits, 37, spec.signed)
            np.testing.assert_array_equal(back, qt.codes)
