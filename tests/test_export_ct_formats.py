"""compressed-tensors exports of quant's number formats, without torch: fullrange and
fullrange-ct (pack-quantized), fp8 (naive-quantized), nvfp4 (nvfp4-pack-quantized), mxfp4-ct
and mxfp4 (mxfp4-pack-quantized).

Layouts are checked against independent references written here (E2M1 nibbles by
ml_dtypes' float4_e2m1fn cast, E8M0 exponents by frexp, the library's eps for a group of
zeros); files are read back with the safetensors package and through quant's own commands
(decompress, inspect, report --against), and damaged files must fail in one line with
nothing written. tests/test_interop_ct_formats.py compares the bytes with compressed-tensors'
own compressor and loads the folders with transformers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import typer
import typer.testing
from safetensors.numpy import load_file
from test_export_compressed_tensors import CONFIG, assert_fails, llama_tensors, make_folder, ok, run

from quantcli.cli import app
from quantcli.core.quantizer import quantize, tensor_scale_of
from quantcli.core.spec import QuantSpec
from quantcli.errors import SpecError
from quantcli.io import compressed_tensors as ct
from quantcli.io import save_bytes
from quantcli.io.quantized_format import stored_arrays

E4M3 = ml_dtypes.float8_e4m3fn
BF16 = ml_dtypes.bfloat16
Q = "model.layers.0.self_attn.q_proj.weight"
UP = "model.layers.1.mlp.up_proj.weight"


@pytest.fixture(autouse=True, scope="module")
def _build_the_command_once():
    command = typer.main.get_command(app)
    patch = pytest.MonkeyPatch()
    if hasattr(typer.testing, "_get_command"):
        patch.setattr(typer.testing, "_get_command", lambda typer_app: command)
    yield
    patch.undo()


_DTYPES = {
    "F32": np.float32,
    "F16": np.float16,
    "BF16": BF16,
    "F8_E4M3": E4M3,
    "U8": np.uint8,
    "I32": np.int32,
    "I64": np.int64,
}


def read_tensors(path: Path) -> dict[str, np.ndarray]:
    """A safetensors file read from its bytes by the format's spec (8-byte header length,
    JSON header, data), independent of quant's reader; safetensors.numpy has no F8 dtype."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    data = raw[8 + n :]
    out = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        dtype = np.dtype(_DTYPES[info["dtype"]])
        out[name] = np.frombuffer(data[start:end], dtype).reshape(info["shape"]).copy()
    return out


def exported(x: np.ndarray, spec: QuantSpec) -> tuple[QuantSpec, dict[str, np.ndarray]]:
    spec = ct.export_spec(spec, x.dtype, "m.weight", x.shape)
    qt = quantize(x, spec, "m.weight", packed=True)
    return spec, dict(ct.stored_arrays("m.weight", spec, x.shape, stored_arrays("m.weight", qt)))


def weights(shape=(24, 128), seed=3, dtype=np.float32) -> np.ndarray:
    x = np.random.default_rng(seed).standard_t(4, shape) * 0.03
    x[2] = 0  # a row of zeros: the library's scale for it is eps, not 1
    return x.astype(dtype)


# -- layouts ---------------------------------------------------------------------------------


def test_nvfp4_layout_is_e2m1_nibbles_e4m3_scales_and_a_global_scale():
    x = weights()
    spec, arrays = exported(x, QuantSpec("nvfp4"))
    assert list(arrays) == ["m.weight_packed", "m.weight_scale", "m.weight_global_scale"]
    packed, scale, g = (
        arrays["m.weight_packed"],
        arrays["m.weight_scale"],
        arrays["m.weight_global_scale"],
    )
    assert packed.dtype == np.uint8 and packed.shape == (24, 64)
    assert scale.dtype == E4M3 and scale.shape == (24, 8)
    assert g.dtype == np.float32 and g.shape == (1,)
    # the reference: E2M1 of x / (block scale / global scale) by ml_dtypes' cast
    eff = (scale.astype(np.float32) / g[0]).astype(np.float32)
    blocks = x.reshape(24, 8, 16) / eff[..., None]
    codes = blocks.astype(ml_dtypes.float4_e2m1fn).view(np.uint8).reshape(24, 128)
    codes = codes.astype(np.uint8)
    expected = (codes[:, 0::2] & 0x0F) | (codes[:, 1::2] << 4)
    assert packed.tobytes() == expected.astype(np.uint8).tobytes()
    assert (scale[2].astype(np.float32) == 0.125).all()  # a block of zeros: 0.125


