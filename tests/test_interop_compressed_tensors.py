"""quant's compressed-tensors output, loaded by the libraries users load it with.

Small real architectures (BertModel, LlamaForCausalLM) are built from tiny configs with
random weights and saved with save_pretrained (no hub); quant compresses the folder through
its CLI; transformers loads the result on the CPU. Each load is checked through the loader's
own report (``output_loading_info=True``): a missing or unexpected key means weights were
silently re-initialised, which must fail, not pass quietly. The loaded model's outputs must
equal those of the float model rebuilt by ``quant decompress`` (same weights, up to float
rounding) and be close to the original float model's.

The last part compares bytes with compressed-tensors' own compressor.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch
import typer
import typer.testing
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
from compressed_tensors.quantization import (
    QuantizationArgs,
    QuantizationConfig,
    QuantizationScheme,
)
from compressed_tensors.quantization.utils import calculate_qparams
from safetensors.numpy import load_file
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    BertConfig,
    BertModel,
    CompressedTensorsConfig,
    LlamaConfig,
    LlamaForCausalLM,
)
from typer.testing import CliRunner

from quantcli.cli import app
from quantcli.core.quantizer import quantize
from quantcli.core.spec import QuantSpec
from quantcli.io import compressed_tensors as ct
from quantcli.io.quantized_format import stored_arrays

ENV = {"COLUMNS": "120", "NO_COLOR": "1"}
torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="module")
def _build_the_command_once():
    command = typer.main.get_command(app)
    patch = pytest.MonkeyPatch()
    if hasattr(typer.testing, "_get_command"):
        patch.setattr(typer.testing, "_get_command", lambda typer_app: command)
    yield
    patch.undo()


def quant(*args) -> None:
    result = CliRunner().invoke(app, ["-q" if a == "-q" else str(a) for a in args], env=ENV)
    assert result.exit_code == 0, (result.stderr, result.exception)


# -- tiny real models ------------------------------------------------------------------------


def save_llama(path: Path, dtype=torch.float32, shard: str | None = None) -> Path:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=160,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(dtype)
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(path, **kwargs)
    (path / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    return path


def save_bert(path: Path) -> Path:
    torch.manual_seed(1)
    config = BertConfig(
        vocab_size=120,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(path)
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    return path


def load(cls, path: Path, expected_unexpected=(), **kwargs):
    """Load with the loader's own report checked: nothing missing, nothing unexpected but
    ``expected_unexpected``, no size mismatch, no error."""
    model, info = cls.from_pretrained(path, output_loading_info=True, **kwargs)
    assert set(info["missing_keys"]) == set(), info
    assert set(info["unexpected_keys"]) == set(expected_unexpected), info
    assert not info["mismatched_keys"] and not info["error_msgs"], info
    return model.eval()


IDS = torch.tensor([[3, 17, 42, 99, 5, 0, 11, 64, 7, 23]])


def outputs(model) -> torch.Tensor:
    with torch.no_grad():
        out = model(IDS)
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state).float()


def assert_same_model(a, b, tolerance: float = 1e-6) -> None:
    """Equal up to float rounding: the same weights, perhaps a different op order."""
    x, y = outputs(a), outputs(b)
    scale = float(y.abs().max())
    assert float((x - y).abs().max()) <= tolerance * max(scale, 1.0), float((x - y).abs().max())


def assert_close_to(quantized, float_model, min_cosine: float) -> None:
    x, y = outputs(quantized).flatten(), outputs(float_model).flatten()
    cosine = float(torch.nn.functional.cosine_similarity(x, y, dim=0))
    assert cosine >= min_cosine, cosine
    assert not torch.equal(x, y)  # quantized: not the float weights


def assert_weights_restored(model, restored_dir: Path) -> None:
    """The weights transformers decompressed (on the first forward pass) equal quant
    decompress's, tensor by tensor, bit for bit."""
    outputs(model)
    restored = {}
    for file in restored_dir.glob("*.safetensors"):
        restored.update(load_file(str(file)))
    state = model.state_dict()
    assert not [k for k in state if k.endswith("_packed")], "still compressed"
    # the loader keeps the scales as buffers beside the decompressed weight
    assert set(restored) <= set(state)
    assert all(k.endswith(("_scale", "_shape", "_zero_point")) for k in set(state) - set(restored))
    for name, array in restored.items():
        got = state[name].detach()
        assert got.dtype == {"float32": torch.float32, "bfloat16": torch.bfloat16}[str(array.dtype)]
        assert np.array_equal(got.float().numpy(), array.astype(np.float32)), name


