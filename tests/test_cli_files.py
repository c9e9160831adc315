"""The file commands end to end: quant compress / decompress / inspect, through the CLI.

Every test drives the real Typer app (``CliRunner``) on real files and checks the results
with code that does not come from quant: a small safetensors reader below, ``np.load`` and
the formulas of docs/FORMAT.md. Only the --json test uses quantcli.core, as the independent
reference the report's numbers must equal.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import typer
import typer.testing
from cli_runner import assert_fails, cli

import quantcli
from quantcli.cli import app

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_weights"
TRANSFORMER = SAMPLES / "transformer.safetensors"
TRANSFORMER_BF16 = SAMPLES / "transformer.bf16.safetensors"
ENV = {"COLUMNS": "100", "NO_COLOR": "1"}

# the 2-D float tensors of sample_weights/transformer*.safetensors: quantized by default
TRANSFORMER_QUANTIZED = {
    "model.embed_tokens.weight",
    "lm_head.weight",
    *(
        f"model.layers.{i}.{name}.weight"
        for i in range(2)
        for name in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        )
    ),
}
TRANSFORMER_KEPT = {
    "model.position_ids": "kept: int",
    "model.norm.weight": "kept: 1-D",
    "model.layers.0.input_layernorm.weight": "kept: 1-D",
    "model.layers.1.input_layernorm.weight": "kept: 1-D",
    "model.layers.0.self_attn.q_proj.bias": "kept: 1-D",
    "model.layers.1.self_attn.q_proj.bias": "kept: 1-D",
}

# -- helpers independent of quant ------------------------------------------------------------

ST_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}


def parse_safetensors(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(name -> array in data order, __metadata__) of safetensors bytes; reads BF16 too."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + n
    arrays = {}
    for name, h in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        start, end = h["data_offsets"]
        dtype = ST_DTYPES[h["dtype"]]
        arrays[name] = np.frombuffer(data[base + start : base + end], dtype).reshape(h["shape"])
    return arrays, meta


def read_safetensors(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    return parse_safetensors(Path(path).read_bytes())


def read_any(path) -> dict[str, np.ndarray]:
    """The tensors of a .npy (one, named after the file), .npz or safetensors file."""
    path = Path(path)
    head = path.read_bytes()[:6]
    if head == b"\x93NUMPY":
        return {path.stem: np.load(path, allow_pickle=False)}
    if head[:2] == b"PK":
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    return read_safetensors(path)[0]


def quantized_specs(meta: dict[str, str]) -> dict[str, dict]:
    return json.loads(meta["quant.tensors"])


def expand_scale(scale: np.ndarray, spec: dict, shape: tuple[int, ...]) -> np.ndarray:
    """Stored scales (or zero points) broadcast to the tensor's shape (docs/FORMAT.md)."""
    shape = tuple(shape) or (1,)
    scale = np.asarray(scale, np.float32) if scale.dtype != np.uint8 else np.asarray(scale)
    if spec["granularity"] == "group":
        g = spec["group_size"]
        return np.repeat(scale, g, axis=-1)[..., : shape[-1]]
    return np.broadcast_to(scale, shape)


