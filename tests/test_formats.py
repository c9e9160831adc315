"""The number formats against independent references: ml_dtypes casts (FP8, E2M1),
bitsandbytes' NF4 table and decision rule, gguf's NumPy MXFP4 and Q4_0 quantizers (llama.cpp's
own rules), and compressed-tensors' NVFP4 / MXFP4 / observer rules written out here in plain
NumPy. Then the edge-value table through every format, bits per weight, and the file format.
"""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from test_core_edge_values import EDGE_CASES

from quantcli.core import QuantSpec, quantize
from quantcli.core.schemes import SCHEMES, e2m1
from quantcli.core.schemes.nf4 import NF4
from quantcli.core.search import E2M1, float_grid
from quantcli.core.search import NF4 as NF4_GRID
from quantcli.errors import SpecError

E4M3 = ml_dtypes.float8_e4m3fn
E5M2 = ml_dtypes.float8_e5m2
NEW_FORMATS = (
    "fullrange",
    "fullrange-ct",
    "zeropoint-ct",
    "fp8",
    "fp8-e5m2",
    "nf4",
    "mxfp4",
    "mxfp4-ct",
    "nvfp4",
)


def gaussian(shape=(64, 512), seed=11) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def codes_of(qt) -> np.ndarray:
    return qt.unpacked_codes()


# -- E2M1 ----------------------------------------------------------------------------------


def e2m1_probe() -> np.ndarray:
    """Every grid value, every midpoint, one ulp either side of each, saturation, signed
    zeros, infinities, subnormals, and a dense random sweep."""
    points = np.concatenate([e2m1.GRID, (e2m1.GRID[:-1] + e2m1.GRID[1:]) / 2, [6.5, 7, 8, 1e30]])
    points = points.astype(np.float32)
    ulps = [np.nextafter(points, np.float32(np.inf)), np.nextafter(points, np.float32(0))]
    special = np.array([0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45, 1e-38], np.float32)
    dense = np.random.default_rng(3).uniform(-8, 8, 100_000).astype(np.float32)
    every = np.concatenate([points, *ulps, special, dense])
    return np.concatenate([every, -every]).astype(np.float32)


def test_e2m1_codes_equal_ml_dtypes_cast_everywhere():
    t = e2m1_probe()
    ours = np.empty(t.shape, np.uint8)
    e2m1.encode(t, ours)
    theirs = t.astype(ml_dtypes.float4_e2m1fn).view(np.uint8)
    np.testing.assert_array_equal(ours, theirs)


def test_e2m1_ties_go_to_the_even_code():
    t = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -5.0], np.float32)
    out = np.empty(t.shape, np.uint8)
    e2m1.encode(t, out)
    np.testing.assert_array_equal(e2m1.decode(out), [0, 1, 1, 2, 2, 4, 4, -0.0, -4])


@pytest.mark.parametrize(
    "args, dtype",
    [
        (("e2m1", 2, 1, 6.0), ml_dtypes.float4_e2m1fn),
        (("e3m2", 3, 2, 28.0), ml_dtypes.float6_e3m2fn),
        (("e2m3", 2, 3, 7.5), ml_dtypes.float6_e2m3fn),
    ],
)
def test_small_float_codes_equal_ml_dtypes_casts(args, dtype):
    """The comparison kernel (schemes/minifloat.py) for any small float without inf or NaN:
    its codes are the cast's bit patterns, ties and saturation included."""
    grid = float_grid(*args)
    fmt = grid.format
    values = fmt.positive
    points = np.concatenate([values, (values[:-1] + values[1:]) / 2, [values[-1] * 2, 1e30]])
    points = points.astype(np.float32)
    near = [points, np.nextafter(points, np.float32(np.inf)), np.nextafter(points, np.float32(0))]
    dense = np.random.default_rng(4).uniform(-40, 40, 50_000).astype(np.float32)
    t = np.concatenate([*near, dense, [0.0, -0.0, np.inf, -np.inf, 1e-45]]).astype(np.float32)
    t = np.concatenate([t, -t])
    codes = fmt.encode(t, np.empty(t.shape, np.uint8))
    np.testing.assert_array_equal(codes, t.astype(dtype).view(np.uint8))