# -- loading ------------------------------------------------------------------------------


# Asymmetric pack-quantized loads with dequantize=True only, in transformers 5.24 with
# compressed-tensors 0.20.1: the compressed load path allocates weight_zero_point unpacked,
# [out, groups], and refuses the packed [ceil(out*b/32), groups] the format stores (the
# library's own compressor writes the same). test_asymmetric_default_load_quirk pins it.
DEQUANTIZE = {"quantization_config": CompressedTensorsConfig(dequantize=True)}


@pytest.mark.parametrize(
    "spec",
    [
        ("--bits", "8"),
        ("--bits", "4", "--granularity", "group", "--group-size", "32"),
        ("--bits", "4", "--granularity", "group", "--group-size", "32", "--scheme", "zeropoint"),
        ("--bits", "8", "--scheme", "zeropoint"),
    ],
    ids=["w8-channel", "w4-g32", "w4-g32-asym", "w8-channel-asym"],
)
def test_llama_loads_and_matches_its_decompressed_model(tmp_path, spec):
    src = save_llama(tmp_path / "llama")
    out, restored = tmp_path / "llama-q", tmp_path / "llama-restored"
    quant("compress", src, "-o", out, *spec, "-q")
    quant("decompress", out, "-o", restored, "-q")
    assert (out / "tokenizer_config.json").read_bytes() == (
        src / "tokenizer_config.json"
    ).read_bytes()
    kwargs = DEQUANTIZE if "zeropoint" in spec else {}
    model = load(AutoModelForCausalLM, out, **kwargs)
    rebuilt = load(AutoModelForCausalLM, restored)
    assert_weights_restored(model, restored)
    assert_same_model(model, rebuilt)
    assert_close_to(model, load(AutoModelForCausalLM, src), 0.98 if "4" in spec else 0.999)
    # the base model drops the "model." prefix: the targets still name every Linear
    base = load(AutoModel, out, expected_unexpected={"lm_head.weight"}, **kwargs)
    assert_same_model(base, load(AutoModel, restored, expected_unexpected={"lm_head.weight"}))


def test_dequantize_at_load_time_gives_the_same_model(tmp_path):
    src = save_llama(tmp_path / "llama")
    out, restored = tmp_path / "q", tmp_path / "r"
    quant("compress", src, "-o", out, "--scheme", "zeropoint", "--bits", "4", "-q")
    quant("decompress", out, "-o", restored, "-q")
    config = CompressedTensorsConfig(dequantize=True)
    model = load(AutoModelForCausalLM, out, quantization_config=config)
    assert_same_model(model, load(AutoModelForCausalLM, restored))


def test_asymmetric_default_load_quirk(tmp_path):
    src = save_llama(tmp_path / "llama")
    out = tmp_path / "q"
    quant("compress", src, "-o", out, "--scheme", "zeropoint", "--bits", "4", "-q")
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        AutoModelForCausalLM.from_pretrained(out)


def test_bert_with_sentence_transformers_files(tmp_path):
    src = save_bert(tmp_path / "bert")
    out, restored = tmp_path / "bert-q", tmp_path / "bert-r"
    quant("compress", src, "-o", out, "--bits", "8", "-q")
    quant("decompress", out, "-o", restored, "-q")
    assert (out / "1_Pooling" / "config.json").exists()
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert "embeddings.word_embeddings" in qc["ignore"]
    model = load(AutoModel, out)
    assert_same_model(model, load(AutoModel, restored))
    assert_close_to(model, load(AutoModel, src), 0.999)