def natural_order(name: str) -> list:
    """Sort key: numbers inside names by value (layers.2 before layers.10)."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# -- running the CLI ---------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def _build_the_command_once():
    """Typer's CliRunner rebuilds the Click command from the functions' signatures on every
    invoke (~30 ms, a third of the matrix below); build it once. Same QuantGroup, same app."""
    command = typer.main.get_command(app)
    patch = pytest.MonkeyPatch()
    if hasattr(typer.testing, "_get_command"):
        patch.setattr(typer.testing, "_get_command", lambda typer_app: command)
    yield
    patch.undo()


run, ok = cli(100)


# -- inputs --------------------------------------------------------------------------------


def make_npz_tensors(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "w2d": rng.normal(0, 0.5, (40, 70)).astype(np.float32),
        "w3d": rng.normal(0, 2.0, (4, 16, 36)).astype(np.float16),
        "w64": rng.uniform(-50, 150, (32, 40)),  # float64, not centred on zero
        "bias": rng.normal(0, 1, 70).astype(np.float32),
        "small": rng.normal(0, 1, (8, 8)).astype(np.float32),
        "ids": rng.integers(0, 1000, (5, 300)).astype(np.int32),
        "scalar": np.array(3.5, np.float32),
        "flags": rng.integers(0, 2, 10).astype(bool),
    }


NPZ_QUANTIZED = {"w2d", "w3d", "w64"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(1234)
    npy = folder / "w.npy"
    np.save(npy, rng.normal(0, 1, (24, 70)).astype(np.float32))
    npz = folder / "several.npz"
    np.savez(npz, **make_npz_tensors(rng))
    return {"f32": TRANSFORMER, "bf16": TRANSFORMER_BF16, "npy": npy, "npz": npz}


# group sizes that do not divide the last axes (transformer: 64 and 172; npy 70; npz 70, 36, 40)
GRANULARITIES = {
    "tensor": ["--granularity", "tensor"],
    "channel": ["--granularity", "channel"],
    "group": ["--granularity", "group", "--group-size", "48"],
}
RESTORED_EXT = {"f32": ".safetensors", "bf16": ".safetensors", "npy": ".npy", "npz": ".npz"}


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("scheme", ["absmax", "zeropoint"])
@pytest.mark.parametrize("source", ["f32", "bf16", "npy", "npz"])
def test_round_trip(inputs, tmp_path, source, scheme, granularity, bits):
    src = inputs[source]
    quantized = tmp_path / "q.safetensors"
    result = ok(
        "compress", src, "-o", quantized, "--scheme", scheme, "--bits", bits,
        *GRANULARITIES[granularity], "--quiet",
    )  # fmt: skip
    # --quiet: nothing but the warning of a very low SQNR (at 2 or 3 bits)
    assert result.stdout == ""
    assert all(line.startswith("Warning: very low SQNR") for line in result.stderr.splitlines())

    original = read_any(src)
    stored, meta = read_safetensors(quantized)
    specs = quantized_specs(meta)
    expected = {
        "f32": TRANSFORMER_QUANTIZED,
        "bf16": TRANSFORMER_QUANTIZED,
        "npy": {"w"},
        "npz": NPZ_QUANTIZED,
    }[source]
    assert set(specs) == expected
    # the default search (--search auto): mse at 4 bits and below, per channel or group
    searched = bits <= 4 and granularity != "tensor"
    for spec in specs.values():
        assert (spec["scheme"], spec["bits"], spec["granularity"]) == (scheme, bits, granularity)
        assert spec.get("search", "none") == ("mse" if searched else "none")
    for name in set(original) - expected:  # kept: stored byte for byte under its own name
        assert same_bytes(stored[name], original[name]), name

    ext = RESTORED_EXT[source]
    exact = tmp_path / f"exact{ext}"
    ok("decompress", quantized, "-o", exact, "--dtype", "float32", "--quiet")
    restored32 = read_any(exact) if ext != ".npy" else {"w": np.load(exact)}
    restored_path = tmp_path / f"restored{ext}"
    ok("decompress", quantized, "-o", restored_path, "--quiet")
    restored = read_any(restored_path) if ext != ".npy" else {"w": np.load(restored_path)}

    assert list(restored) == list(original)  # every name, in the original order
    assert set(restored32) == set(original)
    for name, x in original.items():
        back = restored[name]
        assert back.dtype == x.dtype and back.shape == x.shape, name
        if name not in expected:
            assert same_bytes(back, x), name
            assert same_bytes(restored32[name], x), name  # --dtype never touches kept tensors
            continue
        x_hat = restored32[name]
        assert x_hat.dtype == np.float32 and x_hat.shape == x.shape
        # the original dtype is the float32 restoration rounded once, nothing else
        assert same_bytes(back, x_hat.astype(x.dtype)), name
        if searched:
            continue  # a searched scale may clip a group's ends: no half-step bound
        # minmax calibration clips nothing: every element is within half a step
        x32 = x.astype(np.float32)
        step = expand_scale(stored[name + ".scale"], specs[name], x.shape)
        err = np.abs(x32.astype(np.float64) - x_hat.astype(np.float64))
        tol = 4 * 2.0**-24 * (np.abs(x32) + step)
        worst = np.max(err - (step / 2 + tol))
        assert worst <= 0, f"{name}: error exceeds scale/2 by {worst}"


def test_round_trip_bf16_default_dtype_within_half_ulp(tmp_path):
    """Without --dtype the bf16 weights come back in bf16: the bound plus half a bf16 ulp
    (of round to nearest: a searched scale may clip)."""
    quantized = tmp_path / "q.safetensors"
    ok("compress", TRANSFORMER_BF16, "-o", quantized, "--bits", "4", "--search", "none", "--quiet")
    restored = tmp_path / "r.safetensors"
    ok("decompress", quantized, "-o", restored, "--quiet")
    original = read_safetensors(TRANSFORMER_BF16)[0]
    stored, meta = read_safetensors(quantized)
    back = read_safetensors(restored)[0]
    for name, spec in quantized_specs(meta).items():
        x = original[name].astype(np.float64)
        x_hat = back[name]
        assert x_hat.dtype == ml_dtypes.bfloat16
        x_hat = x_hat.astype(np.float64)
        step = expand_scale(stored[name + ".scale"], spec, x.shape).astype(np.float64)
        half_ulp = np.abs(x_hat) * 2.0**-8  # bf16 keeps 8 significant bits
        assert np.all(np.abs(x - x_hat) <= step / 2 + half_ulp + 1e-7 * step), name


# -- selection -------------------------------------------------------------------------------


def compress_json(src, tmp_path, *args) -> dict:
    out = tmp_path / "q.safetensors"
    result = ok("compress", src, "-o", out, "--json", "--force", *args)
    return json.loads(result.stdout)


def decisions(report: dict) -> dict[str, str | None]:
    """tensor -> None when quantized, else its reason."""
    return {t["tensor"]: (None if t["quantized"] else t["reason"]) for t in report["tensors"]}


def test_default_selection_keeps_1d_and_int(tmp_path):
    got = decisions(compress_json(TRANSFORMER, tmp_path))
    assert got == {**dict.fromkeys(TRANSFORMER_QUANTIZED), **TRANSFORMER_KEPT}


def test_include_quantizes_a_1d_tensor_and_only_what_it_names(tmp_path):
    report = compress_json(TRANSFORMER, tmp_path, "--include", "*norm*", "--include", "lm_head.*")
    got = decisions(report)
    named = {
        "model.norm.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.1.input_layernorm.weight",
        "lm_head.weight",
    }
    assert {n for n, reason in got.items() if reason is None} == named
    assert got["model.position_ids"] == "kept: int"
    assert got["model.embed_tokens.weight"] == "kept: not in --include"
    # a quantized 1-D tensor falls back from channel to tensor granularity
    row = next(t for t in report["tensors"] if t["tensor"] == "model.norm.weight")
    assert row["spec"]["granularity"] == "tensor"
    stored, meta = read_safetensors(tmp_path / "q.safetensors")
    assert stored["model.norm.weight"].dtype == np.int8
    assert stored["model.norm.weight.scale"].shape == (1,)


def test_include_never_quantizes_integers(tmp_path):
    got = decisions(compress_json(TRANSFORMER, tmp_path, "--include", "model.position_ids"))
    assert got["model.position_ids"] == "kept: int"
    assert all(reason is not None for reason in got.values())


def test_exclude(tmp_path):
    got = decisions(compress_json(TRANSFORMER, tmp_path, "--exclude", "*.mlp.*"))
    mlp = {n for n in TRANSFORMER_QUANTIZED if ".mlp." in n}
    assert len(mlp) == 4
    assert {n for n, r in got.items() if r == "kept: --exclude"} == mlp
    assert {n for n, r in got.items() if r is None} == TRANSFORMER_QUANTIZED - mlp


def test_exclude_wins_over_include(tmp_path):
    got = decisions(
        compress_json(TRANSFORMER, tmp_path, "--include", "lm_head.*", "--exclude", "lm_*")
    )
    assert got["lm_head.weight"] == "kept: --exclude"


def test_min_elements(tmp_path):
    # 64x64 = 4096 elements are kept; 172x64 = 11008 and 256x64 = 16384 are quantized
    got = decisions(compress_json(TRANSFORMER, tmp_path, "--min-elements", "5000"))
    small = {n for n in TRANSFORMER_QUANTIZED if "self_attn" in n}
    assert {n for n, r in got.items() if r == "kept: < 5000 elements"} == small
    assert {n for n, r in got.items() if r is None} == TRANSFORMER_QUANTIZED - small
    # the default is 1024: an (8, 8) float tensor is kept, a (40, 70) one quantized
    assert decisions(compress_json(TRANSFORMER, tmp_path, "--min-elements", "16384")) == {
        **{n: "kept: < 16384 elements" for n in TRANSFORMER_QUANTIZED},
        "lm_head.weight": None,
        "model.embed_tokens.weight": None,
        **TRANSFORMER_KEPT,
    }


def test_npz_selection_and_single_npy_always_quantized(inputs, tmp_path):
    got = decisions(compress_json(inputs["npz"], tmp_path))
    assert got == {
        "w2d": None,
        "w3d": None,
        "w64": None,
        "bias": "kept: 1-D",
        "small": "kept: < 1024 elements",
        "ids": "kept: int",
        "scalar": "kept: 0-D",
        "flags": "kept: bool",
    }
    # a .npy holds one array, which is quantized even when 1-D and small
    tiny = tmp_path / "tiny.npy"
    np.save(tiny, np.linspace(-1, 1, 10, dtype=np.float32))
    report = compress_json(tiny, tmp_path)
    assert [t["quantized"] for t in report["tensors"]] == [True]


def test_include_quantizes_a_0d_tensor(inputs, tmp_path):
    got = decisions(compress_json(inputs["npz"], tmp_path, "--include", "scalar"))
    assert got["scalar"] is None
    stored, meta = read_safetensors(tmp_path / "q.safetensors")
    # a 0-d tensor is stored as shape (1,)
    assert stored["scalar"].shape == (1,) and stored["scalar.scale"].shape == (1,)
    ok("decompress", tmp_path / "q.safetensors", "-o", tmp_path / "r.npz", "--quiet")
    back = read_any(tmp_path / "r.npz")
    assert back["scalar"].shape == () and back["scalar"].dtype == np.float32
    assert back["scalar"] == np.float32(3.5)  # absmax: the absmax value itself is exact


# -- sharded checkpoints ---------------------------------------------------------------------


def make_sharded(folder: Path, source: Path = TRANSFORMER, n_shards: int = 3) -> Path:
    """A Hugging Face style sharded checkpoint of ``source``: shards plus index.json."""
    from safetensors.numpy import save_file

    tensors, meta = read_safetensors(source)
    names = list(tensors)
    folder.mkdir()
    weight_map = {}
    total = 0
    for k in range(n_shards):
        file = f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {n: np.ascontiguousarray(tensors[n]) for n in names[k::n_shards]}
        save_file(part, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
        total += sum(a.nbytes for a in part.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    path = folder / "model.safetensors.index.json"
    path.write_text(json.dumps(index, indent=2))
    return path


def test_sharded_round_trip(tmp_path):
    index = make_sharded(tmp_path / "ckpt")
    shards = sorted(p.name for p in (tmp_path / "ckpt").glob("*.safetensors"))
    out = tmp_path / "out"
    ok("compress", index, "-o", out, "--scheme", "zeropoint", "--bits", "4", "--quiet")

    assert sorted(p.name for p in out.iterdir()) == sorted([*shards, index.name])
    out_index = json.loads((out / index.name).read_text())
    weight_map = out_index["weight_map"]
    stored_names = {}
    total = 0
    for shard in shards:
        arrays, meta = read_safetensors(out / shard)
        assert meta["quant.format"] == "quantcli" and meta["quant.format_version"] == "1"
        stored_names.update(dict.fromkeys(arrays, shard))
        total += sum(a.nbytes for a in arrays.values())
        # every shard holds the quantized form of its own input shard's tensors
        inputs_here = set(read_safetensors(tmp_path / "ckpt" / shard)[0])
        assert set(quantized_specs(meta)) == inputs_here & TRANSFORMER_QUANTIZED
        logical = {n for n in arrays if not n.endswith((".scale", ".zero_point"))}
        assert logical == inputs_here
        # the shard's own metadata, not the index's, is recorded for decompress
        assert json.loads(meta["quant.source_metadata"]) == {"format": "pt"}
    assert weight_map == stored_names  # every stored name, mapped to the shard that holds it
    for name in TRANSFORMER_QUANTIZED:
        assert {name, name + ".scale", name + ".zero_point"} <= set(weight_map)
    meta = out_index["metadata"]
    assert int(meta["total_size"]) == total
    assert set(json.loads(meta["quant.tensors"])) == TRANSFORMER_QUANTIZED
    assert meta["quant.format"] == "quantcli" and meta["quant.format_version"] == "1"

    # decompress the output folder (found through its index) into a sharded folder again
    restored = tmp_path / "restored"
    ok("decompress", out, "-o", restored, "--quiet")
    assert sorted(p.name for p in restored.iterdir()) == sorted([*shards, index.name])
    original = read_safetensors(TRANSFORMER)[0]
    back = {}
    for shard in shards:
        arrays, meta = read_safetensors(restored / shard)
        assert meta == {"format": "pt"}  # Hugging Face loaders refuse shards without it
        back.update(arrays)
    assert set(back) == set(original)
    r_index = json.loads((restored / index.name).read_text())
    assert r_index["weight_map"] == json.loads(index.read_text())["weight_map"]
    assert r_index["metadata"] == {"total_size": sum(a.nbytes for a in back.values())}
    for name, x in original.items():
        assert back[name].dtype == x.dtype and back[name].shape == x.shape
        if name in TRANSFORMER_QUANTIZED:
            assert np.max(np.abs(back[name] - x)) < 0.02
        else:
            assert same_bytes(back[name], x), name


def test_sharded_folder_input_default_output(tmp_path):
    make_sharded(tmp_path / "ckpt", n_shards=2)
    ok("compress", tmp_path / "ckpt", "--quiet")
    out = tmp_path / "ckpt.absmax-int8"
    assert (out / "model.safetensors.index.json").is_file()
    assert len(list(out.glob("*.safetensors"))) == 2
    # a second run refuses to overwrite the folder's files
    assert_fails(run("compress", tmp_path / "ckpt", "--quiet"), 2, "output exists")


# -- stdin / stdout ----------------------------------------------------------------------------


def test_stdin_stdout_pipeline(tmp_path):
    w = np.random.default_rng(7).normal(0, 1, (16, 40)).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, w)
    compressed = run("compress", "-", input=buf.getvalue())
    assert compressed.exit_code == 0, compressed.stderr
    data = compressed.stdout_bytes
    arrays, meta = parse_safetensors(data)  # stdout holds exactly one safetensors file
    assert meta["quant.source_format"] == "npy"
    assert "tensor" in compressed.stderr  # the report goes to stderr

    out = tmp_path / "w2.npy"
    restored = run("decompress", "-", "-o", out, input=data)
    assert restored.exit_code == 0, restored.stderr
    assert restored.stdout == ""
    w2 = np.load(out)
    assert w2.dtype == w.dtype and w2.shape == w.shape
    scale = arrays["tensor.scale"]  # per channel (axis 0): one scale per row
    assert scale.shape == (16, 1)
    assert np.all(np.abs(w2 - w) <= scale / 2 * (1 + 1e-6))

    # decompress to stdout gives the source format back: .npy bytes
    to_stdout = run("decompress", "-", "--quiet", input=data)
    assert to_stdout.exit_code == 0, to_stdout.stderr
    assert same_bytes(np.load(io.BytesIO(to_stdout.stdout_bytes)), w2)


def test_json_with_stdout_output_is_refused(tmp_path):
    assert_fails(run("compress", TRANSFORMER, "-o", "-", "--json"), 2, "--json")


# -- --json -------------------------------------------------------------------------------------


def test_compress_json_matches_independent_stats(tmp_path):
    from quantcli.core.metrics import ErrorStats
    from quantcli.core.quantizer import clipped_mask, quantize
    from quantcli.core.spec import QuantSpec

    out = tmp_path / "q.safetensors"
    args = ["--scheme", "zeropoint", "--bits", "4", "--granularity", "group", "--group-size", "48"]
    result = ok("compress", TRANSFORMER_BF16, "-o", out, "--json", "--quiet", *args)
    assert result.stderr == ""
    report = json.loads(result.stdout)
    assert set(report) == {"input", "output", "files", "tensors", "totals"}
    assert report["output"] == str(out) and report["files"] == [str(out)]
    original = read_safetensors(TRANSFORMER_BF16)[0]
    # all of them, in natural name order (layers.2 before layers.10)
    assert [t["tensor"] for t in report["tensors"]] == sorted(original, key=natural_order)
    row_keys = {
        "tensor", "shape", "dtype", "quantized", "spec", "reason", "bytes_in", "bytes_out",
        "bits_per_weight", "mse", "rmse", "max_abs_error", "sqnr_db", "cosine",
        "clipped_fraction", "mse_unclipped",
    }  # fmt: skip
    stored = read_safetensors(out)[0]
    exact = tmp_path / "r.safetensors"
    ok("decompress", out, "-o", exact, "--dtype", "float32", "--quiet")
    restored = read_safetensors(exact)[0]
    for row in report["tensors"]:
        assert set(row) == row_keys
        x = original[row["tensor"]]
        assert row["shape"] == list(x.shape)
        assert row["bytes_in"] == x.nbytes
        if not row["quantized"]:
            assert row["bytes_out"] == x.nbytes and row["mse"] is None
            continue
        name = row["tensor"]
        assert row["dtype"] == "bfloat16"
        spec = QuantSpec(**row["spec"])
        assert (spec.scheme, spec.bits, spec.granularity, spec.group_size) == (
            "zeropoint",
            4,
            "group",
            48,
        )
        qt = quantize(x, spec)
        stats = ErrorStats.of(x, qt.dequantize(), clipped_mask(x, qt)).as_dict()
        for key, value in stats.items():
            # equal up to the order of float64 summation (the report may sum in chunks)
            assert row[key] == pytest.approx(value, rel=1e-12, abs=0), (name, key)
        assert row["max_abs_error"] == stats["max_abs_error"]
        assert row["clipped_fraction"] == stats["clipped_fraction"]
        stored_bytes = sum(stored[n].nbytes for n in (name, name + ".scale", name + ".zero_point"))
        assert row["bytes_out"] == stored_bytes
        assert row["bits_per_weight"] == 8 * stored_bytes / x.size
        # and the numbers describe the file that was written
        err = x.astype(np.float64) - restored[name].astype(np.float64)
        assert row["mse"] == pytest.approx(np.mean(err**2), rel=1e-9)
        assert row["max_abs_error"] == pytest.approx(np.max(np.abs(err)), rel=1e-9)
    totals = report["totals"]
    quantized_rows = [t for t in report["tensors"] if t["quantized"]]
    assert totals["tensors"] == 20 and totals["quantized"] == 14 and totals["kept"] == 6
    assert totals["bytes_in"] == sum(a.nbytes for a in original.values())
    assert totals["bytes_out"] == sum(a.nbytes for a in stored.values())
    assert totals["ratio"] == pytest.approx(totals["bytes_in"] / totals["bytes_out"])
    assert totals["bits_per_weight"] == pytest.approx(
        8
        * sum(t["bytes_out"] for t in quantized_rows)
        / sum(np.prod(t["shape"]) for t in quantized_rows)
    )


def test_compress_json_seed_figures(tmp_path):
    """The guide's reference figures on the seed notebook's data, through the CLI."""
    seed = SAMPLES / "seed_outlier.npy"

    def mse(*args):
        report = compress_json(seed, tmp_path, "--scheme", *args)
        (row,) = report["tensors"]
        assert row["spec"]["granularity"] == "tensor"  # 1-D: per-channel falls back
        return row

    # the guide's figures come from the notebook's own draws: agree to about 0.1 %
    assert mse("zeropoint")["mse"] == pytest.approx(1.41, abs=0.01)
    assert mse("absmax")["mse"] == pytest.approx(5.11, abs=0.02)
    row = mse("zeropoint", "--calibration", "percentile")
    assert row["mse"] == pytest.approx(72.34, abs=0.05)
    assert row["mse_unclipped"] == pytest.approx(0.05, abs=0.005)
    assert row["clipped_fraction"] == 1e-4  # the outlier, nothing else

    # and exactly what the formulas give, computed here in float64 from NumPy's percentile
    x = np.load(seed).astype(np.float64)
    lo, hi = min(np.percentile(x, 100 - 99.99), 0), max(np.percentile(x, 99.99), 0)
    scale = (hi - lo) / 255
    zp = np.clip(np.rint(-lo / scale), 0, 255)
    x_hat = (np.clip(np.rint(x / scale) + zp, 0, 255) - zp) * scale
    err = (x - x_hat) ** 2
    assert row["mse"] == pytest.approx(err.mean(), rel=1e-5)
    assert row["mse_unclipped"] == pytest.approx(err[:-1].mean(), rel=1e-4)


def test_compress_table_on_stderr(tmp_path):
    result = ok("compress", TRANSFORMER, "-o", tmp_path / "q.safetensors")
    assert result.stdout == ""
    err = result.stderr
    assert "absmax i8 ch" in err
    assert "14 quantized, 6 kept" in err
    assert "kept: int" in err and "kept: 1-D" in err
    assert "lm_head.weight" in err
    assert all(len(line) <= 100 for line in err.splitlines())
    assert "\x1b[" not in err


def test_decompress_json(tmp_path):
    q = tmp_path / "q.safetensors"
    ok("compress", TRANSFORMER_BF16, "-o", q, "--quiet")
    result = ok("decompress", q, "-o", tmp_path / "r.safetensors", "--json")
    assert result.stderr == ""
    report = json.loads(result.stdout)
    assert report["format"] == "safetensors" and report["files"] == [
        str(tmp_path / "r.safetensors")
    ]
    rows = {t["tensor"]: t for t in report["tensors"]}
    assert {n for n, t in rows.items() if t["restored"]} == TRANSFORMER_QUANTIZED
    assert rows["lm_head.weight"]["dtype"] == "bfloat16"
    assert rows["lm_head.weight"]["shape"] == [256, 64]
    assert rows["model.position_ids"]["dtype"] == "int64"


# -- output safety and errors ----------------------------------------------------------------


def test_default_output_beside_input_and_no_overwrite(tmp_path):
    src = tmp_path / "model.safetensors"
    shutil.copy(TRANSFORMER, src)
    ok("compress", src, "--quiet")
    out = tmp_path / "model.absmax-int8.safetensors"
    assert out.is_file()
    ok("compress", src, "--scheme", "zeropoint", "--bits", "4", "--quiet")
    assert (tmp_path / "model.zeropoint-uint4.safetensors").is_file()

    before = out.read_bytes()
    stat = out.stat()
    line = assert_fails(run("compress", src), 2, "output exists", str(out))
    assert "--force" in line
    assert out.read_bytes() == before and out.stat().st_mtime_ns == stat.st_mtime_ns
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model.absmax-int8.safetensors",
        "model.safetensors",
        "model.zeropoint-uint4.safetensors",
    ]  # no temp file left behind

    ok("compress", src, "-o", out, "--bits", "6", "--force", "--quiet")
    assert out.read_bytes() != before
    assert quantized_specs(read_safetensors(out)[1])["lm_head.weight"]["bits"] == 6

    # decompress: default output beside the input, restored in the source's format
    ok("decompress", out, "--quiet")
    assert (tmp_path / "model.absmax-int8.restored.safetensors").is_file()
    assert_fails(run("decompress", out), 2, "output exists")


def test_decompress_default_output_keeps_npz_format(inputs, tmp_path):
    src = tmp_path / "several.npz"
    shutil.copy(inputs["npz"], src)
    ok("compress", src, "--quiet")
    ok("decompress", tmp_path / "several.absmax-int8.safetensors", "--quiet")
    back = read_any(tmp_path / "several.absmax-int8.restored.npz")
    assert set(back) == set(read_any(src))


@pytest.mark.parametrize("spelling", ["same", "dot", "symlink"])
def test_output_equal_to_input_is_refused(tmp_path, spelling):
    src = tmp_path / "w.safetensors"
    shutil.copy(TRANSFORMER, src)
    before = src.read_bytes()
    target = {"same": str(src), "dot": str(tmp_path / "." / "w.safetensors")}.get(spelling)
    if spelling == "symlink":
        target = tmp_path / "link.safetensors"
        target.symlink_to(src)
    assert_fails(run("compress", src, "-o", target, "--force"), 2, "output is the input")
    assert src.read_bytes() == before

    q = tmp_path / "q.safetensors"
    ok("compress", src, "-o", q, "--quiet")
    q_before = q.read_bytes()
    assert_fails(run("decompress", q, "-o", q, "--force"), 2, "output is the input")
    assert q.read_bytes() == q_before


def test_sharded_output_may_not_hold_the_inputs(tmp_path):
    index = make_sharded(tmp_path / "ckpt", n_shards=2)
    before = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()}
    assert_fails(
        run("compress", index, "-o", tmp_path / "ckpt", "--force"), 2, "output is the input"
    )
    assert {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()} == before


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["compress", "missing.safetensors"], 1, "no such file"),
        (["compress", "{src}", "--bits", "9"], 2, "--bits"),
        (["compress", "{src}", "--bits", "1"], 2, "--bits"),
        (["compress", "{src}", "--scheme", "nope"], 2, "--scheme"),
        (["compress", "{src}", "--granularity", "channel", "--axis", "2"], 2, "axis 2"),
        (
            ["compress", "{src}", "--percentile", "20", "--calibration", "percentile"],
            2,
            "percentile",
        ),
        (["compress", "{src}", "--group-size", "0"], 2, "--group-size"),
        (["compress", "{src}", "--min-elements", "-1"], 2, "--min-elements"),
        (["compress", "{src}", "--unknown-option"], 2, "--unknown-option"),
        (["decompress", "{src}"], 1, "not a quantized file"),
        (["decompress", "{src}", "--dtype", "int8"], 2, "--dtype"),
        (["inspect", "missing.npy"], 1, "no such file"),
        (["compress", "{text}"], 1, "unknown format"),
        (["compress", "{nan}"], 1, "non-finite"),
    ],
)
def test_errors(tmp_path, monkeypatch, args, code, fragment):
    monkeypatch.chdir(tmp_path)
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is no weight file\n")
    nan = tmp_path / "nan.npy"
    np.save(nan, np.array([[1.0, np.nan], [2.0, 3.0]], np.float32))
    paths = {"src": str(TRANSFORMER), "text": str(text), "nan": str(nan)}
    files_before = sorted(p.name for p in tmp_path.iterdir())
    assert_fails(run(*[a.format(**paths) for a in args]), code, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == files_before  # nothing written


def test_nonfinite_keep(tmp_path):
    nan = tmp_path / "several.npz"
    bad = np.ones((40, 40), np.float32)
    bad[3, 4] = np.inf
    np.savez(nan, good=np.ones((40, 40), np.float32), bad=bad)
    got = decisions(compress_json(nan, tmp_path, "--nonfinite", "keep"))
    assert got == {"good": None, "bad": "kept: 1 non-finite values"}
    stored = read_safetensors(tmp_path / "q.safetensors")[0]
    assert same_bytes(stored["bad"], bad)


def test_stdin_errors(tmp_path):
    assert_fails(run("compress", "-", input=b""), 1, "empty input")
    assert_fails(run("compress", "-", input=b"garbage bytes here"), 1, "unknown format")


# -- inspect -------------------------------------------------------------------------------------


def test_inspect_plain_table_and_json(inputs):
    table = ok("inspect", inputs["npz"])
    assert table.stderr == ""
    out = table.stdout
    for name in ("w2d", "w3d", "w64", "bias", "small", "ids", "scalar", "flags"):
        assert name in out
    assert "(4, 16, 36)" in out and "float16" in out and "8 tensors" in out
    assert "quantized" not in out and "\x1b[" not in out
    assert all(len(line) <= 100 for line in out.splitlines())

    report = json.loads(ok("inspect", TRANSFORMER, "--json").stdout)
    assert report["quantized"] is False and report["format"] == "safetensors"
    assert report["metadata"] == {"format": "pt", "source": "quant sample_weights/generate.py"}
    original = read_safetensors(TRANSFORMER)[0]
    assert {
        t["tensor"]: (t["dtype"], tuple(t["shape"]), t["bytes"]) for t in report["tensors"]
    } == {n: (str(a.dtype), a.shape, a.nbytes) for n, a in original.items()}
    assert all(t["spec"] is None for t in report["tensors"])
    assert report["total_bytes"] == sum(a.nbytes for a in original.values())


def test_inspect_quantized_table_and_json(tmp_path):
    q = tmp_path / "q.safetensors"
    ok(
        "compress",
        TRANSFORMER_BF16,
        "-o",
        q,
        "--scheme",
        "zeropoint",
        "--bits",
        "4",
        "--granularity",
        "group",
        "--group-size",
        "32",
        "--scale-dtype",
        "float16",
        "--quiet",
    )
    report = json.loads(ok("inspect", q, "--json").stdout)
    assert report["quantized"] is True
    assert report["metadata"] == {
        "quant.format": "quantcli",
        "quant.format_version": "1",
        "quant.producer": f"quant {quantcli.__version__}",
        "quant.source_format": "safetensors",
    }
    stored = read_safetensors(q)[0]
    rows = {t["tensor"]: t for t in report["tensors"]}
    assert set(rows) == set(read_safetensors(TRANSFORMER_BF16)[0])  # logical tensors only
    up = rows["model.layers.0.mlp.up_proj.weight"]
    assert up["dtype"] == "bfloat16" and up["shape"] == [172, 64]
    assert up["spec"] == {
        "scheme": "zeropoint", "bits": 4, "granularity": "group", "axis": 0, "group_size": 32,
        "calibration": "minmax", "percentile": 99.99, "scale_dtype": "float16", "search": "mse",
    }  # fmt: skip
    name = "model.layers.0.mlp.up_proj.weight"
    assert up["bytes"] == sum(
        stored[n].nbytes for n in (name, name + ".scale", name + ".zero_point")
    )
    assert rows["model.position_ids"]["spec"] is None
    assert report["total_bytes"] == sum(a.nbytes for a in stored.values())

    table = ok("inspect", q)
    out = table.stdout
    assert "quantized safetensors" in out and "zeropoint" in out and "group(32)" in out
    assert "float16" in out and "kept" in out and "20 tensors" in out
    assert "quant.format: quantcli" in out and "quant.tensors" not in out


def test_version_and_module_help():
    result = ok("--version")
    assert result.stdout == f"quant {quantcli.__version__}\n"
    proc = subprocess.run(
        [sys.executable, "-m", "quantcli", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, **ENV},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    for command in ("compress", "decompress", "inspect"):
        assert command in proc.stdout


# -- calibration, scale dtypes ------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["absmax", "zeropoint"])
def test_percentile_unclipped_within_half_step(tmp_path, scheme):
    """Percentile calibration per channel: unclipped elements within half a step, clipped
    ones saturate at the end of the range, and --json counts exactly the clipped ones."""
    src = SAMPLES / "uniform_4x128x256.npy"
    x = np.load(src)
    p = 99.9
    q = tmp_path / "q.safetensors"
    result = ok(
        "compress",
        src,
        "-o",
        q,
        "--scheme",
        scheme,
        "--calibration",
        "percentile",
        "--percentile",
        p,
        "--json",
        "--quiet",
    )
    (row,) = json.loads(result.stdout)["tensors"]
    stored = read_safetensors(q)[0]
    ok("decompress", q, "-o", tmp_path / "r.npy", "--quiet")
    x_hat = np.load(tmp_path / "r.npy")
    x64 = x.astype(np.float64)
    scale = stored["uniform_4x128x256.scale"].astype(np.float64)  # (4, 1, 1)
    assert scale.shape == (4, 1, 1)
    if scheme == "absmax":
        amax = np.percentile(np.abs(x64), p, axis=(1, 2), keepdims=True)
        assert np.allclose(scale, amax / 127, rtol=1e-6)
        below, above = x64 < -amax, x64 > amax
        floor, top = -127 * scale, 127 * scale
    else:
        lo = np.minimum(np.percentile(x64, 100 - p, axis=(1, 2), keepdims=True), 0)
        hi = np.maximum(np.percentile(x64, p, axis=(1, 2), keepdims=True), 0)
        assert np.allclose(scale, (hi - lo) / 255, rtol=1e-6)
        below, above = x64 < lo, x64 > hi
        z = stored["uniform_4x128x256.zero_point"].astype(np.float64)
        floor, top = -z * scale, (255 - z) * scale
    clipped = below | above
    assert 0 < clipped.sum() < x.size * 0.01
    assert row["clipped_fraction"] == clipped.sum() / x.size
    err = np.abs(x64 - x_hat)
    step = np.broadcast_to(scale, x.shape)
    assert np.all(err[~clipped] <= step[~clipped] * (0.5 + 1e-5))
    # clipped elements saturate at the extreme levels
    assert np.allclose(x_hat[below], np.broadcast_to(floor, x.shape)[below], rtol=1e-6)
    assert np.allclose(x_hat[above], np.broadcast_to(top, x.shape)[above], rtol=1e-6)
    err_unclipped = np.mean(err[~clipped] ** 2)
    assert row["mse_unclipped"] == pytest.approx(err_unclipped, rel=1e-6)


@pytest.mark.parametrize(("scale_dtype", "rel"), [("float16", 2.0**-11), ("bfloat16", 2.0**-8)])
@pytest.mark.parametrize("scheme", ["absmax", "zeropoint"])
def test_low_precision_scales(tmp_path, scheme, scale_dtype, rel):
    """Codes use the float32 scale, then the scale is rounded: the error grows by at most
    |q - z| times the rounding of the scale."""
    q = tmp_path / "q.safetensors"
    ok(
        "compress",
        TRANSFORMER,
        "-o",
        q,
        "--scheme",
        scheme,
        "--scale-dtype",
        scale_dtype,
        "--granularity",
        "group",
        "--group-size",
        "48",
        "--quiet",
    )
    stored, meta = read_safetensors(q)
    ok("decompress", q, "-o", tmp_path / "r.safetensors", "--quiet")
    restored = read_safetensors(tmp_path / "r.safetensors")[0]
    original = read_safetensors(TRANSFORMER)[0]
    levels = 255 if scheme == "zeropoint" else 127
    for name, spec in quantized_specs(meta).items():
        scale = stored[name + ".scale"]
        assert scale.dtype == ST_DTYPES["F16" if scale_dtype == "float16" else "BF16"]
        s = expand_scale(scale, spec, original[name].shape).astype(np.float64)
        err = np.abs(original[name].astype(np.float64) - restored[name])
        bound = s * (0.5 + rel) + levels * s * rel + 1e-6 * s
        assert np.all(err <= bound), name


# -- more refusals ----------------------------------------------------------------------------


def test_json_never_shares_stdout_with_the_output(tmp_path):
    w = io.BytesIO()
    np.save(w, np.ones((4, 4), np.float32))
    # stdin input writes to stdout by default
    assert_fails(run("compress", "-", "--json", input=w.getvalue()), 2, "--json")
    q = tmp_path / "q.safetensors"
    ok("compress", TRANSFORMER, "-o", q, "--quiet")
    assert_fails(run("decompress", q, "-o", "-", "--json"), 2, "--json")
    assert_fails(run("decompress", "-", "--json", input=q.read_bytes()), 2, "--json")


def test_stdout_is_all_or_nothing(tmp_path):
    """A failure in the last tensor leaves nothing on stdout (not half a file)."""
    bad = np.ones((40, 40), np.float32)
    bad[-1, -1] = np.nan
    buf = io.BytesIO()
    np.savez(buf, good=np.ones((40, 40), np.float32), bad=bad)
    result = run("compress", "-", "--quiet", input=buf.getvalue())
    assert result.exit_code == 1 and result.stdout_bytes == b""
    assert result.stderr.startswith("Error: 1 non-finite values")

    # bfloat16 cannot go into an .npz: refused before anything is written
    src = tmp_path / "m.npz"
    np.savez(src, kept=np.ones(3000, np.float32), w=np.ones((40, 40), np.float32))
    q = tmp_path / "q.safetensors"
    ok("compress", src, "-o", q, "--quiet")
    result = run("decompress", q, "-o", "-", "--dtype", "bfloat16")
    assert result.stdout_bytes == b""
    assert_fails(result, 2, "bfloat16", "w", "--dtype float32")
    assert_fails(run("decompress", q, "-o", tmp_path / "r.npz", "--dtype", "bfloat16"), 2)
    assert not (tmp_path / "r.npz").exists()
    ok("decompress", q, "-o", tmp_path / "r.npz", "--dtype", "float16", "--quiet")
    assert read_any(tmp_path / "r.npz")["w"].dtype == np.float16


def test_output_format_refusals(tmp_path):
    q = tmp_path / "q.safetensors"
    ok("compress", TRANSFORMER, "-o", q, "--quiet")
    assert_fails(run("decompress", q, "-o", tmp_path / "r.npy"), 2, "20 tensors", ".npy")
    # kept bf16 tensors cannot be converted: --dtype is no way out for them
    qb = tmp_path / "qb.safetensors"
    ok("compress", TRANSFORMER_BF16, "-o", qb, "--quiet")
    line = assert_fails(run("decompress", qb, "-o", tmp_path / "r.npz", "--dtype", "float32"), 2)
    assert "bfloat16" in line and "--dtype" not in line.split(":", 2)[2]
    assert_fails(
        run("compress", TRANSFORMER, "-o", tmp_path / "no" / "q.safetensors"),
        1,
        "missing output folder",
    )
    assert sorted(tmp_path.iterdir()) == [q, qb]


def test_name_clash_is_refused(tmp_path):
    from safetensors.numpy import save_file

    src = tmp_path / "clash.safetensors"
    save_file(
        {"w": np.ones((40, 40), np.float32), "w.scale": np.ones((40, 40), np.float32)}, str(src)
    )
    line = assert_fails(run("compress", src, "-o", tmp_path / "q.safetensors"), 2, "name clash")
    assert "quantizing w produces 'w.scale'" in line and "--exclude 'w'" in line
    # the hint works: with w kept, nothing is named twice (a pattern also matches the tensors of
    # the module it names, so w.scale, a tensor of module w, is kept too)
    ok("compress", src, "-o", tmp_path / "q.safetensors", "--exclude", "w", "--quiet")
    assert set(read_safetensors(tmp_path / "q.safetensors")[0]) == {"w", "w.scale"}


def test_sharded_output_refusals(tmp_path):
    index = make_sharded(tmp_path / "ckpt", n_shards=2)
    assert_fails(run("compress", index, "-o", "-"), 2, "sharded", "-o FOLDER")
    ok("compress", index, "-o", tmp_path / "out", "--quiet")
    assert_fails(run("decompress", tmp_path / "out", "-o", "-"), 2, "sharded", "-o FOLDER")
    (tmp_path / "afile").write_text("x")
    assert_fails(run("compress", index, "-o", tmp_path / "afile", "--force"), 1, "not a folder")
    assert (tmp_path / "afile").read_text() == "x"


def test_folder_input_never_overwrites_the_file_in_it(tmp_path):
    (tmp_path / "one").mkdir()
    src = tmp_path / "one" / "model.safetensors"
    shutil.copy(TRANSFORMER, src)
    before = src.read_bytes()
    assert_fails(run("compress", tmp_path / "one", "-o", src, "--force"), 2, "output is the input")
    assert src.read_bytes() == before
    ok("compress", tmp_path / "one", "--quiet")
    assert (tmp_path / "one.absmax-int8.safetensors").is_file()


def test_compress_table_with_mixed_specs(tmp_path):
    result = ok(
        "compress",
        TRANSFORMER,
        "-o",
        tmp_path / "q.safetensors",
        "--include",
        "model.norm.weight",
        "--include",
        "lm_head.*",
    )
    lines = result.stderr.splitlines()
    assert "(absmax" not in result.stderr.split("tensor ", 1)[0]  # no common spec in the title
    header = next(line for line in lines if line.startswith("tensor "))
    assert header.split()[:4] == ["tensor", "shape", "dtype", "spec"]
    assert any("absmax i8 t" in line for line in lines)
    assert any("absmax i8 ch" in line for line in lines)
    assert "2 quantized, 18 kept" in result.stderr


def test_inspect_stdin_and_sharded(tmp_path):
    w = io.BytesIO()
    np.save(w, np.ones((3, 5), np.float16))
    report = json.loads(ok("inspect", "-", "--json", input=w.getvalue()).stdout)
    assert report["format"] == "npy" and report["file"] == "<stdin>"
    assert report["tensors"] == [
        {"tensor": "tensor", "dtype": "float16", "shape": [3, 5], "bytes": 30, "spec": None}
    ]
    index = make_sharded(tmp_path / "ckpt", n_shards=3)
    report = json.loads(ok("inspect", index, "--json").stdout)
    assert report["format"] == "sharded safetensors (3 shards)"
    assert len(report["tensors"]) == 20
    ok("compress", index, "-o", tmp_path / "out", "--quiet")
    report = json.loads(ok("inspect", tmp_path / "out", "--json").stdout)
    assert report["quantized"] is True and len(report["tensors"]) == 20
    assert sum(t["spec"] is not None for t in report["tensors"]) == 14


def test_default_outputs_from_the_current_folder(tmp_path, monkeypatch):
    """``quant compress .`` inside a checkpoint folder, or with the index's bare file name."""
    make_sharded(tmp_path / "ckpt", n_shards=2)
    monkeypatch.chdir(tmp_path / "ckpt")
    ok("compress", ".", "--quiet")
    assert (tmp_path / "ckpt.absmax-int8" / "model.safetensors.index.json").is_file()
    ok("compress", "model.safetensors.index.json", "--bits", "4", "--quiet")
    assert (tmp_path / "ckpt.absmax-int4" / "model.safetensors.index.json").is_file()
    monkeypatch.chdir(tmp_path / "ckpt.absmax-int8")
    ok("decompress", ".", "--quiet")
    assert (tmp_path / "ckpt.absmax-int8.restored" / "model.safetensors.index.json").is_file()

    (tmp_path / "one").mkdir()
    shutil.copy(TRANSFORMER, tmp_path / "one" / "model.safetensors")
    monkeypatch.chdir(tmp_path / "one")
    ok("compress", ".", "--quiet")
    assert (tmp_path / "one.absmax-int8.safetensors").is_file()