def test_search_grids_round_as_the_schemes_encode():
    """One rounding per format: the searches' E2M1 and NF4 grids give the values of the codes
    the mxfp4 / nvfp4 and nf4 schemes write, exact midpoints included."""
    rng = np.random.default_rng(6)
    mids_e2m1 = (e2m1.GRID[:-1] + e2m1.GRID[1:]) / 2
    t = np.concatenate([rng.uniform(-7, 7, 20_000), mids_e2m1, -mids_e2m1]).astype(np.float32)
    codes = np.empty(t.shape, np.uint8)
    e2m1.encode(t, codes)
    out = np.empty_like(t)
    E2M1.nearest(t, out)
    np.testing.assert_array_equal(out, e2m1.decode(codes))
    mids_nf4 = (NF4[:-1] + NF4[1:]) / 2
    t = np.concatenate([rng.uniform(-1.2, 1.2, 20_000), mids_nf4]).astype(np.float32)
    codes = np.empty(t.shape, np.uint8)
    SCHEMES["nf4"].encode(t, np.float32(1), None, QuantSpec("nf4"), codes)
    NF4_GRID.nearest(t, out := np.empty_like(t))
    np.testing.assert_array_equal(out, NF4[codes])


# -- FP8 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme, dtype", [("fp8", E4M3), ("fp8-e5m2", E5M2)])
@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
def test_fp8_is_the_ml_dtypes_cast_of_the_clipped_ratio(scheme, dtype, granularity):
    x = gaussian()
    x[3, 7] = 40.0  # a lone outlier
    qt = quantize(x, QuantSpec(scheme, granularity=granularity, group_size=64))
    top = np.float32(ml_dtypes.finfo(dtype).max)
    rows = x.reshape(64, -1, 64) if granularity == "group" else x
    axis = {"tensor": None, "channel": 1, "group": 2}[granularity]
    amax = np.abs(rows).max(axis=axis, keepdims=True)
    scale = (amax / top).astype(np.float32)
    np.testing.assert_array_equal(qt.scale.reshape(scale.shape), scale)
    expected = np.clip(rows / scale, -top, top).astype(dtype)
    assert qt.codes.dtype == dtype
    np.testing.assert_array_equal(
        qt.codes.reshape(rows.shape).view(np.uint8), expected.view(np.uint8)
    )
    np.testing.assert_array_equal(
        qt.dequantize(), (expected.astype(np.float32) * scale).reshape(x.shape)
    )