@pytest.mark.parametrize("scheme", ["mxfp4-ct", "mxfp4"])
def test_mxfp4_layout_is_e2m1_nibbles_and_e8m0_exponents(scheme):
    x = weights(seed=4)
    spec, arrays = exported(x, QuantSpec(scheme))
    assert list(arrays) == ["m.weight_packed", "m.weight_scale"]
    packed, scale = arrays["m.weight_packed"], arrays["m.weight_scale"]
    assert packed.dtype == np.uint8 and packed.shape == (24, 64)
    assert scale.dtype == np.uint8 and scale.shape == (24, 4)
    blocks = x.reshape(24, 4, 32)
    amax = np.abs(blocks).max(-1)
    mantissa, exponent = np.frexp(amax)  # amax = m 2^k, m in [0.5, 1): floor(log2) = k - 1
    floor_log2 = exponent - 1 + (mantissa >= 0.875 if scheme == "mxfp4-ct" else 0)
    expected = np.where(amax == 0, 0, floor_log2 - 2 + 127)
    assert scale.tolist() == expected.tolist()
    values = blocks / np.ldexp(1.0, scale.astype(np.int32) - 127)[..., None]
    codes = values.astype(np.float32).astype(ml_dtypes.float4_e2m1fn).view(np.uint8)
    codes = codes.reshape(24, 128).astype(np.uint8)
    assert packed.tobytes() == ((codes[:, 0::2] & 0x0F) | (codes[:, 1::2] << 4)).tobytes()


@pytest.mark.parametrize("granularity", ["channel", "tensor"])
def test_fp8_layout_is_the_weight_itself_and_a_scale_in_the_model_dtype(granularity):
    x = weights(seed=5)
    spec, arrays = exported(x, QuantSpec("fp8", granularity=granularity))
    assert list(arrays) == ["m.weight", "m.weight_scale"]
    codes, scale = arrays["m.weight"], arrays["m.weight_scale"]
    assert codes.dtype == E4M3 and codes.shape == (24, 128)
    assert scale.dtype == np.float32 and scale.shape == (
        (24, 1) if granularity == "channel" else (1,)
    )
    if granularity == "channel":
        amax = np.abs(x).max(axis=1, keepdims=True)
        expected = np.where(amax == 0, np.finfo(np.float32).eps, amax / np.float32(448))
        assert scale.tobytes() == expected.astype(np.float32).tobytes()
        assert scale[2, 0] == np.finfo(np.float32).eps  # the library's scale for a zero row
        ratio = np.clip(x / scale, -448, 448).astype(E4M3)
        assert codes.tobytes() == ratio.tobytes()


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dtype", [np.float32, BF16, np.float16])
def test_fullrange_ct_zero_groups_get_the_librarys_eps(bits, dtype):
    x = weights(seed=6, dtype=dtype)
    spec, arrays = exported(x, QuantSpec("fullrange-ct", bits, "group", group_size=32))
    scale = arrays["m.weight_scale"]
    assert scale.dtype == np.dtype(dtype)
    eps = ml_dtypes.finfo(dtype).eps
    own = quantize(x, spec, "m.weight").scale  # quant's own: 1 for the zero row
    assert (scale[2] == eps).all() and (own[2] == 1).all()
    assert scale[np.arange(24) != 2].tobytes() == own[np.arange(24) != 2].tobytes()
    codes, _ = ct.unpack_int32(arrays["m.weight_packed"], bits, 128)
    assert not codes[2].any()
    assert codes.min() == -(1 << (bits - 1))  # the full signed range


