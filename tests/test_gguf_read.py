"""Quantized GGUF in: quant inspect, quant decompress (to GGUF, safetensors, npz) and
quant report --against, on files the gguf package writes (legacy types quantized by gguf's
own NumPy reference, K-quants by quant's encoders), decoded values checked against
gguf.quants.dequantize."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import safetensors.numpy as st_numpy
from cli_runner import assert_fails, cli

from quantcli.core.ggml import GGML_TYPES
from quantcli.io.gguf_file import DecodedGGUF, GGUFReader

Q = gguf.GGMLQuantizationType


run, ok = cli(160)


def originals() -> dict[str, np.ndarray]:
    r = np.random.default_rng(11)
    return {
        "token_embd.weight": r.normal(0, 1, (16, 256)).astype(np.float16),
        "blk.0.attn_q.weight": r.normal(0, 0.1, (32, 256)).astype(np.float32),
        "blk.0.attn_k.weight": r.normal(0, 0.1, (8, 64)).astype(np.float32),
        "blk.0.attn_v.weight": r.normal(0, 0.1, (8, 64)).astype(np.float32),
        "blk.0.ffn_down.weight": r.normal(0, 0.1, (2, 4, 256)).astype(np.float32),  # 3-D
        "blk.0.attn_norm.weight": r.normal(1, 0.1, 256).astype(np.float32),
    }


# the type each tensor is stored in, and who encodes it
STORED = {
    "token_embd.weight": "Q6_K",
    "blk.0.attn_q.weight": "Q4_K",
    "blk.0.attn_k.weight": "Q8_0",
    "blk.0.attn_v.weight": "Q5_1",
    "blk.0.ffn_down.weight": "MXFP4",
}


def write_quantized(path: Path, iq_tensor: bool = False) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    for name, x in originals().items():
        kind = STORED.get(name)
        if kind is None:
            writer.add_tensor(name, x)
            continue
        qtype = Q[kind]
        x32 = x.astype(np.float32)
        if GGML_TYPES[kind].block_size == 256:  # gguf only dequantizes K-quants
            raw = GGML_TYPES[kind].encode(x32)
        else:
            raw = gguf.quants.quantize(x32, qtype)
        writer.add_tensor(name, raw, raw_dtype=qtype)
    if iq_tensor:
        raw = np.random.default_rng(0).integers(0, 255, (4, 18), dtype=np.uint8)
        writer.add_tensor("blk.0.ffn_up.weight", raw, raw_dtype=Q.IQ4_NL)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_f16(path: Path) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    for name, x in originals().items():
        writer.add_tensor(name, x)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def dequantized(path: Path) -> dict[str, np.ndarray]:
    """What gguf's own reader and dequantizer make of every tensor (float32, NumPy shapes)."""
    out = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        out[t.name] = np.asarray(values, np.float32).reshape(originals()[t.name].shape)
    return out


@pytest.fixture
def quantized(tmp_path) -> Path:
    return write_quantized(tmp_path / "model-q.gguf")


def test_reader_decodes_as_gguf_does(quantized):
    want = dequantized(quantized)
    with GGUFReader(quantized) as reader:
        view = DecodedGGUF(reader)
        infos = {i.name: i for i in view.infos()}
        for name, x in originals().items():
            assert infos[name].shape == x.shape
            got = view.read(name)
            if name in STORED:
                assert infos[name].dtype == np.float32
                assert got.dtype == np.float32 and np.array_equal(got, want[name]), name
                assert np.array_equal(reader.read_float32(name), want[name])
            else:
                assert got.tobytes() == x.tobytes()