@pytest.mark.parametrize("scheme, dtype", [("fp8", E4M3), ("fp8-e5m2", E5M2)])
@pytest.mark.parametrize("scale_dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("size", [1e-2, 1e-4, 3e-5, 1e-37])
def test_fp8_with_narrow_scales_is_the_cast_of_the_clipped_ratio(scheme, dtype, scale_dtype, size):
    """Small weights get subnormal f16 / bf16 scales, which round far below amax / max: the
    ratio then passes the max and must saturate, as the clipped cast does (no NaN codes)."""
    x = (gaussian((32, 256), seed=5) * np.float32(size)).astype(np.float32)
    qt = quantize(x, QuantSpec(scheme, granularity="channel", scale_dtype=scale_dtype))
    stored = qt.scale.astype(np.float32).reshape(-1, 1)
    narrow = np.float16 if scale_dtype == "float16" else ml_dtypes.bfloat16
    with np.errstate(over="ignore"):
        ratio = (x / stored).astype(narrow).astype(np.float32)  # the model-dtype division
    top = np.float32(ml_dtypes.finfo(dtype).max)
    expected = np.clip(ratio, -top, top).astype(dtype)
    np.testing.assert_array_equal(qt.codes.view(np.uint8), expected.view(np.uint8))
    assert not np.isnan(qt.codes.astype(np.float32)).any()


def test_fp8_saturates_past_its_max_instead_of_nan():
    # percentile calibration clips the range; values past it land on +-448, never NaN (ml_dtypes
    # alone turns 480 and up into NaN)
    x = np.concatenate([np.linspace(-1, 1, 20_000), [1e6, -1e6]]).astype(np.float32)[None]
    qt = quantize(x, QuantSpec("fp8", granularity="tensor", calibration="percentile"))
    values = qt.codes.astype(np.float32)
    assert np.isfinite(values).all()
    assert values[0, -2] == 448 and values[0, -1] == -448


# -- NF4 -------------------------------------------------------------------------------------


def test_nf4_table_is_bitsandbytes():
    assert NF4.dtype == np.float32 and NF4.shape == (16,)
    assert (NF4[:7] < 0).all() and NF4[7] == 0 and (NF4[8:] > 0).all()
    assert NF4[0] == -1.0 and NF4[-1] == 1.0
    assert NF4[1] == np.float32(-0.6961928009986877)
    assert NF4[14] == np.float32(0.7229568362236023)


def test_nf4_codes_follow_bitsandbytes_decision_rule():
    # bitsandbytes compares x / absmax with each midpoint using '>': a value exactly on a
    # midpoint takes the lower code. Reference: count the midpoints strictly below.
    mids = ((NF4[:-1] + NF4[1:]) / 2).astype(np.float32)
    t = np.concatenate(
        [
            np.random.default_rng(5).uniform(-1, 1, 50_000),
            mids,
            np.nextafter(mids, np.float32(2)),
            np.nextafter(mids, np.float32(-2)),
            NF4,
            [1.0, -1.0, 0.0, -0.0],
        ]
    ).astype(np.float32)
    x = np.concatenate([t, [1.0]]).astype(np.float32)[None]  # amax 1: x / scale = t exactly
    qt = quantize(x, QuantSpec("nf4", granularity="tensor"))
    assert float(qt.scale[0, 0]) == 1.0
    expected = (x[0][:, None] > mids[None, :]).sum(axis=1)
    np.testing.assert_array_equal(codes_of(qt)[0], expected)
    np.testing.assert_array_equal(qt.dequantize()[0], NF4[expected])


# -- MXFP4 -----------------------------------------------------------------------------------


def parse_ggml_mxfp4(raw: np.ndarray, rows: int):
    """gguf's MXFP4 bytes -> (exponent byte (rows, n_blocks), codes (rows, n_blocks, 32)):
    each 17-byte block is the E8M0 byte then 16 bytes, element j low, j + 16 high."""
    blocks = raw.reshape(rows, -1, 17)
    qs = blocks[..., 1:]
    return blocks[..., 0], np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def test_mxfp4_exponents_equal_ggml_and_values_differ_only_at_ties():
    gguf = pytest.importorskip("gguf")
    x = gaussian((32, 1024), seed=2) * np.float32(3)
    x[:, 64:96] = 0.0  # all-zero blocks: exponent byte 0 on both sides
    x[5, 200] = 1.75 * 2**3  # a block maximum with mantissa 1.75 saturates under this rule
    qt = quantize(x, QuantSpec("mxfp4"))
    raw = gguf.quants.quantize(x, gguf.GGMLQuantizationType.MXFP4)
    e, _ = parse_ggml_mxfp4(raw, x.shape[0])
    np.testing.assert_array_equal(qt.scale, e)
    ours = qt.dequantize()
    theirs = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.MXFP4).reshape(x.shape)
    differ = ours != theirs
    assert differ.mean() < 1e-3
    # where they differ, x / scale sits exactly on a midpoint: ggml breaks ties toward zero
    # (the first of equal errors), quant to the even code as ml_dtypes and compressed-tensors
    scale = np.repeat(np.ldexp(1.0, qt.scale.astype(np.int32) - 127), 32, axis=1)
    t = np.abs(x / scale)[differ]
    mids = (e2m1.GRID[:-1] + e2m1.GRID[1:]) / 2
    assert np.isin(t, mids).all()
    assert (np.abs(theirs[differ]) < np.abs(ours[differ])).sum() + (
        np.abs(theirs[differ]) > np.abs(ours[differ])
    ).sum() == differ.sum()