# -- the output's name chooses the container ------------------------------------------------


@pytest.mark.parametrize("name", ["out.npz", "out.bin", "out.pt", "out"])
def test_compress_refuses_an_output_its_name_does_not_describe(tmp_path, name):
    """quant compress writes quant's safetensors or GGUF: any other name is refused, with the
    choices and a name that works, and nothing is written."""
    line = assert_fails(
        run("compress", TRANSFORMER, "-o", tmp_path / name, "--quiet"), 2, f"-o {tmp_path / name}"
    )
    assert ".safetensors (quant's format)" in line and ".gguf" in line and "ending in /" in line
    assert f"-o {tmp_path / 'out.safetensors'}" in line
    assert list(tmp_path.iterdir()) == []


def test_compress_into_a_folder_named_with_a_slash(tmp_path):
    """-o dir/ puts the default file name in that folder, making the folder if missing; the
    file is the one -o with the full path writes."""
    ok("compress", TRANSFORMER, "-o", f"{tmp_path / 'new'}/", "--quiet")
    ok("compress", TRANSFORMER, "-o", tmp_path / "direct.safetensors", "--quiet")
    made = tmp_path / "new" / "transformer.absmax-int8.safetensors"
    assert [p.name for p in (tmp_path / "new").iterdir()] == [made.name]
    assert made.read_bytes() == (tmp_path / "direct.safetensors").read_bytes()
    # an existing folder: the file goes in beside what is there; a second run needs --force
    ok("compress", TRANSFORMER, "-o", f"{tmp_path / 'new'}/", "--bits", "4", "--quiet")
    assert (tmp_path / "new" / "transformer.absmax-int4.safetensors").exists()
    assert_fails(run("compress", TRANSFORMER, "-o", f"{tmp_path / 'new'}/"), 2, "output exists")