def test_fullrange_stores_negative_scales_and_restores_by_multiplying():
    x = weights(seed=7)
    spec, arrays = exported(x, QuantSpec("fullrange", 4, "group", group_size=32))
    scale = arrays["m.weight_scale"]
    assert (scale < 0).any() and (scale > 0).any()
    qt = quantize(x, spec, "m.weight", packed=True)
    entry = ct.CTEntry("m.weight", QuantSpec("absmax", 4, "group", group_size=32), x.shape, x.dtype)
    assert np.array_equal(ct.restore(entry, arrays, "test"), qt.dequantize())


def test_weight_args_name_the_library_strategy_and_scale_dtype():
    args = ct.weight_args(QuantSpec("nvfp4"))
    assert args["strategy"] == "tensor_group" and args["group_size"] == 16
    assert args["scale_dtype"] == "torch.float8_e4m3fn" and args["type"] == "float"
    args = ct.weight_args(QuantSpec("mxfp4-ct"))
    assert args["strategy"] == "group" and args["group_size"] == 32
    assert args["scale_dtype"] == "torch.uint8"
    args = ct.weight_args(QuantSpec("fp8", granularity="tensor"))
    assert args == {
        "num_bits": 8,
        "type": "float",
        "symmetric": True,
        "strategy": "tensor",
        "group_size": None,
        "dynamic": False,
        "actorder": None,
    }


def test_refused_schemes_name_the_nearest_spec():
    def message(spec, shape=(64, 128)):
        with pytest.raises(SpecError) as err:
            ct.export_spec(spec, np.dtype(np.float32), "layers.0.q.weight", shape)
        return str(err.value)

    text = message(QuantSpec("nf4"))
    assert "no NF4 format" in text and "--scheme nvfp4" in text and "layers.0.q.weight" in text
    assert "use --scheme fp8" in message(QuantSpec("fp8-e5m2"))
    assert "use --granularity channel" in message(QuantSpec("fp8", granularity="group"))
    assert "keep it with --exclude" in message(QuantSpec("nvfp4"), (64, 120))
    assert "keep it with --exclude" in message(QuantSpec("mxfp4-ct"), (64, 48))
    assert "use --granularity channel" in message(QuantSpec("fullrange-ct", 4, "tensor"))


# -- model folders through the CLI -----------------------------------------------------------

FORMATS = {
    "fullrange-ct": (
        ("--scheme", "fullrange-ct", "--bits", "4", "--granularity", "channel"),
        "pack-quantized",
    ),
    "fullrange": (
        ("--scheme", "fullrange", "--bits", "4", "--granularity", "group", "--group-size", "32"),
        "pack-quantized",
    ),
    "fp8": (("--scheme", "fp8"), "naive-quantized"),
    "fp8-tensor": (("--scheme", "fp8", "--granularity", "tensor"), "naive-quantized"),
    "nvfp4": (("--scheme", "nvfp4"), "nvfp4-pack-quantized"),
    "mxfp4-ct": (("--scheme", "mxfp4-ct"), "mxfp4-pack-quantized"),
    "mxfp4": (("--scheme", "mxfp4"), "mxfp4-pack-quantized"),
}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ct-formats")
    return make_folder(root / "model", llama_tensors(BF16), config={**CONFIG, "dtype": "bfloat16"})


@pytest.mark.parametrize("case", sorted(FORMATS))
def test_every_format_round_trips_through_decompress_inspect_and_report(source, tmp_path, case):
    args, name = FORMATS[case]
    out, restored = tmp_path / "q", tmp_path / "r"
    ok("compress", source, "-o", out, *args)
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["format"] == name and qc["quantization_status"] == "compressed"
    # decompress gives quant's own dequantization of the same weights, in the model's dtype
    ok("decompress", out, "-o", restored)
    back = load_file(str(restored / "model.safetensors"))
    original = llama_tensors(BF16)
    spec_args = dict(zip(args[::2], args[1::2]))
    spec = QuantSpec(
        spec_args["--scheme"],
        int(spec_args["--bits"]) if "--bits" in spec_args else None,
        spec_args.get("--granularity"),
        group_size=int(spec_args.get("--group-size", 0)) or None,
        search="auto",  # the command line's default
    )
    spec = ct.export_spec(spec, np.dtype(BF16), UP, (128, 64))
    stored = read_tensors(out / "model.safetensors")
    for tensor, dtype, shape in ct.stored_layout(UP, spec, (128, 64)):
        assert stored[tensor].dtype == dtype and stored[tensor].shape == shape, tensor
    expected = quantize(original[UP], spec, UP).dequantize(BF16)
    assert back[UP].dtype == BF16 and back[UP].tobytes() == expected.tobytes()
    assert back["lm_head.weight"].tobytes() == original["lm_head.weight"].tobytes()
    listing = json.loads(ok("inspect", out, "--json").stdout)
    rows = {t["tensor"]: t for t in listing["tensors"]}
    assert rows[UP]["shape"] == [128, 64] and UP + "_packed" not in rows
    report = json.loads(ok("report", source, "--against", out, "--format", "json").stdout)
    assert len({r["tensor"] for r in report["results"]}) == 8