def reference_mx_exponent(amax: np.ndarray, round_up: bool) -> np.ndarray:
    """The MX exponent in float64 arithmetic: floor(log2 amax) - 2, after rounding amax up to
    the next power of two when its mantissa is >= 1.75 (compressed-tensors)."""
    amax = amax.astype(np.float64)
    k = np.floor(np.log2(np.where(amax > 0, amax, 1)))
    if round_up:
        k = np.where(amax / 2.0**k >= 1.75, k + 1, k)
    return np.where(amax > 0, np.clip(k - 2, -127, 127), -127).astype(np.int64)


@pytest.mark.parametrize("scheme, round_up", [("mxfp4", False), ("mxfp4-ct", True)])
def test_mxfp4_exponent_rules(scheme, round_up):
    x = gaussian((16, 256), seed=4)
    # block maxima exactly at and around the 1.75 mantissa boundary, and a zero block
    for i, m in enumerate([1.75, np.nextafter(np.float32(1.75), np.float32(0)), 1.0, 1.999]):
        x[i, :32] = 0.01
        x[i, 5] = np.float32(m) * 2.0**i
    x[10, :32] = 0
    qt = quantize(x, QuantSpec(scheme))
    amax = np.abs(x.reshape(16, 8, 32)).max(axis=-1)
    expected = reference_mx_exponent(amax, round_up) + 127
    np.testing.assert_array_equal(qt.scale.astype(np.int64), expected)
    # codes are the ml_dtypes cast of x / 2^e
    scale = np.ldexp(np.float32(1), expected - 127).astype(np.float32)
    t = (x.reshape(16, 8, 32) / scale[..., None]).astype(np.float32)
    np.testing.assert_array_equal(
        codes_of(qt).reshape(t.shape), t.astype(ml_dtypes.float4_e2m1fn).view(np.uint8)
    )


def test_mxfp4_round_up_avoids_saturating_the_maximum():
    x = np.full((1, 32), 0.1, np.float32)
    x[0, 0] = 1.875  # mantissa 1.875: OCP scale 2^-2 -> 7.5 saturates to 6 (1.5 back)
    ocp = quantize(x, QuantSpec("mxfp4")).dequantize()[0, 0]
    ct = quantize(x, QuantSpec("mxfp4-ct")).dequantize()[0, 0]
    assert ocp == 1.5 and ct == 2.0


# -- NVFP4 -----------------------------------------------------------------------------------


def reference_nvfp4(x: np.ndarray):
    """compressed-tensors' NVFP4 rule in plain NumPy float32: global scale, E4M3 block scales
    (0 -> 0.125), E2M1 codes by ml_dtypes' cast of x / (block / global)."""
    g = np.float32(448.0 * 6.0) * (np.float32(1) / np.abs(x).max())  # torch's 2688 / amax
    blocks = x.reshape(x.shape[0], -1, 16)
    amax = np.abs(blocks).max(axis=-1)
    block = np.clip(g * (amax / np.float32(6)), -448, 448).astype(E4M3).astype(np.float32)
    block = np.where(block == 0, np.float32(0.125), block)
    eff = (block / g).astype(np.float32)
    codes = (blocks / eff[..., None]).astype(ml_dtypes.float4_e2m1fn).view(np.uint8)
    return g, block, codes, eff


