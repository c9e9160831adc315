"""Two-level (super-block) group scales, ``--scale-dtype k4 / k6 / k8``: the formula
x_hat = d * sc * q - dmin * mc recomputed from the stored arrays, llama.cpp's own Q4_K
decoder (gguf-py) on the same codes, llama.cpp's rounding rule without a search, results
independent of chunking and threads, the file through compress and decompress read back
with NumPy alone, exact bits per weight, bad input refused in one line, and the figures of
docs/SEARCH.md against llama.cpp's K-quants at equal bits (Q4_K, Q3_K, Q2_K for zeropoint,
Q6_K for absmax)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file
from typer.testing import CliRunner

import quantcli.core.quantizer as quantize_module
from quantcli.cli import app
from quantcli.core import QuantSpec, quantize
from quantcli.core.ggml import GGML_TYPES
from quantcli.errors import QuantizedFormatError, SpecError
from quantcli.io.quantized_format import QuantizedEntry, read_entries, stored_arrays

ENV = {"COLUMNS": "120", "NO_COLOR": "1"}


def quant(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def q4k_like(search: str = "mse", **fields) -> QuantSpec:
    base = dict(scheme="zeropoint", bits=4, granularity="group", group_size=32)
    return QuantSpec(**{**base, "scale_dtype": "k6", "search": search, **fields})


def gaussian(shape, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def unpack_bits(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """LSB-first bit stream of every row (docs/FORMAT.md, Packing) -> uint8 codes (..., n),
    written from the specification, not with quant's unpacker."""
    lead = packed.shape[:-1]
    rows = packed.reshape(-1, packed.shape[-1])
    out = np.zeros((rows.shape[0], n), np.int64)
    for i in range(n):
        for b in range(bits):
            bit = i * bits + b
            out[:, i] |= ((rows[:, bit // 8].astype(np.int64) >> (bit % 8)) & 1) << b
    return out.reshape(lead + (n,)).astype(np.uint8)


def expected_decode(d, dmin, sc, mc, codes, per: int) -> np.ndarray:
    """x_hat = (d * sc) * q - (dmin * mc), float32, each product rounded once, group by group
    (groups of codes.shape[-1] / sc.shape[-1] weights)."""
    g = codes.shape[-1] // sc.shape[-1]
    step = np.repeat(d.astype(np.float32), per, axis=-1)[..., : sc.shape[-1]]
    lift = np.repeat(dmin.astype(np.float32), per, axis=-1)[..., : sc.shape[-1]]
    scale = np.repeat(step * sc.astype(np.float32), g, axis=-1)
    minimum = np.repeat(lift * mc.astype(np.float32), g, axis=-1)
    return (scale * codes.astype(np.float32) - minimum).astype(np.float32)


# -- the formula -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        q4k_like("none"),
        q4k_like("mse"),
        q4k_like("wmse"),
        q4k_like("mse", bits=2, group_size=16, scale_dtype="k4", super_block=16),
        q4k_like("none", bits=3, group_size=8, scale_dtype="k8", super_block=5),
    ],
    ids=lambda s: s.short_label(),
)
def test_codes_and_restored_values_follow_the_formula(spec):
    x = gaussian((12, 320))
    x[3, :40] = 0.0  # an all-zero group and part of the next
    x[5, 64:96] = -0.75  # a constant negative group: its min alone
    qt = quantize(x, spec, measure=True, packed=True)
    sb = qt.superblocks
    groups = 320 // spec.group_size
    supers = -(-groups // spec.super_block)
    assert sb.d.shape == sb.dmin.shape == (12, supers) and sb.d.dtype == np.float16
    assert sb.scale_codes.shape == sb.min_codes.shape == (12, groups)
    top = 2 ** int(spec.scale_dtype[1:]) - 1
    assert sb.scale_codes.max() <= top and sb.min_codes.max() <= top
    assert np.all(sb.d >= 0) and np.all(sb.dmin >= 0)
    # the codes: nearest to (x + min) / scale, in float32, 0 where the scale is 0
    per = spec.super_block
    step = np.repeat(sb.d.astype(np.float32), per, axis=1)[:, :groups] * sb.scale_codes
    lift = np.repeat(sb.dmin.astype(np.float32), per, axis=1)[:, :groups] * sb.min_codes
    s = np.repeat(step.astype(np.float32), spec.group_size, axis=1)
    m = np.repeat(lift.astype(np.float32), spec.group_size, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.clip(np.rint((x + m) / s), 0, 2**spec.bits - 1)
    q = np.where(s == 0, 0, q).astype(np.uint8)
    np.testing.assert_array_equal(qt.unpacked_codes(), q)
    x_hat = expected_decode(sb.d, sb.dmin, sb.scale_codes, sb.min_codes, q, per)
    np.testing.assert_array_equal(qt.dequantize(), x_hat)
    assert np.all(x_hat[3, :32] == 0)
    # a constant group restores as one value, its min: within a step of dmin of it
    g = spec.group_size
    for j in range(64 // g, 96 // g):
        assert np.all(x_hat[5, j * g : (j + 1) * g] == x_hat[5, j * g])
        assert abs(float(x_hat[5, j * g]) + 0.75) <= float(sb.dmin[5, j // per])
    # the error statistics are those of the values decompress restores
    err = np.mean((x.astype(np.float64) - x_hat) ** 2)
    assert qt.stats.mse == pytest.approx(err, rel=1e-9)


def absmax_two_level(search: str, **fields) -> QuantSpec:
    base = dict(scheme="absmax", bits=4, granularity="group", group_size=16, super_block=16)
    return QuantSpec(**{**base, "scale_dtype": "k6", "search": search, **fields})


@pytest.mark.parametrize(
    "spec",
    [
        absmax_two_level("none"),
        absmax_two_level("mse"),
        absmax_two_level("wmse", bits=6, scale_dtype="k8"),
        absmax_two_level("mse", bits=3, group_size=8, scale_dtype="k4", super_block=5),
    ],
    ids=lambda s: s.short_label(),
)
def test_absmax_codes_and_restored_values_follow_the_formula(spec):
    x = gaussian((12, 320))
    x[3, :40] = 0.0  # an all-zero group: its scale is d * sc, never 0, its codes 0
    x[7] = 0.0  # an all-zero row: every super-block of it
    qt = quantize(x, spec, measure=True, packed=True)
    sb = qt.superblocks
    assert sb.dmin is None and sb.min_codes is None and qt.zero_point is None
    groups, per = 320 // spec.group_size, spec.super_block
    assert sb.scale_codes.min() >= 1 and sb.scale_codes.max() <= 2 ** int(spec.scale_dtype[1:]) - 1
    assert np.all(sb.d > 0)
    step = np.repeat(sb.d.astype(np.float32), per, axis=1)[:, :groups] * sb.scale_codes
    s = np.repeat(step.astype(np.float32), spec.group_size, axis=1)
    qmax = 2 ** (spec.bits - 1) - 1
    q = np.clip(np.rint(x / s), -qmax, qmax).astype(np.int8)
    np.testing.assert_array_equal(qt.unpacked_codes(), q)
    np.testing.assert_array_equal(qt.dequantize(), (s * q).astype(np.float32))
    assert np.all(qt.dequantize()[[3, 7]][:, :32] == 0) and np.all(qt.dequantize()[7] == 0)
    names = [n for n, _ in stored_arrays("w", qt)]
    assert names == ["w", "w.scale_codes", "w.super_scale"]


def test_absmax_round_to_nearest_rule_and_search_never_worse():
    x = np.random.default_rng(9).standard_t(5, (8, 512)).astype(np.float32)
    qt = quantize(x, absmax_two_level("none"))
    amax = np.abs(x.reshape(8, 32, 16)).max(axis=2)
    s = (amax / np.float32(7)).astype(np.float64).reshape(8, 2, 16)
    d = (s.max(axis=2) / 63).astype(np.float16)
    sc = np.clip(np.rint(s / d.astype(np.float64)[..., None]), 1, 63).reshape(8, 32)
    np.testing.assert_array_equal(qt.superblocks.d, d)
    np.testing.assert_array_equal(qt.superblocks.scale_codes, sc)
    found = quantize(x, absmax_two_level("mse"))

    def per_block(q):
        return np.square(x.astype(np.float64) - q.dequantize()).reshape(8, 2, 256).sum(axis=2)

    assert np.all(per_block(found) <= per_block(qt))
    assert per_block(found).sum() < 0.95 * per_block(qt).sum()


def test_round_to_nearest_is_llama_cpps_rule_on_min_max_parameters():
    """--search none: s = (max - min(min, 0)) / 15, m = -min(min, 0) per group; then
    d = fp16(max s / 63), sc = rint(s / d) (llama.cpp's quantize_row_q4_K_ref rule)."""
    x = gaussian((4, 512), seed=5)
    x[1] = np.abs(x[1]) + 0.5  # groups entirely positive: their min is 0
    qt = quantize(x, q4k_like("none"))
    groups = x.reshape(4, 16, 32)
    lo = np.minimum(groups.min(axis=2), np.float32(0))
    span = groups.max(axis=2).astype(np.float64) - lo
    s = (span / 15).astype(np.float32).astype(np.float64).reshape(4, 2, 8)
    m = -lo.astype(np.float64).reshape(4, 2, 8)
    d = (s.max(axis=2) / 63).astype(np.float16)
    dmin = (m.max(axis=2) / 63).astype(np.float16)
    sc = np.clip(np.rint(s / d.astype(np.float64)[..., None]), 0, 63).reshape(4, 16)
    mc = np.rint(m / np.where(dmin > 0, dmin, 1).astype(np.float64)[..., None]).reshape(4, 16)
    np.testing.assert_array_equal(qt.superblocks.d, d)
    np.testing.assert_array_equal(qt.superblocks.dmin, dmin)
    np.testing.assert_array_equal(qt.superblocks.scale_codes, sc)
    np.testing.assert_array_equal(qt.superblocks.min_codes, np.clip(mc, 0, 63))
    assert np.all(qt.superblocks.min_codes[1] == 0)


def pack_q4_k(sb, codes: np.ndarray) -> np.ndarray:
    """GGUF Q4_K blocks (144 bytes: f16 d, f16 dmin, 12 bytes of 6-bit codes, 128 bytes of
    nibbles, groups 2c low and 2c + 1 high) of rows of 256 weights, as ggml-common.h lays
    them out."""
    q = codes.reshape(-1, 8, 32)
    n = q.shape[0]
    sc, mc = sb.scale_codes.reshape(n, 8), sb.min_codes.reshape(n, 8)
    scales = np.zeros((n, 12), np.uint8)
    scales[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    scales[:, 4:8] = mc[:, :4] | ((mc[:, 4:] >> 4) << 6)
    scales[:, 8:12] = (sc[:, 4:] & 0xF) | ((mc[:, 4:] & 0xF) << 4)
    qs = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(n, 128)
    head = np.stack([sb.d.reshape(-1), sb.dmin.reshape(-1)], axis=1).view(np.uint8)
    return np.concatenate([head, scales, qs], axis=1)


@pytest.mark.parametrize("search", ["none", "mse", "wmse"])
def test_q4_k_like_spec_decodes_with_llama_cpps_q4_k(search):
    gguf = pytest.importorskip("gguf")
    x = np.random.default_rng(8).standard_t(5, (16, 1024)).astype(np.float32)
    qt = quantize(x, q4k_like(search))
    raw = pack_q4_k(qt.superblocks, qt.unpacked_codes())
    theirs = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_K).reshape(x.shape)
    np.testing.assert_array_equal(qt.dequantize(), theirs.astype(np.float32))


def test_the_search_is_never_worse_than_round_to_nearest_per_super_block():
    x = np.random.default_rng(4).standard_t(5, (32, 1024)).astype(np.float32)
    rtn = quantize(x, q4k_like("none")).dequantize()
    found = quantize(x, q4k_like("mse")).dequantize()

    def per_block(x_hat):
        return np.square(x.astype(np.float64) - x_hat).reshape(32, 4, 256).sum(axis=2)

    assert np.all(per_block(found) <= per_block(rtn))
    assert per_block(found).sum() < 0.85 * per_block(rtn).sum()


@pytest.mark.parametrize(
    "spec",
    [
        q4k_like("mse", group_size=8, super_block=4),
        q4k_like("none", bits=3, group_size=4),
        absmax_two_level("mse", group_size=8, super_block=4),
    ],
    ids=lambda s: s.short_label(),
)
@pytest.mark.parametrize("threads", ["1", "2"])
def test_chunking_and_threads_change_nothing(spec, threads, monkeypatch):
    x = gaussian((6, 9, 48), seed=7)  # rows of 6 groups of 8: a short last super-block
    x[2, 3, 5] = 40.0
    whole = quantize(x, spec, measure=True)
    monkeypatch.setattr(quantize_module, "CHUNK_ELEMENTS", 11)
    monkeypatch.setenv("QUANT_THREADS", threads)
    chunked = quantize(x, spec, measure=True)
    np.testing.assert_array_equal(chunked.codes, whole.codes)
    for field in ("d", "dmin", "scale_codes", "min_codes")[: 4 if spec.has_zero_point else 3 : 2]:
        a, b = getattr(chunked.superblocks, field), getattr(whole.superblocks, field)
        assert a.shape == b.shape and a.shape[:2] == (6, 9)
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(chunked.dequantize(), whole.dequantize())
    assert chunked.stats.mse == pytest.approx(whole.stats.mse, rel=1e-12)  # summed by chunk


# -- the file ----------------------------------------------------------------------------------


def test_compress_then_decompress_matches_a_numpy_decode_of_the_file(tmp_path):
    rng = np.random.default_rng(12)
    weights = {
        "layer.weight": rng.standard_normal((48, 320)).astype(np.float32),  # 10 groups: 8 + 2
        "blocks.weight": rng.standard_t(5, (2, 3, 256)).astype(np.float32),
    }
    src = tmp_path / "w.safetensors"
    save_file(weights, str(src))
    out, restored = tmp_path / "w.q.safetensors", tmp_path / "r.safetensors"
    args = ["--scheme", "zeropoint", "--bits", "4", "--group-size", "32", "--scale-dtype", "k6"]
    result = quant("compress", src, "-o", out, *args, "--search", "mse", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert quant("decompress", out, "-o", restored).exit_code == 0
    with safe_open(str(out), "numpy") as f:
        meta = f.metadata()
        assert meta["quant.format_version"] == "3"
        entries = json.loads(meta["quant.tensors"])
        names = set(f.keys())
        stored = {k: f.get_tensor(k) for k in names}
    with safe_open(str(restored), "numpy") as f:
        back = {k: f.get_tensor(k) for k in f.keys()}
    for name, w in weights.items():
        spec = entries[name]
        assert spec["scale_dtype"] == "k6" and spec["super_block"] == 8
        assert name + ".scale" not in names and name + ".zero_point" not in names
        n, g = w.shape[-1], 32
        groups, supers = n // g, -(-n // g // 8)
        sc = unpack_bits(stored[name + ".scale_codes"], 6, groups)
        mc = unpack_bits(stored[name + ".min_codes"], 6, groups)
        d, dmin = stored[name + ".super_scale"], stored[name + ".super_min"]
        assert d.dtype == np.float16 and d.shape == w.shape[:-1] + (supers,)
        assert stored[name + ".scale_codes"].shape == w.shape[:-1] + (-(-groups * 6 // 8),)
        codes = unpack_bits(stored[name], 4, n)
        x_hat = expected_decode(d, dmin, sc, mc, codes, 8)
        np.testing.assert_array_equal(back[name], x_hat)
        rel = np.sum((w.astype(np.float64) - x_hat) ** 2) / np.sum(w.astype(np.float64) ** 2)
        assert rel < 0.0075
        row = next(t for t in report["tensors"] if t["tensor"] == name)
        assert row["spec"]["super_block"] == 8
        row_bytes = n // 2 + 2 * -(-groups * 6 // 8) + 2 * 2 * supers
        assert row["bits_per_weight"] == 8 * row_bytes / n
        assert row["mse"] == pytest.approx(np.mean((w.astype(np.float64) - x_hat) ** 2))
    inspect = quant("inspect", out)
    assert inspect.exit_code == 0 and "k6x8" in inspect.stdout


def test_absmax_file_round_trip_matches_a_numpy_decode(tmp_path):
    w = np.random.default_rng(13).standard_t(5, (24, 480)).astype(np.float32)
    src, out, restored = tmp_path / "w.npy", tmp_path / "w.q.safetensors", tmp_path / "r.npy"
    np.save(src, w)
    args = ["--scheme", "absmax", "--bits", "4", "--group-size", "16", "--scale-dtype", "k6"]
    result = quant("compress", src, "-o", out, *args, "--super-block", "16", "--search", "mse")
    assert result.exit_code == 0, result.stderr
    assert quant("decompress", out, "-o", restored).exit_code == 0
    with safe_open(str(out), "numpy") as f:
        assert sorted(f.keys()) == ["w", "w.scale_codes", "w.super_scale"]
        assert f.metadata()["quant.format_version"] == "3"
        stored = {k: f.get_tensor(k) for k in f.keys()}
    codes = unpack_bits(stored["w"], 4, 480).astype(np.int16)
    codes = np.where(codes >= 8, codes - 16, codes)  # two's complement nibbles
    sc = unpack_bits(stored["w.scale_codes"], 6, 30)
    d = stored["w.super_scale"]
    assert d.shape == (24, 2) and np.all(d > 0) and sc.min() >= 1
    step = np.repeat(d.astype(np.float32), 16, axis=1)[:, :30] * sc.astype(np.float32)
    x_hat = np.repeat(step, 16, axis=1) * codes.astype(np.float32)
    np.testing.assert_array_equal(np.load(restored), x_hat)


@pytest.mark.parametrize(
    ("suffix", "value", "words"),
    [
        (".super_scale", np.inf, "invalid super-block scale"),
        (".super_min", -1.0, "invalid super-block scale"),
    ],
)
def test_a_damaged_super_block_pair_is_refused(tmp_path, suffix, value, words):
    src = tmp_path / "w.npy"
    np.save(src, gaussian((8, 256)))
    out = tmp_path / "w.q.safetensors"
    args = ["--scheme", "zeropoint", "--bits", "4", "--group-size", "32", "--scale-dtype", "k6"]
    assert quant("compress", src, "-o", out, *args, "-q").exit_code == 0
    with safe_open(str(out), "numpy") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["w" + suffix][3, 0] = value
    damaged = tmp_path / "damaged.safetensors"
    save_file(tensors, str(damaged), metadata=meta)
    restored = tmp_path / "r.npy"
    line = one_error_line(quant("decompress", damaged, "-o", restored), 1, words, "w" + suffix)
    assert "re-run quant compress" in line and not restored.exists()


@pytest.mark.parametrize(
    ("bits", "group", "kind", "per", "expected"),
    [
        (4, 32, "k6", 8, 4.5),  # Q4_K's storage
        (3, 32, "k6", 16, 3.4375),  # Q3_K's bits
        (2, 16, "k4", 16, 2.625),  # Q2_K's bits
        (4, 64, "k8", 4, 4 + 16 / 64 + 32 / 256),
        (6, 16, "k8", 16, 6.5625),  # Q6_K's bits, absmax
        (4, 32, "k6", 8, 4.25),  # absmax: no mins
    ],
)
def test_bits_per_weight_are_exact(bits, group, kind, per, expected):
    x = gaussian((8, 4096))
    spec = q4k_like("none", bits=bits, group_size=group, scale_dtype=kind, super_block=per)
    if expected in (6.5625, 4.25):
        spec = absmax_two_level("none", bits=bits, group_size=group, scale_dtype=kind)
        spec = QuantSpec.from_dict({**spec.to_dict(), "super_block": per})
    qt = quantize(x, spec, packed=True)
    arrays = stored_arrays("w", qt)
    assert 8 * sum(a.nbytes for _, a in arrays) / x.size == expected
    entry = QuantizedEntry("w", spec, x.shape, np.dtype(np.float32))
    assert [(n, a.dtype, a.shape) for n, a in arrays] == entry.stored()


def test_a_ragged_super_block_counts_only_its_bytes():
    x = gaussian((3, 320))  # 10 groups of 32: one super-block of 8 and one of 2
    qt = quantize(x, q4k_like("none"), packed=True)
    nbytes = sum(a.nbytes for _, a in stored_arrays("w", qt))
    assert nbytes == 3 * (160 + 2 * 8 + 2 * 2 * 2)  # codes, 60-bit code rows, 2 f16 pairs


@pytest.mark.parametrize("shape", [(0, 64), (4, 0), (64,), (), (2, 0, 32)])
def test_empty_0d_and_1d_tensors(shape):
    spec = q4k_like("mse", group_size=1 if shape == () else 32)
    x = np.full(shape, -0.5, np.float32)
    qt = quantize(x, spec, measure=True, packed=True)
    arrays = stored_arrays("w", qt)
    entry = QuantizedEntry("w", spec, shape, np.dtype(np.float32))
    assert [(n, a.dtype, a.shape) for n, a in arrays] == entry.stored()
    x_hat = qt.dequantize()
    assert x_hat.shape == shape
    # -0.5 is the min alone: float16 dmin = 0.5 / 63 times the code 63
    expected = np.float32(np.float16(0.5 / 63)) * np.float32(63)
    assert np.all(x_hat == -expected)


def test_weights_beyond_float16_super_block_scales_are_refused():
    x = gaussian((4, 64)) * np.float32(1e9)
    with pytest.raises(
        SpecError, match="overflows the float16 super-block scale of k6 in tensor w"
    ):
        quantize(x, q4k_like("none"), "w")


def test_older_readers_versions_are_refused_for_two_level_entries():
    spec = q4k_like("none")
    meta = {
        "quant.format": "quantcli",
        "quant.format_version": "2",
        "quant.tensors": json.dumps({"w": {**spec.to_dict(), "shape": [4, 64], "dtype": "F32"}}),
    }
    with pytest.raises(QuantizedFormatError, match="need version 3"):
        read_entries(meta, "w.safetensors")
    meta["quant.format_version"] = "3"
    assert read_entries(meta, "w.safetensors")["w"].spec == spec


def test_spec_json_is_unchanged_without_two_level_scales():
    assert "super_block" not in QuantSpec("zeropoint", 4, "group").to_dict()
    assert q4k_like().to_dict()["super_block"] == 8
    assert q4k_like().short_label() == "zp u4 g32 mse k6x8"


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        (dict(scheme="fullrange"), "fullrange cannot hold two-level scales"),
        (dict(granularity="channel"), "--granularity group"),
        (dict(calibration="percentile"), "--calibration minmax"),
        (dict(search="hqq"), "--search none or mse or wmse"),
        (dict(super_block=0), "not a positive integer"),
        (dict(scale_dtype="float16", super_block=8), "drop --super-block"),
        (dict(scale_dtype="k6", scheme="nf4", bits=4), "absmax .a scale per group. and zeropoint"),
    ],
)
def test_specs_two_level_scales_cannot_hold_are_refused(fields, words):
    base = dict(scheme="zeropoint", bits=4, granularity="group", group_size=32)
    base.update(scale_dtype="k6")
    with pytest.raises(SpecError, match=words):
        QuantSpec(**{**base, **fields})


def test_a_group_size_that_does_not_divide_the_row_is_refused():
    with pytest.raises(SpecError, match="row length 100 in tensor w: not a multiple"):
        quantize(gaussian((4, 100)), q4k_like("none"), "w")


def one_error_line(result, code: int, *words: str) -> str:
    assert result.exit_code == code, (result.exit_code, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.mark.parametrize(
    ("extra", "code", "words"),
    [
        (["--group-size", "48"], 2, ["row length 256 in tensor w", "--group-size"]),
        (["--scheme", "nf4"], 2, ["k6 scales", "--scheme zeropoint"]),
        (["--search", "hqq"], 2, ["search hqq", "--search none or mse or wmse"]),
        (["--super-block", "4", "--scale-dtype", "float16"], 2, ["--super-block 4"]),
    ],
)
def test_cli_refuses_in_one_line_and_writes_nothing(tmp_path, extra, code, words):
    src = tmp_path / "w.npy"
    np.save(src, gaussian((8, 256)))
    out = tmp_path / "w.q.safetensors"
    args = ["--scheme", "zeropoint", "--bits", "4", "--group-size", "32", "--scale-dtype", "k6"]
    one_error_line(quant("compress", src, "-o", out, *args, *extra), code, *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.npy"]


def test_compressed_tensors_export_refuses_two_level_scales(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    w = gaussian((64, 256))
    save_file({"model.layers.0.mlp.up_proj.weight": w}, str(folder / "model.safetensors"))
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    (folder / "config.json").write_text(json.dumps({**config, "torch_dtype": "float32"}))
    out = tmp_path / "out"
    args = ["--scheme", "zeropoint", "--bits", "4", "--group-size", "32", "--scale-dtype", "k6"]
    result = quant("compress", folder, "-o", out, *args)
    one_error_line(result, 2, "compressed-tensors has no two-level", "--format quant")
    assert not out.exists()


def test_report_sweeps_two_level_scales(tmp_path):
    src = tmp_path / "w.npy"
    np.save(src, gaussian((16, 512)))
    result = quant(
        "report", src, "--scheme", "zeropoint", "--bits", "4", "--granularity", "group",
        "--group-size", "32", "--scale-dtype", "k6", "--scale-dtype", "k4",
        "--scale-dtype", "float16", "--super-block", "8", "--super-block", "16",
        "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    rows = {c["label"]: c for c in json.loads(result.stdout)["summary"]}
    assert set(rows) == {
        "zp u4 g32 k6x8", "zp u4 g32 k6x16", "zp u4 g32 k4x8", "zp u4 g32 k4x16",
        "zp u4 g32 mse f16",  # the default search: mse for one-level scales, none for two
    }  # fmt: skip
    assert rows["zp u4 g32 k6x8"]["bits_per_weight"] == 4.5
    assert rows["zp u4 g32 k6x16"]["bits_per_weight"] == 4 + 12 / 32 + 32 / 512
    assert rows["zp u4 g32 k4x8"]["bits_per_weight"] == 4.375
    assert rows["zp u4 g32 k6x16"]["super_block"] == 16
    assert rows["zp u4 g32 mse f16"]["super_block"] is None


# -- the figures of docs/SEARCH.md -------------------------------------------------------------


def relative_mse(w: np.ndarray, w_hat: np.ndarray) -> float:
    w64 = w.astype(np.float64)
    return float(np.sum((w64 - w_hat) ** 2) / np.sum(w64**2))


@pytest.fixture(scope="module")
def figure_data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "normal": rng.standard_normal((256, 4096)).astype(np.float32),
        "t5": rng.standard_t(5, (256, 4096)).astype(np.float32),
    }


def kquant(w: np.ndarray, name: str) -> float:
    t = GGML_TYPES[name]
    return relative_mse(w, t.decode(t.encode(w), w.shape[-1]))


@pytest.mark.parametrize(
    ("fields", "kquant_name", "bpw", "figures"),
    [
        # relative MSE with --search mse on 256 x 4096 (docs/SEARCH.md has 4096 x 4096)
        (dict(), "Q4_K", 4.5, {"normal": 0.00483, "t5": 0.00649}),
        (dict(bits=3, super_block=16), "Q3_K", 3.4375, {"normal": 0.0208, "t5": 0.0278}),
        (
            dict(bits=2, group_size=16, scale_dtype="k4", super_block=16),
            "Q2_K",
            2.625,
            {"normal": 0.0671, "t5": 0.0800},
        ),
        (
            dict(scheme="absmax", bits=6, group_size=16, scale_dtype="k8", super_block=16),
            "Q6_K",
            6.5625,
            {"normal": 0.000286, "t5": 0.000423},
        ),
    ],
    ids=["4-bit", "3-bit", "2-bit", "absmax 6-bit"],
)
def test_figures_beat_llama_cpps_k_quants_at_equal_bits(
    figure_data, fields, kquant_name, bpw, figures
):
    spec = q4k_like("mse", **fields)
    for key, w in figure_data.items():
        qt = quantize(w, spec, packed=True)
        assert 8 * sum(a.nbytes for _, a in stored_arrays("w", qt)) / w.size == bpw
        assert GGML_TYPES[kquant_name].bits_per_weight == bpw
        ours = relative_mse(w, qt.dequantize())
        assert ours == pytest.approx(figures[key], rel=0.02), key
        assert ours < kquant(w, kquant_name), key
    if kquant_name == "Q4_K":
        assert relative_mse(figure_data["normal"], quantize(figure_data["normal"], spec)
                            .dequantize()) <= 0.0050  # fmt: skip
    if kquant_name == "Q2_K":
        assert ours <= 0.10
