"""GGUF files through the CLI: quant inspect / report / compress / decompress.

The inputs are written by llama.cpp's gguf package; the outputs are read with the
safetensors library. Stdout, stderr and the exit code are checked separately.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy as st_numpy
from cli_runner import assert_fails, cli

from quantcli.select import natural_key

run, ok = cli(100)


def tensors() -> dict[str, np.ndarray]:
    r = np.random.default_rng(3)
    return {
        "token_embd.weight": r.normal(0, 1, (40, 64)).astype(np.float16),
        "blk.0.attn_q.weight": r.normal(0, 0.5, (64, 64)).astype(np.float32),
        "blk.0.ffn_up.weight": r.normal(0, 2, (96, 64)).astype(ml_dtypes.bfloat16),
        "blk.0.attn_norm.weight": r.normal(1, 0.1, 64).astype(np.float32),
    }


def write_gguf(path: Path, arrays: dict[str, np.ndarray], quantized: bool = False) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(500)])
    for name, array in arrays.items():
        if array.dtype == ml_dtypes.bfloat16:
            writer.add_tensor(name, array.view(np.uint16), raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            writer.add_tensor(name, array)
    if quantized:
        x = np.random.default_rng(4).normal(0, 1, (8, 64)).astype(np.float32)
        q8 = gguf.GGMLQuantizationType.Q8_0
        writer.add_tensor("blk.0.attn_v.weight", gguf.quants.quantize(x, q8), raw_dtype=q8)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def model(tmp_path) -> Path:
    return write_gguf(tmp_path / "model.gguf", tensors())


def test_inspect_table(model):
    result = ok("inspect", model)
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == f"{model}: gguf"
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:] if line.strip()}
    assert rows["token_embd.weight"][:3] == ["F16", "(40,", "64)"]  # ggml types
    assert rows["blk.0.ffn_up.weight"][:3] == ["BF16", "(96,", "64)"]  # NumPy order
    assert rows["blk.0.attn_norm.weight"][:2] == ["F32", "(64,)"]
    # the metadata, one "key: value" line each under the table (the first few; --json all)
    shown = [line.strip() for line in lines]
    assert "general.architecture: llama" in shown
    assert "llama.block_count: 1" in shown
    assert "tokenizer.ggml.tokens: [500 string values]" in shown or any(
        line.startswith("... ") and "more" in line for line in shown
    )


def test_inspect_json(model):
    report = json.loads(ok("inspect", model, "--json").stdout)
    assert report["format"] == "gguf" and report["quantized"] is False
    assert report["metadata"]["general.architecture"] == "llama"
    got = {t["tensor"]: (t["dtype"], t["shape"], t["bytes"]) for t in report["tensors"]}
    want = {n: (str(a.dtype), list(a.shape), a.nbytes) for n, a in tensors().items()}
    assert got == want
    # natural name order, as every table and JSON of quant lists tensors
    assert [t["tensor"] for t in report["tensors"]] == sorted(tensors(), key=natural_key)


def test_compress_to_safetensors_and_back(model, tmp_path):
    out = tmp_path / "out.safetensors"
    result = ok("compress", model, "-o", out)
    assert result.stdout == ""
    assert "blk.0.attn_q.weight" in result.stderr and "kept: 1-D" in result.stderr
    stored = st_numpy.load_file(out)
    with open(out, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    meta = header["__metadata__"]
    assert meta["quant.source_format"] == "gguf"
    assert json.loads(meta["quant.source_metadata"])["general.architecture"] == "llama"
    originals = tensors()
    # absmax 8-bit per channel (the defaults): x_hat = codes * scale, within half a step
    for name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.0.ffn_up.weight"):
        x = originals[name].astype(np.float32)
        codes, scale = stored[name], stored[name + ".scale"]
        assert codes.dtype == np.int8 and codes.shape == x.shape and scale.shape == (len(x), 1)
        assert np.allclose(scale[:, 0], np.abs(x).max(axis=1) / 127, rtol=1e-6)
        # half a step, plus float32 rounding of codes * scale (|codes| <= 127)
        assert np.all(np.abs(codes * scale - x) <= scale * (0.5 + 127 * 2**-23))
    kept = originals["blk.0.attn_norm.weight"]
    assert stored["blk.0.attn_norm.weight"].tobytes() == kept.tobytes()

    # decompress defaults to safetensors for a GGUF source, beside its input
    restored = ok("decompress", out)
    assert restored.stdout == "" and "(safetensors)" in restored.stderr
    default = tmp_path / "out.restored.safetensors"
    with open(default, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    for name, array in originals.items():
        dtype = {"float16": "F16", "float32": "F32", "bfloat16": "BF16"}[str(array.dtype)]
        assert header[name]["dtype"] == dtype and header[name]["shape"] == list(array.shape)
    assert header["__metadata__"]["general.architecture"] == "llama"


def test_report(model):
    result = ok("report", model, "--format", "json")
    assert result.stderr == ""
    report = json.loads(result.stdout)
    tensors_seen = {row["tensor"] for row in report["results"]}
    assert tensors_seen == {"token_embd.weight", "blk.0.attn_q.weight", "blk.0.ffn_up.weight"}
    table = ok("report", model)
    assert "absmax i8 ch" in table.stdout and table.stderr == ""


def test_stdin(model, tmp_path):
    data = model.read_bytes()
    result = ok("inspect", "-", input=data)
    assert result.stdout.splitlines()[0] == "<stdin>: gguf"
    out = tmp_path / "q.safetensors"
    compressed = ok("compress", "-", "-o", out, input=data)
    assert compressed.stdout == ""
    assert set(st_numpy.load_file(out)) >= set(tensors())


def test_quantized_gguf(tmp_path):
    path = write_gguf(tmp_path / "q8.gguf", tensors(), quantized=True)
    table = ok("inspect", path).stdout
    row = next(line for line in table.splitlines() if line.startswith("blk.0.attn_v.weight"))
    assert row.split()[1:4] == ["Q8_0", "(8,", "64)"]  # its type and shape, 8.5 bits/w
    # report measures the float tensors and keeps the quantized one
    report = json.loads(ok("report", path, "--format", "json").stdout)
    assert "blk.0.attn_v.weight" not in {row["tensor"] for row in report["results"]}
    # compress cannot copy Q8_0 blocks into its output: a one-line error, no output
    out = tmp_path / "out.safetensors"
    line = assert_fails(
        run("compress", path, "-o", out), 1, str(path), "'blk.0.attn_v.weight'", "Q8_0"
    )
    assert "F16" in line  # what to use instead
    assert not out.exists()


def test_damaged_gguf(model, tmp_path):
    data = bytearray(model.read_bytes())
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(bytes(data[:-100]))
    assert_fails(run("inspect", cut), 1, str(cut), "truncated data", "blk.0.attn_norm.weight")
    big = tmp_path / "big-endian.gguf"
    big.write_bytes(bytes(data[:4]) + (3).to_bytes(4, "big") + bytes(data[8:]))
    assert_fails(run("compress", big, "-o", tmp_path / "x.safetensors"), 1, "big-endian GGUF")
    assert not (tmp_path / "x.safetensors").exists()