def test_a_float32_model_keeps_its_dtype_through_nvfp4_via_config_dtype(tmp_path):
    src = make_folder(tmp_path / "model", llama_tensors(), config={**CONFIG, "dtype": "float32"})
    out, restored = tmp_path / "q", tmp_path / "r"
    ok("compress", src, "-o", out, "--scheme", "nvfp4")
    ok("decompress", out, "-o", restored)
    assert load_file(str(restored / "model.safetensors"))[UP].dtype == np.float32
    ok("report", src, "--against", out)


def test_mixed_formats_name_their_format_per_group():
    qc = ct.quantization_config(
        [(QuantSpec("nvfp4"), ["a"]), (QuantSpec("absmax", 4, "group", group_size=32), ["b"])],
        [],
    )
    assert qc["format"] == "mixed-precision"
    formats = [g["format"] for g in qc["config_groups"].values()]
    assert formats == ["nvfp4-pack-quantized", "pack-quantized"]


@pytest.mark.parametrize(
    "args, fragments",
    [
        (("--scheme", "nf4"), ("no NF4 format", "--scheme nvfp4")),
        (("--scheme", "fp8-e5m2"), ("E4M3 only", "use --scheme fp8")),
        (("--scheme", "fp8", "--granularity", "group"), ("use --granularity channel",)),
    ],
)
def test_specs_the_formats_cannot_hold_are_refused_and_nothing_is_written(
    tmp_path, args, fragments
):
    src = make_folder(tmp_path / "model")
    assert_fails(run("compress", src, "-o", tmp_path / "out", *args), 2, *fragments)
    assert sorted(os.listdir(tmp_path)) == ["model"]


# -- damaged checkpoints of the new formats --------------------------------------------------


def _damaged(tmp_path: Path, scheme: str, change) -> Path:
    src = make_folder(tmp_path / "model")
    out = tmp_path / "out"
    ok("compress", src, "-o", out, "--scheme", scheme)
    if change is not None:
        tensors = read_tensors(out / "model.safetensors")
        config = json.loads((out / "config.json").read_text())
        change(tensors, config["quantization_config"])
        (out / "model.safetensors").write_bytes(save_bytes(tensors, {"format": "pt"}))
        (out / "config.json").write_text(json.dumps(config))
    return out


def _put(tensors, name, value):
    tensors[name] = value