def test_bf16_sharded_llama(tmp_path):
    src = save_llama(tmp_path / "llama", dtype=torch.bfloat16, shard="100KB")
    assert (src / "model.safetensors.index.json").exists()
    out, restored = tmp_path / "q", tmp_path / "r"
    quant(
        "compress",
        src,
        "-o",
        out,
        "--bits",
        "4",
        "--granularity",
        "group",
        "--group-size",
        "64",
        "-q",
    )
    quant("decompress", out, "-o", restored, "-q")
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert shards == sorted(p.name for p in src.glob("*.safetensors")) and len(shards) > 1
    scales = [a for f in shards for n, a in load_file(str(out / f)).items() if n.endswith("_scale")]
    assert len(scales) == 14 and all(a.dtype == ml_dtypes.bfloat16 for a in scales)
    model = load(AutoModelForCausalLM, out)
    assert model.dtype == torch.bfloat16
    assert_same_model(model, load(AutoModelForCausalLM, restored), tolerance=1e-2)
    assert_weights_restored(model, restored)


def test_a_config_without_quantization_status_is_caught(tmp_path):
    """The loader check above is what catches a silent re-initialisation: without
    quantization_status transformers takes the weights as not yet compressed."""
    src = save_llama(tmp_path / "llama")
    out = tmp_path / "q"
    quant("compress", src, "-o", out, "--bits", "4", "-q")
    config = json.loads((out / "config.json").read_text())
    del config["quantization_config"]["quantization_status"]
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(AssertionError):
        load(AutoModelForCausalLM, broken)


def test_the_library_accepts_every_key_quant_writes(tmp_path):
    src = save_llama(tmp_path / "llama")
    out = tmp_path / "q"
    quant("compress", src, "-o", out, "--bits", "4", "--scheme", "zeropoint", "-q")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    parsed = QuantizationConfig.model_validate(qc)  # extra keys are refused by its models
    (group,) = parsed.config_groups.values()
    assert group.weights.num_bits == 4 and group.weights.symmetric is False
    assert parsed.quantization_status == "compressed" and parsed.format == "pack-quantized"


# -- bytes against the library's own compressor --------------------------------------------

ROWS, COLS = 96, 256


def weights(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_t(4, (ROWS, COLS)) * 0.02).astype(np.float32)


def ct_args(spec: QuantSpec) -> QuantizationArgs:
    return QuantizationArgs(**ct.weight_args(spec))


def exported(x: np.ndarray, spec: QuantSpec):
    qt = quantize(x, spec, "m.weight", packed=True)
    arrays = ct.stored_arrays("m.weight", spec, x.shape, stored_arrays("m.weight", qt))
    return qt, dict(arrays)


SPECS = [QuantSpec("absmax", b, g, group_size=64) for b in (4, 8) for g in ("channel", "group")] + [
    QuantSpec("zeropoint", b, g, group_size=64) for b in (4, 8) for g in ("channel", "group")
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.short_label())
def test_layout_is_byte_identical_to_pack_to_int32(spec):
    """Given the same signed codes and zero points, quant's arrays are the library's bytes."""
    qt, arrays = exported(weights(spec.bits), spec)
    half = 1 << (spec.bits - 1)
    codes = qt.unpacked_codes().astype(np.int16) - (half if spec.has_zero_point else 0)
    packed = pack_to_int32(torch.from_numpy(codes.astype(np.int8)), spec.bits)
    assert arrays["m.weight_packed"].tobytes() == packed.numpy().tobytes()
    if spec.has_zero_point:
        zp = torch.from_numpy((qt.zero_point.astype(np.int16) - half).astype(np.int8))
        packed_zp = pack_to_int32(zp, spec.bits, packed_dim=0)
        assert arrays["m.weight_zero_point"].tobytes() == packed_zp.numpy().tobytes()


@pytest.mark.parametrize("spec", [s for s in SPECS if s.scheme == "absmax"], ids=str)
def test_symmetric_compressor_given_quants_scales_writes_quants_bytes(spec):
    """The library's compress(x, quant's scales) rounds x / scale as quant does (float32,
    half to even) and clamps to the full signed range, which absmax codes never reach."""
    x = weights(10 + spec.bits)
    _, arrays = exported(x, spec)
    scheme = QuantizationScheme(targets=["Linear"], weights=ct_args(spec))
    state = {
        "weight": torch.from_numpy(x),
        "weight_scale": torch.from_numpy(arrays["m.weight_scale"]),
    }
    out = PackedQuantizationCompressor.compress(state, scheme)
    assert out["weight_packed"].numpy().tobytes() == arrays["m.weight_packed"].tobytes()
    assert out["weight_shape"].tolist() == arrays["m.weight_shape"].tolist()