def test_nvfp4_equals_compressed_tensors_rule():
    x = gaussian((32, 512), seed=9)
    x[:, 16:32] = 0  # zero blocks: scale 0.125
    x[7, 100] = 25.0  # the tensor maximum sets the global scale
    qt = quantize(x, QuantSpec("nvfp4"))
    g, block, codes, eff = reference_nvfp4(x)
    assert qt.tensor_scale.dtype == np.float32 and qt.tensor_scale.shape == (1,)
    assert qt.tensor_scale[0] == g
    assert qt.scale.dtype == E4M3
    np.testing.assert_array_equal(qt.scale.astype(np.float32), block)
    np.testing.assert_array_equal(codes_of(qt).reshape(codes.shape), codes)
    values = codes.astype(np.uint8).view(ml_dtypes.float4_e2m1fn).astype(np.float32)
    np.testing.assert_array_equal(qt.dequantize(), (values * eff[..., None]).reshape(x.shape))


# -- full-range int --------------------------------------------------------------------------


def test_fullrange_matches_ggml_q4_0_scales_and_codes_but_at_ties():
    gguf = pytest.importorskip("gguf")
    x = gaussian((64, 1024), seed=12)
    qt = quantize(x, QuantSpec("fullrange", 4, "group", group_size=32, scale_dtype="float16"))
    raw = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q4_0).reshape(64, -1, 18)
    d = np.ascontiguousarray(raw[..., :2]).view(np.float16)[..., 0]
    np.testing.assert_array_equal(qt.scale.view(np.uint16), d.view(np.uint16))
    qs = raw[..., 2:]
    theirs = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int16) - 8
    ours = codes_of(qt).reshape(theirs.shape).astype(np.int16)
    differ = ours != theirs
    assert differ.mean() < 1e-3  # ggml truncates x * (1/d) + 8.5; quant rounds x / d to even
    assert (np.abs(ours - theirs)[differ] == 1).all()
    # the value of largest magnitude lands on -8 exactly
    blocks = x.reshape(64, -1, 32)
    biggest = np.take_along_axis(ours, np.abs(blocks).argmax(-1)[..., None], -1)
    assert (biggest == -8).all()


def test_fullrange_ct_is_the_compressed_tensors_observer():
    x = gaussian((8, 256), seed=13)
    qt = quantize(x, QuantSpec("fullrange-ct", 4, "group", group_size=32))
    blocks = x.reshape(8, -1, 32)
    scale = (np.abs(blocks).max(-1) / np.float32(7.5)).astype(np.float32)
    np.testing.assert_array_equal(qt.scale, scale)
    expected = np.clip(np.rint(blocks / scale[..., None]), -8, 7)
    np.testing.assert_array_equal(codes_of(qt).reshape(blocks.shape), expected)


def test_fullrange_has_sixteen_levels_where_absmax_has_fifteen():
    x = gaussian((256, 1024), seed=1)
    spec = dict(bits=4, granularity="group", group_size=32, scale_dtype="float16")
    full = quantize(x, QuantSpec("fullrange", **spec), measure=True)
    restricted = quantize(x, QuantSpec("absmax", **spec), measure=True)
    assert len(np.unique(codes_of(full))) == 16 and len(np.unique(codes_of(restricted))) == 15
    assert full.stats.sqnr_db > restricted.stats.sqnr_db + 0.5


# -- every format: spec rules, edge values, bits per weight ------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(scheme="nf4", bits=8), "nf4 is a 4-bit format"),
        (dict(scheme="fp8", bits=4), "fp8 is a 8-bit format"),
        (dict(scheme="mxfp4", granularity="channel"), "use --granularity group"),
        (dict(scheme="mxfp4", group_size=64), "use --group-size 32"),
        (dict(scheme="nvfp4", scale_dtype="float16"), "use --scale-dtype e4m3"),
        (dict(scheme="absmax", scale_dtype="e8m0"), "use --scale-dtype float32"),
    ],
)
def test_a_spec_the_format_cannot_hold_names_the_fix(kwargs, message):
    with pytest.raises(SpecError, match=message):
        QuantSpec(**kwargs)