def test_inspect_shows_types_and_bits(quantized):
    result = ok("inspect", quantized)
    assert result.stderr == ""
    rows = {
        line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[2:] if line.strip()
    }
    assert rows["blk.0.attn_q.weight"][:3] == ["Q4_K", "(32,", "256)"]
    assert rows["blk.0.attn_q.weight"][-1] == "4.5"
    assert rows["token_embd.weight"][0] == "Q6_K" and rows["token_embd.weight"][-1] == "6.562"
    assert rows["blk.0.ffn_down.weight"][:4] == ["MXFP4", "(2,", "4,", "256)"]
    data = json.loads(ok("inspect", quantized, "--json").stdout)
    by_name = {t["tensor"]: t for t in data["tensors"]}
    for name, kind in STORED.items():
        t = by_name[name]
        assert t["ggml_type"] == kind and t["shape"] == list(originals()[name].shape)
        assert t["bits_per_weight"] == GGML_TYPES[kind].bits_per_weight
        assert (
            t["bytes"]
            == originals()[name].size * GGML_TYPES[kind].block_bytes // GGML_TYPES[kind].block_size
        )
    assert data["quantized"] is True
    total = sum(t["bytes"] for t in data["tensors"])
    n = sum(x.size for x in originals().values())
    assert data["bits_per_weight"] == pytest.approx(8 * total / n)


def test_decompress_to_f32_gguf(quantized, tmp_path):
    out = tmp_path / "model-f32.gguf"
    result = ok("decompress", quantized, "-o", out)
    assert result.stdout == "" and "(gguf)" in result.stderr
    want = dequantized(quantized)
    before, after = gguf.GGUFReader(str(quantized)), gguf.GGUFReader(str(out))
    assert [t.name for t in after.tensors] == [t.name for t in before.tensors]
    for t_in, t_out in zip(before.tensors, after.tensors):
        if t_in.name in STORED:
            assert t_out.tensor_type == Q.F32
            values = np.asarray(t_out.data).reshape(want[t_in.name].shape)
            assert np.array_equal(values, want[t_in.name])
        else:
            assert t_out.tensor_type == t_in.tensor_type
            assert bytes(t_out.data) == bytes(t_in.data)
    assert after.fields["general.file_type"].contents() == 0  # LLAMA_FTYPE_ALL_F32
    assert after.fields["general.architecture"].contents() == "llama"
    # --dtype float16 gives an F16 file
    f16 = tmp_path / "model-f16.gguf"
    ok("decompress", quantized, "-o", f16, "--dtype", "float16", "-q")
    reader = gguf.GGUFReader(str(f16))
    assert reader.fields["general.file_type"].contents() == 1
    q = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    assert q.tensor_type == Q.F16
    assert np.array_equal(q.data.reshape(32, 256), want["blk.0.attn_q.weight"].astype(np.float16))


def test_decompress_to_safetensors_and_npz(quantized, tmp_path):
    want = dequantized(quantized)
    st = tmp_path / "model.safetensors"
    ok("decompress", quantized, "-o", st, "-q")
    npz = tmp_path / "model.npz"
    ok("decompress", quantized, "-o", npz, "-q")
    for loaded in (st_numpy.load_file(str(st)), dict(np.load(npz))):
        assert sorted(loaded) == sorted(originals())
        for name, x in originals().items():
            expected = want[name] if name in STORED else x
            assert loaded[name].dtype == expected.dtype and np.array_equal(loaded[name], expected)
    default = ok("decompress", quantized)
    assert "model-q.restored.gguf" in default.stderr
    assert (tmp_path / "model-q.restored.gguf").exists()


def test_types_without_decoder_and_unquantized_files(tmp_path):
    path = write_quantized(tmp_path / "iq.gguf", iq_tensor=True)
    out = tmp_path / "out.gguf"
    assert_fails(run("decompress", path, "-o", out), 1, "'blk.0.ffn_up.weight'", "IQ4_NL")
    assert not out.exists()
    ok("inspect", path)  # listing needs no decoder
    f16 = write_f16(tmp_path / "f16.gguf")
    assert_fails(run("decompress", f16, "-o", out), 1, "not a quantized file")
    assert not out.exists()
