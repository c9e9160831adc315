"""The compressed-tensors container and model folders, without torch.

Layout facts are checked against an independent bit-by-bit reference of the library's rule
(element i of a row at bits i*b of the row's little-endian int32 stream, codes offset by
2**(b-1)) and the test vector of docs/EXPORT.md; files are read back with the safetensors
package, not quant's reader. tests/test_interop_*.py loads the same output with
transformers and compressed-tensors themselves.
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
from cli_runner import assert_fails, cli
from safetensors.numpy import load_file, save_file

from quantcli.cli import app
from quantcli.core.quantizer import quantize
from quantcli.core.spec import QuantSpec
from quantcli.errors import SpecError
from quantcli.io import compressed_tensors as ct
from quantcli.io.quantized_format import stored_arrays


@pytest.fixture(autouse=True, scope="module")
def _build_the_command_once():
    command = typer.main.get_command(app)
    patch = pytest.MonkeyPatch()
    if hasattr(typer.testing, "_get_command"):
        patch.setattr(typer.testing, "_get_command", lambda typer_app: command)
    yield
    patch.undo()


run, ok = cli(120)


# -- layout --------------------------------------------------------------------------------


def reference_pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Bit by bit: signed codes [rows, n] -> int32 words, element i at bits i*b from the LSB."""
    rows, n = codes.shape
    words = -(-n * bits // 32)
    out = np.zeros((rows, words), np.int64)
    for r in range(rows):
        for i in range(n):
            value = int(codes[r, i]) + (1 << (bits - 1))
            for k in range(bits):
                if value >> k & 1:
                    pos = i * bits + k
                    out[r, pos // 32] |= 1 << (pos % 32)
    return (out & 0xFFFFFFFF).astype(np.uint32).view(np.int32)


def test_the_test_vector():
    codes = np.array([[-8, -7, 0, 1, 2, 3, 6, 7]], np.int8)
    packed = ct.pack_int32((codes + 8).astype(np.uint8), 4)
    assert packed.dtype == np.int32 and packed.shape == (1, 1)
    assert packed.tobytes() == bytes.fromhex("1098bafe")
    assert int(packed[0, 0]) & 0xFFFFFFFF == 0xFEBA9810
    back, clean = ct.unpack_int32(packed, 4, 8)
    assert clean and back.tolist() == codes.tolist()


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("n", [1, 3, 7, 8, 9, 31, 32, 33, 64])
def test_pack_matches_the_bitwise_reference(bits, n):
    rng = np.random.default_rng(n * bits)
    half = 1 << (bits - 1)
    codes = rng.integers(-half, half, size=(5, n)).astype(np.int8)
    packed = ct.pack_int32((codes.astype(np.int16) + half).astype(np.uint8), bits)
    expected = reference_pack(codes, bits)
    assert packed.shape == (5, -(-n * bits // 32))
    assert packed.tobytes() == expected.tobytes()
    back, clean = ct.unpack_int32(packed, bits, n)
    assert clean and np.array_equal(back, codes)


@pytest.mark.parametrize("bits", [4, 8])
def test_padding_bits_set_are_reported(bits):
    codes = np.zeros((2, 3), np.int8)
    packed = ct.pack_int32(np.full((2, 3), 1 << (bits - 1), np.uint8), bits).copy()
    assert ct.unpack_int32(packed, bits, 3)[1]
    packed[1, -1] |= np.int32(1 << 30)  # past the 3 codes of the row
    back, clean = ct.unpack_int32(packed, bits, 3)
    assert not clean and np.array_equal(back, codes)


SPECS = [
    QuantSpec("absmax", 4, "group", group_size=32),
    QuantSpec("absmax", 8, "channel"),
    QuantSpec("zeropoint", 4, "group", group_size=16),
    QuantSpec("zeropoint", 8, "channel"),
    QuantSpec("absmax", 4, "channel"),
    QuantSpec("zeropoint", 4, "channel", calibration="percentile", percentile=99.0),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.short_label())
@pytest.mark.parametrize("shape", [(24, 64), (7, 96), (33, 32)])
def test_stored_arrays_restore_what_quant_restores(spec, shape):
    """The re-layout changes no dequantized value: (q - zp) * scale from the compressed-tensors
    arrays, decoded by the reference rule, equals quant's own dequantization."""
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    qt = quantize(x, spec, "m.weight", packed=True)
    arrays = dict(ct.stored_arrays("m.weight", spec, shape, stored_arrays("m.weight", qt)))
    layout = ct.stored_layout("m.weight", spec, shape)
    assert [n for n, _, _ in layout] == list(arrays)
    for name, dtype, stored_shape in layout:
        assert arrays[name].dtype == dtype and arrays[name].shape == stored_shape, name
    assert arrays["m.weight_shape"].tolist() == list(shape)
    half = 1 << (spec.bits - 1)
    codes = qt.unpacked_codes().astype(np.int16)
    if spec.has_zero_point:
        codes = codes - half
        zp = qt.zero_point.astype(np.int16) - half
        assert (
            arrays["m.weight_zero_point"].tobytes()
            == reference_pack(zp.T, spec.bits).T.copy().tobytes()
        )
    assert arrays["m.weight_packed"].tobytes() == reference_pack(codes, spec.bits).tobytes()
    entry = ct.CTEntry("m.weight", spec, shape, np.dtype(np.float32))
    restored = ct.restore(entry, arrays, "test")
    assert np.array_equal(restored, qt.dequantize())


def test_check_spec_names_the_nearest_spec():
    def message(spec, shape=(64, 128)):
        with pytest.raises(SpecError) as err:
            ct.check_spec(spec, "layers.0.q.weight", shape)
        return str(err.value)

    assert "use --bits 4" in message(QuantSpec("absmax", 3, "channel"))
    assert "use --bits 4" in message(QuantSpec("absmax", 5, "channel"))
    assert "use --bits 8" in message(QuantSpec("absmax", 7, "channel"))
    text = message(QuantSpec("absmax", 4, "group", group_size=100))
    assert "layers.0.q.weight" in text and "use --group-size 128" in text
    assert "use --group-size 32" in message(QuantSpec("absmax", 4, "group", group_size=64), (8, 96))
    assert "--granularity channel" in message(QuantSpec("absmax", 4, "group", group_size=8), (8, 9))
    assert "use --granularity channel" in message(QuantSpec("absmax", 8, "tensor"))
    assert "use --axis 0" in message(QuantSpec("absmax", 8, "channel", axis=1))
    ct.check_spec(QuantSpec("zeropoint", 4, "group", group_size=64), "w", (8, 128))


def test_targets_are_anchored_and_tolerate_a_base_model_prefix():
    import re

    target = ct.module_target("model.layers.0.self_attn.q_proj", ("model",))[3:]
    for name in ("model.layers.0.self_attn.q_proj", "layers.0.self_attn.q_proj"):
        assert re.match(target, name)
    for name in ("model.layers.0.self_attn.q_proj2", "model.layers.10.self_attn.q_proj"):
        assert not re.match(target, name)
    plain = ct.module_target("encoder.layer.0.attention.self.query")[3:]
    assert re.match(plain, "bert.encoder.layer.0.attention.self.query")
    assert not re.match(plain, "decoder.layer.0.attention.self.query")


# -- model folders -------------------------------------------------------------------------

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 96,
    "hidden_size": 64,
    "tie_word_embeddings": False,
}


def llama_tensors(dtype=np.float32, layers=2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)

    def w(*shape):
        return (rng.standard_normal(shape) * 0.05).astype(dtype)

    out = {"model.embed_tokens.weight": w(96, 64), "lm_head.weight": w(96, 64)}
    out["model.norm.weight"] = np.ones(64, dtype)
    for i in range(layers):
        p = f"model.layers.{i}."
        out[p + "self_attn.q_proj.weight"] = w(64, 64)
        out[p + "self_attn.k_proj.weight"] = w(32, 64)
        out[p + "mlp.up_proj.weight"] = w(128, 64)
        out[p + "mlp.down_proj.weight"] = w(64, 128)
        out[p + "input_layernorm.weight"] = np.ones(64, dtype)
    return out


def make_folder(path: Path, tensors=None, sharded=False, config=CONFIG) -> Path:
    path.mkdir()
    tensors = llama_tensors() if tensors is None else tensors
    (path / "config.json").write_text(json.dumps(config))
    (path / "tokenizer.json").write_text('{"version": "1.0"}')
    (path / "generation_config.json").write_text('{"do_sample": false}')
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (path / "pytorch_model.bin").write_bytes(b"float weights in another format")
    if not sharded:
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
        return path
    names = sorted(tensors)
    halves = [names[: len(names) // 2], names[len(names) // 2 :]]
    weight_map = {}
    for i, part in enumerate(halves):
        file = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(path / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    index = {"metadata": {"total_size": 1}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    return path


W4 = ("--bits", "4", "--granularity", "group", "--group-size", "32")


def test_model_folder_gives_a_compressed_tensors_folder(tmp_path):
    src = make_folder(tmp_path / "model")
    out = tmp_path / "model-w4"
    result = ok("compress", src, "-o", out, *W4)
    assert sorted(os.listdir(out)) == [
        "1_Pooling",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    for name in ("tokenizer.json", "generation_config.json", "1_Pooling/config.json"):
        assert (out / name).read_bytes() == (src / name).read_bytes()
    assert "pytorch_model.bin" in result.stderr  # named as left out
    config = json.loads((out / "config.json").read_text())
    assert {k: v for k, v in config.items() if k != "quantization_config"} == CONFIG
    qc = config["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors"
    assert qc["format"] == "pack-quantized"
    assert qc["quantization_status"] == "compressed"
    (group,) = qc["config_groups"].values()
    assert group["weights"] == {
        "num_bits": 4,
        "type": "int",
        "symmetric": True,
        "strategy": "group",
        "group_size": 32,
        "dynamic": False,
        "actorder": None,
    }
    assert len(group["targets"]) == 8 and qc["ignore"] == ["lm_head", "model.embed_tokens"]
    tensors = load_file(str(out / "model.safetensors"))
    src_tensors = llama_tensors()
    for name in ("lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"):
        assert tensors[name].tobytes() == src_tensors[name].tobytes()  # kept byte for byte
    q = "model.layers.1.mlp.down_proj.weight"
    assert q not in tensors
    assert tensors[q + "_packed"].dtype == np.int32 and tensors[q + "_packed"].shape == (64, 16)
    assert tensors[q + "_scale"].dtype == np.float32 and tensors[q + "_scale"].shape == (64, 4)
    assert tensors[q + "_shape"].dtype == np.int64 and tensors[q + "_shape"].tolist() == [64, 128]
    assert q + "_zero_point" not in tensors
    for row in ("kept: embedding", "kept: output head", "kept: 1-D"):
        assert row in result.stderr


def test_asymmetric_bf16_scales_follow_the_model_and_zero_points_pack_along_rows(tmp_path):
    tensors = llama_tensors(ml_dtypes.bfloat16, layers=1)
    src = make_folder(tmp_path / "model", tensors)
    out = tmp_path / "out"
    ok("compress", src, "-o", out, "--scheme", "zeropoint", *W4)
    stored = load_file(str(out / "model.safetensors"))
    q = "model.layers.0.self_attn.k_proj.weight"
    assert stored[q + "_scale"].dtype == ml_dtypes.bfloat16 and stored[q + "_scale"].shape == (
        32,
        2,
    )
    assert stored[q + "_zero_point"].dtype == np.int32 and stored[q + "_zero_point"].shape == (4, 2)
    (group,) = json.loads((out / "config.json").read_text())["quantization_config"][
        "config_groups"
    ].values()
    assert group["weights"]["symmetric"] is False
    # restored values: quant's own zeropoint dequantization of the same weights, with the
    # command line's default search
    spec = QuantSpec("zeropoint", 4, "group", group_size=32, scale_dtype="bfloat16", search="auto")
    assert spec.search == "mse"
    expected = quantize(tensors[q], spec, q).dequantize(ml_dtypes.bfloat16)
    restored = tmp_path / "restored"
    ok("decompress", out, "-o", restored)
    back = load_file(str(restored / "model.safetensors"))
    assert back[q].dtype == ml_dtypes.bfloat16 and back[q].tobytes() == expected.tobytes()


def test_sharded_folder_keeps_its_sharding_and_index(tmp_path):
    src = make_folder(tmp_path / "model", sharded=True)
    out = tmp_path / "out"
    ok("compress", src, "-o", out, *W4)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    assert files == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    total = 0
    for file in files:
        for name, array in load_file(str(out / file)).items():
            assert index["weight_map"][name] == file
            total += array.nbytes
    assert len(index["weight_map"]) == sum(len(load_file(str(out / f))) for f in files)
    assert index["metadata"]["total_size"] == total
    restored = tmp_path / "restored"
    ok("decompress", out, "-o", restored)
    assert sorted(
        json.loads((restored / "model.safetensors.index.json").read_text())["weight_map"]
    ) == sorted(llama_tensors())
    assert "quantization_config" not in json.loads((restored / "config.json").read_text())


def test_quant_format_folder_carries_the_files_too(tmp_path):
    src = make_folder(tmp_path / "model")
    out = tmp_path / "out"
    ok("compress", src, "-o", out, "--format", "quant")
    assert (out / "tokenizer.json").exists() and (out / "1_Pooling" / "config.json").exists()
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc == {"quant_method": "quantcli", "format_version": "1"}
    # quant's own format: every 2-D tensor quantized, the embedding included
    stored = load_file(str(out / "model.safetensors"))
    assert stored["model.embed_tokens.weight"].dtype == np.int8
    restored = tmp_path / "restored"
    ok("decompress", out, "-o", restored)
    assert "quantization_config" not in json.loads((restored / "config.json").read_text())


def test_report_against_and_inspect_read_compressed_tensors(tmp_path):
    src = make_folder(tmp_path / "model")
    out = tmp_path / "out"
    ok("compress", src, "-o", out, *W4)
    report = json.loads(ok("report", src, "--against", out, "--format", "json").stdout)
    tensors = {r["tensor"] for r in report["results"]}
    assert len(tensors) == 8 and "lm_head.weight" not in tensors
    listing = json.loads(ok("inspect", out, "--json").stdout)
    assert listing["quantized"] is True
    rows = {t["tensor"]: t for t in listing["tensors"]}
    assert rows["model.layers.0.mlp.up_proj.weight"]["shape"] == [128, 64]
    assert "model.layers.0.mlp.up_proj.weight_packed" not in rows


def test_existing_output_needs_force_and_is_replaced_whole(tmp_path):
    src = make_folder(tmp_path / "model")
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    assert_fails(run("compress", src, "-o", out, *W4), 2, "output exists")
    assert sorted(os.listdir(out)) == ["stale.txt"]
    ok("compress", src, "-o", out, *W4, "--force")
    assert not (out / "stale.txt").exists() and (out / "config.json").exists()
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


@pytest.mark.parametrize(
    "args, fragments",
    [
        (("--bits", "3"), ("3-bit codes", "model.layers.0", "use --bits 4")),
        (
            ("--bits", "4", "--granularity", "group", "--group-size", "48"),
            ("group size 48", "use --group-size", "ragged"),
        ),
        (("--granularity", "tensor"), ("per-tensor scale", "use --granularity channel")),
        (("--scale-dtype", "float16"), ("float16 scales", "drop --scale-dtype")),
    ],
)
def test_specs_the_format_cannot_hold_are_refused(tmp_path, args, fragments):
    src = make_folder(tmp_path / "model")
    out = tmp_path / "out"
    assert_fails(run("compress", src, "-o", out, *args), 2, *fragments)
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_bad_model_folders_are_one_line_errors(tmp_path):
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    assert_fails(run("compress", empty, "-o", out), 1, "folder without a checkpoint")
    broken = make_folder(tmp_path / "broken")
    (broken / "config.json").write_text("{not json")
    assert_fails(run("compress", broken, "-o", out), 1, "bad config.json", "not valid JSON")
    listed = make_folder(tmp_path / "listed")
    (listed / "config.json").write_text("[1, 2]")
    assert_fails(run("compress", listed, "-o", out), 1, "bad config.json", "not a JSON object")
    done = make_folder(
        tmp_path / "done", config={**CONFIG, "quantization_config": {"quant_method": "awq"}}
    )
    assert_fails(run("compress", done, "-o", out), 1, "already quantized", "'awq'")
    single = tmp_path / "one.safetensors"
    save_file({"w": np.ones((4, 4), np.float32)}, str(single))
    assert_fails(
        run("compress", single, "-o", out, "--format", "compressed-tensors"), 2, "no model folder"
    )
    inside = make_folder(tmp_path / "inside")
    assert_fails(run("compress", inside, "-o", inside / "q"), 2, "output inside the input")
    assert not out.exists() and not (inside / "q").exists()
    gpt2 = make_folder(tmp_path / "gpt2", config={**CONFIG, "model_type": "gpt2"})
    assert_fails(run("compress", gpt2, "-o", out), 2, "Conv1D", "--format quant")


def test_failure_half_way_leaves_nothing(tmp_path):
    tensors = llama_tensors()
    tensors["model.layers.1.mlp.up_proj.weight"][3, 3] = np.nan
    src = make_folder(tmp_path / "model", tensors)
    out = tmp_path / "out"
    assert_fails(run("compress", src, "-o", out), 1, "non-finite")
    assert sorted(os.listdir(tmp_path)) == ["model"]


# -- damaged compressed-tensors checkpoints ----------------------------------------------


@pytest.fixture
def exported(tmp_path) -> Path:
    src = make_folder(tmp_path / "model")
    out = tmp_path / "out"
    ok("compress", src, "-o", out, "--scheme", "zeropoint", *W4)
    return out


def damage_tensors(folder: Path, change) -> None:
    tensors = load_file(str(folder / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def damage_config(folder: Path, change) -> None:
    config = json.loads((folder / "config.json").read_text())
    change(config["quantization_config"])
    (folder / "config.json").write_text(json.dumps(config))


Q = "model.layers.0.self_attn.q_proj.weight"


def _set(tensors, name, value):
    tensors[name] = value


DAMAGE = {
    "missing weight_shape": (
        lambda f: damage_tensors(f, lambda t: t.pop(Q + "_shape")),
        "weight_shape is missing",
    ),
    "wrong weight_shape": (
        lambda f: damage_tensors(f, lambda t: _set(t, Q + "_shape", np.array([64, 96]))),
        "weight_packed is int32 [64, 8] but",
    ),
    "negative weight_shape": (
        lambda f: damage_tensors(f, lambda t: _set(t, Q + "_shape", np.array([64, -1]))),
        "not two positive integers",
    ),
    "scale of the wrong shape": (
        lambda f: damage_tensors(f, lambda t: _set(t, Q + "_scale", t[Q + "_scale"][:, :1].copy())),
        "weight_scale is float32 [64, 1]",
    ),
    "zero point of the wrong shape": (
        lambda f: damage_tensors(
            f, lambda t: _set(t, Q + "_zero_point", t[Q + "_zero_point"][:4].copy())
        ),
        "weight_zero_point is int32 [4, 2]",
    ),
    "negative scale": (
        lambda f: damage_tensors(f, lambda t: _set(t, Q + "_scale", -t[Q + "_scale"])),
        "not finite and positive",
    ),
    "3-bit args": (
        lambda f: damage_config(
            f, lambda qc: qc["config_groups"]["group_0"]["weights"].update(num_bits=3)
        ),
        "3-bit codes",
    ),
    "no group targets it": (
        lambda f: damage_config(f, lambda qc: qc["config_groups"]["group_0"].update(targets=[])),
        "no config group targets",
    ),
    "not compressed": (
        lambda f: damage_config(f, lambda qc: qc.update(quantization_status="frozen")),
        "quantization_status is 'frozen'",
    ),
    "no config groups": (
        lambda f: damage_config(f, lambda qc: qc.pop("config_groups")),
        "no config_groups",
    ),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_checkpoints_are_one_line_errors_and_write_nothing(exported, tmp_path, case):
    damage, fragment = DAMAGE[case]
    damage(exported)
    restored = tmp_path / "restored"
    assert_fails(run("decompress", exported, "-o", restored), 1, fragment)
    if case != "negative scale":  # inspect reads headers and codes, as for quant's own files
        assert_fails(run("inspect", exported), 1, fragment)
    assert_fails(run("report", tmp_path / "model", "--against", exported), 1, fragment)
    assert not restored.exists()


def test_a_config_json_that_is_not_json_is_an_error_on_reading(exported, tmp_path):
    (exported / "config.json").write_text('{"quantization_config": ')
    assert_fails(run("decompress", exported, "-o", tmp_path / "r"), 1, "bad config.json")