def test_scheme_defaults():
    assert QuantSpec("nf4").to_dict() | {} == {
        **QuantSpec("nf4").to_dict(),
        "bits": 4,
        "granularity": "group",
        "group_size": 64,
    }
    mx = QuantSpec("mxfp4")
    assert (mx.bits, mx.granularity, mx.group_size, mx.scale_dtype) == (4, "group", 32, "e8m0")
    nv = QuantSpec("nvfp4")
    assert (nv.bits, nv.granularity, nv.group_size, nv.scale_dtype) == (4, "group", 16, "e4m3")
    assert QuantSpec("fp8").bits == 8 and QuantSpec("fp8-e4m3").scheme == "fp8"


def edge_specs(scheme: str) -> list[QuantSpec]:
    info = SCHEMES[scheme]
    out = []
    for gran in info.granularities:
        # 2-D blocks (fp8) are min-max only; blocks of 2x2 make several of them
        for calibration in ("minmax",) if gran == "block" else ("minmax", "percentile"):
            bits = 4 if 4 in info.bits else info.bits[0]
            out.append(
                QuantSpec(scheme, bits, gran, group_size=info.default_group_size if gran ==
                          "group" else None, calibration=calibration,
                          block_size=(2, 2) if gran == "block" else None)
            )  # fmt: skip
    return out


def error_bound(spec: QuantSpec, step: np.ndarray) -> np.ndarray:
    """Largest |x - x_hat| of an unclipped value: half the widest gap between levels; for
    fullrange one step (the end opposite the largest magnitude lands on 2^(b-1) and clips to
    2^(b-1) - 1, as in Q4_0); for mxfp4's rule (amax / scale up to 8, saturating at 6) two."""
    levels = spec.format.levels(spec)
    half_gap = float(np.diff(levels).max()) / 2
    if spec.scheme == "fullrange":
        half_gap = 1.0
    if spec.scheme in ("mxfp4", "mxfp4-ct"):
        half_gap = 2.0
    if spec.scheme == "nvfp4":  # the E4M3 block scale may round down by 1/16: 6 * 1/16 more
        half_gap = 1.0
    return np.abs(step) * half_gap * (1 + 1e-5)


@pytest.mark.parametrize("scheme", NEW_FORMATS)
@pytest.mark.parametrize("case", list(EDGE_CASES))
def test_edge_values_through_every_format(case, scheme, strict_numerics):
    x = np.asarray(EDGE_CASES[case], np.float32)
    for spec in edge_specs(scheme):
        if spec.granularity == "block" and x.ndim != 2:
            with pytest.raises(SpecError, match="2-D block scales are for 2-D weights"):
                quantize(x, spec)
            continue
        with strict_numerics():
            qt = quantize(x, spec, measure=True, packed=True)
            x_hat = qt.dequantize()
        assert x_hat.shape == x.shape and np.isfinite(x_hat).all(), (case, spec.label())
        assert spec.format.valid_codes(codes_of(qt), spec)
        if not np.any(x):
            np.testing.assert_array_equal(x_hat, np.zeros(x.shape, np.float32))
        if spec.calibration == "minmax" and x.size:
            step = spec.format.effective_scale(
                qt.scale.astype(np.float32) if spec.scale_dtype != "e8m0"
                else np.ldexp(np.float32(1), qt.scale.astype(np.int32) - 127),
                qt.tensor_scale,
            )  # fmt: skip
            shape = (x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)).shape
            if spec.granularity == "group":
                step = np.repeat(step.reshape(shape[0], -1), spec.group_size, axis=1)
                step = step[:, : shape[1]]
            if spec.granularity == "block":
                r, c = spec.block_size
                step = np.repeat(np.repeat(step, r, axis=0)[: shape[0]], c, axis=1)
                step = step[:, : shape[1]]
            step = np.broadcast_to(step.reshape(-1) if step.size == 1 else step, shape)
            err = np.abs(x.astype(np.float64) - x_hat.astype(np.float64)).reshape(shape)
            assert (err <= error_bound(spec, step)).all(), (case, spec.label())