@pytest.mark.parametrize("spec", [s for s in SPECS if s.scheme == "zeropoint"], ids=str)
def test_zeropoint_against_the_librarys_asymmetric_observer(spec):
    """quant's zeropoint against calculate_qparams on the same min/max, float32 weights:
    zero points identical; scales equal or one float32 ulp apart (quant divides the float64
    width, the library the float32 one); and given quant's scales and zero points the
    library's codes (round(x / s + zp)) differ from quant's (rint(x / s) + zp) only where
    adding the zero point in float32 moves a value across a rounding boundary: by one, in
    a handful of elements."""
    x = weights(20 + spec.bits)
    qt, arrays = exported(x, spec)
    half = 1 << (spec.bits - 1)
    group = spec.group_size if spec.granularity == "group" else COLS
    xt = torch.from_numpy(x).reshape(ROWS, COLS // group, group)
    scale, zp = calculate_qparams(xt.amin(-1), xt.amax(-1), ct_args(spec))
    ours = qt.scale.astype(np.float32).reshape(scale.shape)
    assert np.array_equal(zp.numpy().astype(np.int16), qt.zero_point.astype(np.int16) - half)
    ulps = np.abs(scale.numpy().view(np.int32).astype(np.int64) - ours.view(np.int32))
    assert ulps.max() <= 1
    state = {
        "weight": torch.from_numpy(x),
        "weight_scale": torch.from_numpy(ours),
        "weight_zero_point": torch.from_numpy(qt.zero_point.astype(np.int16) - half).to(torch.int8),
    }
    scheme = QuantizationScheme(targets=["Linear"], weights=ct_args(spec))
    out = PackedQuantizationCompressor.compress(state, scheme)
    assert out["weight_zero_point"].numpy().tobytes() == arrays["m.weight_zero_point"].tobytes()
    theirs = ct.unpack_int32(out["weight_packed"].numpy(), spec.bits, COLS)[0].astype(np.int16)
    mine = ct.unpack_int32(arrays["m.weight_packed"], spec.bits, COLS)[0].astype(np.int16)
    differ = theirs != mine
    assert np.abs(theirs - mine).max() <= 1
    assert differ.sum() <= 1e-4 * differ.size


# -- mixed specs (docs/MIX.md) ------------------------------------------------------------------


@pytest.mark.parametrize(
    "mix",
    [
        ("--bits", "4", "--granularity", "group", "--group-size", "32", "--rule", "*v_proj=int8"),
        ("--bits", "4", "--granularity", "group", "--group-size", "32", "--rule", "*mlp*=fp8"),
        ("--scheme", "fullrange-ct", "--granularity", "group", "--group-size", "32",
         "--target-bpw", "5.5"),
    ],
    ids=["int4-int8", "int4-fp8-mixed-precision", "budget"],
)  # fmt: skip
def test_a_mixed_folder_loads_and_matches_its_decompressed_model(tmp_path, mix):
    """Several config groups (and mixed-precision when their formats differ): transformers
    loads each Linear with its own spec, and the model equals quant decompress's."""
    src = save_llama(tmp_path / "llama")
    out, restored = tmp_path / "llama-q", tmp_path / "llama-restored"
    quant("compress", src, "-o", out, *mix, "-q")
    quant("decompress", out, "-o", restored, "-q")
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    groups = config["config_groups"].values()
    assert len(groups) >= 2, config
    if "*mlp*=fp8" in mix:
        assert config["format"] == "mixed-precision"
        assert {g["format"] for g in groups} == {"pack-quantized", "naive-quantized"}
    model = load(AutoModelForCausalLM, out)
    assert_weights_restored(model, restored)
    assert_same_model(model, load(AutoModelForCausalLM, restored))
    assert_close_to(model, load(AutoModelForCausalLM, src), 0.98)