DAMAGE = {
    "fp8 NaN code": (
        "fp8",
        lambda t, qc: _put(t, Q, _with(t[Q], (0, 0), np.uint8(0x7F).view(E4M3))),
        "holds NaN",
    ),
    "nvfp4 NaN block scale": (
        "nvfp4",
        lambda t, qc: _put(
            t, Q + "_scale", _with(t[Q + "_scale"], (1, 1), np.uint8(0xFF).view(E4M3))
        ),
        "not finite and positive",
    ),
    "nvfp4 without its global scale": (
        "nvfp4",
        lambda t, qc: t.pop(Q + "_global_scale"),
        "weight_global_scale is missing",
    ),
    "nvfp4 zero global scale": (
        "nvfp4",
        lambda t, qc: _put(t, Q + "_global_scale", np.zeros(1, np.float32)),
        "weight_global_scale is not finite and positive",
    ),
    "mxfp4 NaN exponent": (
        "mxfp4-ct",
        lambda t, qc: _put(t, Q + "_scale", _with(t[Q + "_scale"], (0, 1), np.uint8(0xFF))),
        "not finite",
    ),
    "mxfp4 packed of the wrong width": (
        "mxfp4-ct",
        lambda t, qc: _put(t, Q + "_packed", t[Q + "_packed"][:, :16].copy()),
        "weight_scale is uint8 [64, 2] but",
    ),
    "nvfp4 args in groups of 32": (
        "nvfp4",
        lambda t, qc: qc["config_groups"]["group_0"]["weights"].update(group_size=32),
        "groups of 16, not 32",
    ),
    "asymmetric fp8": (
        "fp8",
        lambda t, qc: qc["config_groups"]["group_0"]["weights"].update(symmetric=False),
        "asymmetric naive-quantized",
    ),
    "an unknown format": (
        "fp8",
        lambda t, qc: qc.update(format="marlin-24"),
        "unsupported compressed-tensors format",
    ),
}


def _with(array: np.ndarray, index, value) -> np.ndarray:
    array = array.copy()
    array[index] = value
    return array


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_new_format_checkpoints_are_one_line_errors(tmp_path, case):
    scheme, change, fragment = DAMAGE[case]
    out = _damaged(tmp_path, scheme, change)
    restored = tmp_path / "restored"
    assert_fails(run("decompress", out, "-o", restored), 1, fragment)
    assert_fails(run("report", tmp_path / "model", "--against", out), 1, fragment)
    assert not restored.exists()


def test_negative_scales_are_legal_for_symmetric_int_only(tmp_path):
    out = _damaged(tmp_path, "fullrange", None)
    ok("decompress", out, "-o", tmp_path / "r")  # fullrange: negative scales, read back
    (tmp_path / "zp").mkdir()
    zp = _damaged(
        tmp_path / "zp", "zeropoint", lambda t, qc: _put(t, Q + "_scale", -t[Q + "_scale"])
    )
    assert_fails(run("decompress", zp, "-o", tmp_path / "r2"), 1, "not finite and positive")


def test_nvfp4_layers_vllm_fuses_share_the_smallest_global_scale(tmp_path):
    tensors = llama_tensors()
    tensors["model.layers.0.self_attn.k_proj.weight"] *= 3  # k has the largest magnitude
    src = make_folder(tmp_path / "model", tensors)
    out = tmp_path / "q"
    ok("compress", src, "-o", out, "--scheme", "nvfp4")
    stored = read_tensors(out / "model.safetensors")
    spec = QuantSpec("nvfp4")
    qkv = [f"model.layers.0.self_attn.{p}.weight" for p in ("q_proj", "k_proj")]
    own = {n: tensor_scale_of(tensors[n], spec)[0] for n in qkv}
    assert own[qkv[1]] < own[qkv[0]]
    for name in qkv:
        assert stored[name + "_global_scale"][0] == own[qkv[1]]
        qt = quantize(tensors[name], spec, name, packed=True, tensor_scale=own[qkv[1]])
        expected = dict(ct.stored_arrays(name, spec, qt.shape, stored_arrays(name, qt)))
        assert stored[name + "_packed"].tobytes() == expected[name + "_packed"].tobytes()
    # a layer vLLM does not fuse keeps its own
    down = "model.layers.0.mlp.down_proj.weight"
    assert stored[down + "_global_scale"][0] == tensor_scale_of(tensors[down], spec)[0]
    assert ct.fused_groups(["a.q_proj.weight", "a.k_proj.weight", "b.q_proj.weight"]) == [
        ["a.q_proj.weight", "a.k_proj.weight"]
    ]
    bert = [f"encoder.layer.0.attention.self.{p}.weight" for p in ("query", "key", "value")]
    experts = ["layers.0.experts.3.w1.weight", "layers.0.experts.3.w2.weight"]
    experts += ["layers.0.experts.3.w3.weight"]
    assert ct.fused_groups(bert + experts) == [bert, [experts[0], experts[2]]]