@pytest.mark.parametrize(
    "scheme, expected",
    [
        ("mxfp4", 4.25),
        ("nvfp4", 4.5 + 32 / (8 * 4096)),
        ("nf4", 4 + 32 / 64),
        ("fp8", 8 + 32 / 4096),
    ],
)
def test_bits_per_weight_count_every_scale(scheme, expected):
    from quantcli.io.quantized_format import stored_arrays

    x = gaussian((8, 4096))
    spec = QuantSpec(scheme, granularity=None if scheme != "fp8" else "channel")
    qt = quantize(x, spec, packed=True)
    nbytes = sum(a.nbytes for _, a in stored_arrays("w", qt))
    if scheme == "fp8":
        expected = 8 + 32 / 4096
    assert nbytes * 8 / x.size == pytest.approx(expected)


# -- the file format -------------------------------------------------------------------------


def compress_to(tmp_path, scheme, *extra) -> tuple:
    from typer.testing import CliRunner

    from quantcli.cli import app

    src = tmp_path / "w.safetensors"
    if not src.exists():
        from safetensors.numpy import save_file

        x = gaussian((48, 160), seed=21)
        save_file({"w": x, "b": np.arange(4, dtype=np.float32)}, str(src))
    out = tmp_path / f"{scheme}.safetensors"
    runner = CliRunner()
    result = runner.invoke(app, ["compress", str(src), "-o", str(out), "--scheme", scheme,
                                 "--min-elements", "16", "-q", *extra])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    restored = tmp_path / f"{scheme}.restored.safetensors"
    result = runner.invoke(app, ["decompress", str(out), "-o", str(restored), "-q"])
    assert result.exit_code == 0, result.stderr
    return src, out, restored


@pytest.mark.parametrize("scheme", NEW_FORMATS)
def test_files_restore_exactly_what_quantize_gives(tmp_path, scheme):
    src, out, restored = compress_to(tmp_path, scheme)
    with safe_open(str(src), "numpy") as f:
        x = f.get_tensor("w")
    with safe_open(str(out), "numpy") as f:
        meta = f.metadata()
        names = set(f.keys())
    assert meta["quant.format_version"] == "2"
    spec = QuantSpec.from_dict(json.loads(meta["quant.tensors"])["w"])
    assert spec.scheme == scheme
    assert ("w.tensor_scale" in names) == (scheme == "nvfp4")
    with safe_open(str(restored), "numpy") as f:
        np.testing.assert_array_equal(f.get_tensor("w"), quantize(x, spec).dequantize())


def test_files_with_only_the_first_schemes_stay_version_1(tmp_path):
    _, out, _ = compress_to(tmp_path, "zeropoint", "--bits", "4")
    with safe_open(str(out), "numpy") as f:
        assert f.metadata()["quant.format_version"] == "1"


def test_fp8_codes_are_stored_as_fp8(tmp_path):
    from quantcli.io.detect import open_input

    _, out, _ = compress_to(tmp_path, "fp8")
    header = json.loads(out.read_bytes()[8 : 8 + int.from_bytes(out.read_bytes()[:8], "little")])
    assert header["w"]["dtype"] == "F8_E4M3"
    with open_input(str(out)) as source:
        assert source.read("w").dtype == E4M3


def test_the_cli_offers_every_scheme():
    from quantcli.cli.options import ScaleDtype, Scheme
    from quantcli.core.scales import SCALE_KINDS
    from quantcli.core.spec import SCHEME_ALIASES

    offered = {s.value for s in Scheme}
    assert set(SCHEMES) <= offered and offered <= set(SCHEME_ALIASES)
    assert {d.value for d in ScaleDtype} == set(SCALE_KINDS)