def test_a_failed_compress_leaves_no_folder(tmp_path):
    """The folder of -o dir/ appears with its file or not at all."""
    bad = tmp_path / "nan.npy"
    np.save(bad, np.full((4, 256), np.nan, np.float32))
    result = run("compress", bad, "-o", f"{tmp_path / 'made'}/", "--quiet")
    assert result.exit_code != 0
    assert not (tmp_path / "made").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.npy"]


def test_sharded_output_takes_a_folder_name(tmp_path):
    index = make_sharded(tmp_path / "ckpt")
    assert_fails(
        run("compress", index, "-o", tmp_path / "q.safetensors", "--quiet"),
        2,
        "folder output",
        f"-o {tmp_path / 'q'}/",
    )
    assert not (tmp_path / "q.safetensors").exists()
    ok("compress", index, "-o", f"{tmp_path / 'q'}/", "--quiet")
    assert (tmp_path / "q" / "model.safetensors.index.json").exists()


def test_decompress_output_names(tmp_path):
    q = tmp_path / "q.safetensors"
    ok("compress", TRANSFORMER, "-o", q, "--quiet")
    line = assert_fails(run("decompress", q, "-o", tmp_path / "r.bin"), 2, "extension .bin")
    assert ".safetensors" in line and ".npz" in line and ".npy" in line
    ok("decompress", q, "-o", tmp_path / "r.npz", "--quiet")
    ok("decompress", q, "-o", f"{tmp_path / 'restored'}/", "--quiet")
    with np.load(tmp_path / "r.npz") as npz:
        from_npz = {k: npz[k] for k in npz.files if npz[k].dtype.kind == "f"}
    from safetensors.numpy import load_file

    restored = load_file(tmp_path / "restored" / "q.restored.safetensors")
    assert from_npz and all(same_bytes(a, restored[k]) for k, a in from_npz.items())
    assert not (tmp_path / "r.bin").exists()
