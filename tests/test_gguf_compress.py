"""GGUF in, GGUF out: quant compress --type on a small llama-layout GGUF written by the gguf
package, the output read back by gguf's own reader.

Expected types are derived here from the rules as docs/GGUF.md writes them (llama.cpp's
src/llama-quant.cpp), not from quant's implementation; decoded values are compared with
gguf.quants.dequantize, and encoded bytes with quant's ggml encoders (themselves checked
against llama.cpp's C reference in test_ggml_*). Stdout, stderr and exit codes are checked
separately.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from cli_runner import assert_fails, cli

from quantcli.core.ggml import GGML_TYPES

N_LAYER, DIM, FFN, VOCAB, N_HEAD, N_HEAD_KV = 8, 256, 288, 64, 8, 2
LAYER_TENSORS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


run, ok = cli(160)


def llama_tensors(reverse_layers: bool = False) -> dict[str, np.ndarray]:
    """A llama layout: token_embd, per layer attention and FFN weights and norms,
    output_norm, output; ffn_down's rows (FFN = 288) are not a multiple of 256."""
    r = np.random.default_rng(7)
    out = {"token_embd.weight": r.normal(0, 1, (VOCAB, DIM)).astype(np.float16)}
    layers = range(N_LAYER - 1, -1, -1) if reverse_layers else range(N_LAYER)
    for i in layers:
        p = f"blk.{i}."
        out[p + "attn_norm.weight"] = r.normal(1, 0.1, DIM).astype(np.float32)
        for name in LAYER_TENSORS:
            rows = DIM // (N_HEAD // N_HEAD_KV) if name in ("attn_k", "attn_v") else DIM
            shape = {"ffn_down": (DIM, FFN), "ffn_gate": (FFN, DIM), "ffn_up": (FFN, DIM)}.get(
                name, (rows, DIM)
            )
            out[p + name + ".weight"] = r.normal(0, 0.05, shape).astype(np.float16)
        out[p + "ffn_norm.weight"] = r.normal(1, 0.1, DIM).astype(np.float32)
    out["output_norm.weight"] = r.normal(1, 0.1, DIM).astype(np.float32)
    out["output.weight"] = r.normal(0, 0.05, (VOCAB, DIM)).astype(np.float32)
    return out


def write_model(path: Path, arrays: dict[str, np.ndarray], alignment: int | None = None) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_block_count(N_LAYER)
    writer.add_embedding_length(DIM)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_float32("llama.rope.freq_base", 500000.0)
    writer.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(VOCAB)])
    writer.add_array("tokenizer.ggml.scores", [float(i) for i in range(VOCAB)])
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    for name, array in arrays.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# -- the rules, as docs/GGUF.md states them ------------------------------------------------


def more_bits(layer: int, n_layer: int = N_LAYER) -> bool:
    """First and last eighth of the layers, and every third layer in between."""
    eighth = n_layer // 8
    return layer < eighth or layer >= n_layer - eighth or (layer - eighth) % 3 == 2


def fit(wanted: str, row: int) -> str:
    """llama.cpp's fallback when the row is not a multiple of the block."""
    blocks = {"Q2_K": 256, "Q3_K": 256, "Q4_K": 256, "Q5_K": 256, "Q6_K": 256}
    if row % blocks.get(wanted, 32) == 0:
        return wanted
    fallback = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
    return fallback[wanted] if row % 32 == 0 else "F16"


def expected_type(name: str, shape: tuple[int, ...], mix: str, kept: str) -> str:
    """The type docs/GGUF.md's rules give tensor ``name`` under ``mix`` in this model
    (untied output, n_gqa = 4, not 70B, no experts)."""
    if len(shape) < 2 or name.endswith("_norm.weight"):
        return kept
    row = shape[-1]
    base = {"Q4_K_M": "Q4_K", "Q3_K_M": "Q3_K", "Q2_K": "Q2_K", "Q4_0": "Q4_0", "Q4_1": "Q4_1"}
    wanted = base.get(mix, mix)
    if mix in ("Q4_K", "Q5_K"):  # a type, not a mix: every quantizable tensor
        return fit(wanted, row)
    if name == "output.weight":
        return fit("Q6_K", row)
    layer = int(name.split(".")[1]) if name.startswith("blk.") else -1
    if "attn_v" in name:
        wanted = {
            "Q4_K_M": "Q6_K" if more_bits(layer) else "Q4_K",
            "Q3_K_M": "Q5_K" if layer < 2 else "Q4_K",
            "Q2_K": "Q4_K",  # n_gqa >= 4
        }.get(mix, wanted)
    elif "ffn_down" in name:
        wanted = {
            "Q4_K_M": "Q6_K" if more_bits(layer) else "Q4_K",
            "Q3_K_M": "Q4_K",  # layer < n_layer / 16 never holds with 8 layers
            "Q2_K": "Q3_K",
        }.get(mix, wanted)
    elif "attn_output" in name:
        wanted = {"Q3_K_M": "Q4_K", "Q2_K": "Q3_K"}.get(mix, wanted)
    return fit(wanted, row)


FTYPES = {"Q4_K_M": 15, "Q3_K_M": 12, "Q2_K": 10, "Q4_0": 2, "Q4_1": 3, "Q4_K": 15, "Q5_K": 17}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("gguf") / "tiny-f16.gguf", llama_tensors())


def fields_of(reader: gguf.GGUFReader) -> dict:
    return {
        name: field.contents()
        for name, field in reader.fields.items()
        if not name.startswith("GGUF.")
    }


def check_output(
    src: Path,
    out: Path,
    mix: str,
    table: dict | None = None,
    arrays: dict | None = None,
    search: str = "none",
) -> gguf.GGUFReader:
    """The output read back by gguf: metadata, order, types, bytes and decoded values."""
    before, after = gguf.GGUFReader(str(src)), gguf.GGUFReader(str(out))
    want_fields = fields_of(before)
    want_fields["general.quantization_version"] = 2
    want_fields["general.file_type"] = FTYPES[mix]
    assert fields_of(after) == want_fields
    assert after.fields["general.file_type"].types == [gguf.GGUFValueType.UINT32]
    assert after.alignment == before.alignment
    assert [t.name for t in after.tensors] == [t.name for t in before.tensors]
    arrays = arrays or llama_tensors()
    for t_in, t_out in zip(before.tensors, after.tensors):
        x = arrays[t_in.name]
        kept = t_in.tensor_type.name
        want = expected_type(t_in.name, x.shape, mix, kept)
        assert t_out.tensor_type.name == want, (t_in.name, t_out.tensor_type.name, want)
        assert tuple(int(d) for d in t_out.shape) == tuple(int(d) for d in t_in.shape)
        if want == kept:
            assert bytes(t_out.data) == bytes(t_in.data), t_in.name  # byte for byte
            continue
        if want == "F16":
            assert np.array_equal(t_out.data, x.astype(np.float16))
            continue
        codec = GGML_TYPES[want]
        raw = np.asarray(t_out.data).reshape(x.shape[0], -1)
        searched = search if search in codec.searches else "none"
        assert np.array_equal(raw, codec.encode(x.astype(np.float32), search=searched))
        ours = codec.decode(raw, x.shape[-1])
        theirs = gguf.quants.dequantize(t_out.data, t_out.tensor_type)
        assert np.array_equal(ours, theirs.reshape(ours.shape)), t_in.name
        if table is not None:  # the report's numbers are those of the file
            err = theirs.reshape(x.shape).astype(np.float64) - x.astype(np.float64)
            row = table[t_in.name]
            assert row["type"] == want and row["source_type"] == kept
            assert row["mse"] == pytest.approx(float(np.mean(err**2)), rel=1e-9)
            assert row["bytes_out"] == raw.nbytes
    return after


@pytest.mark.parametrize("mix", ["Q4_K_M", "Q3_K_M", "Q2_K", "Q4_0", "Q4_K"])
def test_compress_writes_what_llama_quantize_would(model, tmp_path, mix):
    out = tmp_path / f"tiny-{mix}.gguf"
    result = ok("compress", model, "-o", out, "--type", mix, "--json")
    assert result.stderr.startswith(f"{model} -> {out}")  # the table: on stderr
    report = json.loads(result.stdout)
    assert report["type"] == mix and report["file_type"] == FTYPES[mix]
    table = {row["tensor"]: row for row in report["tensors"]}
    check_output(model, out, mix, table)
    # the summary's bits per weight count the fallbacks as stored
    retyped = [r for r in report["tensors"] if r["retyped"]]
    bits = 8 * sum(r["bytes_out"] for r in retyped)
    weights = sum(int(np.prod(r["shape"])) for r in retyped)
    assert report["totals"]["bits_per_weight"] == pytest.approx(bits / weights)
    assert report["totals"]["bytes_out"] == sum(r["bytes_out"] for r in report["tensors"])


def test_search_none_writes_llama_quantizes_bytes(model, tmp_path):
    default, none = tmp_path / "default.gguf", tmp_path / "none.gguf"
    ok("compress", model, "-o", default, "--type", "Q4_K_M", "-q")
    result = ok("compress", model, "-o", none, "--type", "Q4_K_M", "--search", "none", "--json")
    assert json.loads(result.stdout)["search"] == "none"
    assert default.read_bytes() == none.read_bytes()
    check_output(model, none, "Q4_K_M")


# with their fallbacks and rules, these write every type that has a search
@pytest.mark.parametrize("mix", ["Q4_K_M", "Q3_K_M", "Q2_K", "Q4_0", "Q4_1", "Q5_K"])
def test_search_mse_writes_the_same_types_with_less_error(model, tmp_path, mix):
    ref, mse = tmp_path / "ref.gguf", tmp_path / "mse.gguf"
    ok("compress", model, "-o", ref, "--type", mix, "-q")
    result = ok("compress", model, "-o", mse, "--type", mix, "--search", "mse", "--json")
    what = f"{mix} (every quantizable tensor)" if mix == "Q5_K" else f"{mix} mix"
    assert f"{what}, search mse" in " ".join(result.stderr.split())  # the table's title
    report = json.loads(result.stdout)
    assert report["search"] == "mse" and report["file_type"] == FTYPES[mix]
    # the file: llama.cpp's types, read back by gguf, decoded to what the report says
    check_output(model, mse, mix, {r["tensor"]: r for r in report["tensors"]}, search="mse")
    # measured by quant report --against: less error than the reference's file, per type
    # and over all tensors, at the same size
    measured = {}
    for path in (ref, mse):
        doc = json.loads(ok("report", model, "--against", path, "--format", "json").stdout)
        measured[path] = {r["ggml_type"]: r for r in doc["summary"]}
    assert measured[ref].keys() == measured[mse].keys()
    for kind, row in measured[mse].items():
        assert row["bytes"] == measured[ref][kind]["bytes"]
        assert row["mse"] < measured[ref][kind]["mse"], kind
    assert ref.stat().st_size == mse.stat().st_size


def test_search_options_refused_with_gguf(model, tmp_path):
    out = tmp_path / "x.gguf"
    for search in ("wmse", "hqq"):
        assert_fails(
            run("compress", model, "-o", out, "--type", "Q4_0", "--search", search),
            2,
            f"--search {search}",
            "--search mse",
        )
    assert not out.exists()


def test_table_shows_types_and_fallbacks(model, tmp_path):
    out = tmp_path / "q.gguf"
    result = ok("compress", model, "-o", out, "--type", "Q4_K_M")
    assert result.stdout == ""
    # the table's rows: a name, then a shape (the summary under the table wraps)
    rows = {
        line.split()[0]: line
        for line in result.stderr.splitlines()
        if len(line.split()) > 1 and line.split()[1].startswith("(")
    }
    assert rows["blk.0.attn_v.weight"].split()[3] == "Q6_K"
    assert rows["blk.1.attn_v.weight"].split()[3] == "Q4_K"
    assert "Q8_0 (fallback)" in rows["blk.0.ffn_down.weight"]
    assert "Q5_0 (fallback)" in rows["blk.1.ffn_down.weight"]
    assert "F32 kept: 1-D" in rows["blk.0.attn_norm.weight"]
    assert rows["output.weight"].split()[3] == "Q6_K"
    assert "from F16 x 57, F32 x 1)" in " ".join(result.stderr.split())
    summary = " ".join(result.stderr.split())  # the summary wraps at the terminal's width
    assert "8 tensors fell back to another type" in summary
    assert "blk.0.ffn_down.weight Q6_K -> Q8_0" in summary
    assert "blk.1.ffn_down.weight Q4_K -> Q5_0" in summary
    assert "SQNR" in result.stderr
    # sizes in two columns, never "64K>17K"; the summary says how much smaller
    assert len(rows) == 75 and not [line for line in rows.values() if ">" in line]
    assert "MiB -> " in result.stderr and "x smaller)" in result.stderr


def test_order_and_alignment_carried_over(tmp_path):
    # layers written last to first: the counters follow the layer numbers, the file order stays
    arrays = llama_tensors(reverse_layers=True)
    src = write_model(tmp_path / "rev.gguf", arrays, alignment=64)
    out = tmp_path / "rev-q.gguf"
    ok("compress", src, "-o", out, "--type", "Q4_K_M", "-q")
    check_output(src, out, "Q4_K_M", arrays=arrays)
    assert gguf.GGUFReader(str(out)).alignment == 64


def test_default_output_name_and_stdout(model, tmp_path):
    copy = tmp_path / "m-f16.gguf"
    copy.write_bytes(model.read_bytes())
    ok("compress", copy, "--type", "q4_0", "-q")  # names are case-insensitive
    check_output(copy, tmp_path / "m-f16.Q4_0.gguf", "Q4_0")
    piped = ok("compress", "-", "-o", "-", "--type", "Q4_0", "-q", input=model.read_bytes())
    assert piped.stdout_bytes == (tmp_path / "m-f16.Q4_0.gguf").read_bytes()
    assert piped.stderr == ""


def test_fallback_to_f16_and_no_fallback(tmp_path):
    arrays = {
        "token_embd.weight": np.ones((8, 256), np.float16),
        "blk.0.attn_q.weight": np.random.default_rng(1).normal(0, 1, (16, 100)).astype(np.float32),
    }
    src = write_model(tmp_path / "odd.gguf", arrays)
    out = tmp_path / "odd-q.gguf"
    result = ok("compress", src, "-o", out, "--type", "Q4_K", "--json")
    row = next(
        r for r in json.loads(result.stdout)["tensors"] if r["tensor"].endswith("attn_q.weight")
    )
    assert (row["type"], row["fallback_from"]) == ("F16", "Q4_K")
    tensor = next(t for t in gguf.GGUFReader(str(out)).tensors if t.name == "blk.0.attn_q.weight")
    assert tensor.tensor_type == gguf.GGMLQuantizationType.F16
    assert np.array_equal(tensor.data, arrays["blk.0.attn_q.weight"].astype(np.float16))
    assert "F16 (fallback)" in result.stderr and "attn_q.weight Q4_K -> F16" in result.stderr

    refused = tmp_path / "refused.gguf"
    line = assert_fails(
        run("compress", src, "-o", refused, "--type", "Q4_K", "--no-fallback"),
        2,
        "blk.0.attn_q.weight",
        "row size (100)",
        "--no-fallback",
    )
    assert "--exclude" in line
    assert not refused.exists()
    # a legacy type's own block does not fit: F16, as llama.cpp writes it, shown as a
    # fallback; --no-fallback refuses it, and --exclude keeps the tensor as it is
    legacy = tmp_path / "legacy.gguf"
    result = ok("compress", src, "-o", legacy, "--type", "Q4_0", "--json", "-q")
    row = next(r for r in json.loads(result.stdout)["tensors"] if "attn_q" in r["tensor"])
    assert (row["type"], row["fallback_from"]) == ("F16", "Q4_0")
    stored = next(t for t in gguf.GGUFReader(str(legacy)).tensors if "attn_q" in t.name)
    assert stored.tensor_type == gguf.GGMLQuantizationType.F16
    assert_fails(
        run("compress", src, "-o", refused, "--type", "Q4_0", "--no-fallback"),
        2,
        "blk.0.attn_q.weight",
        "--no-fallback",
    )
    assert not refused.exists()
    ok("compress", src, "-o", refused, "--type", "Q4_0", "--exclude", "blk.0.attn_q*", "-q")
    kept = next(t for t in gguf.GGUFReader(str(refused)).tensors if "attn_q" in t.name)
    assert kept.tensor_type == gguf.GGMLQuantizationType.F32


def test_bad_inputs_are_one_line_errors(model, tmp_path):
    out = tmp_path / "out.gguf"
    # a quantized GGUF cannot be quantized again
    quantized = tmp_path / "q8.gguf"
    ok("compress", model, "-o", quantized, "--type", "Q8_0", "-q")
    assert_fails(
        run("compress", quantized, "-o", out, "--type", "Q4_K_M"),
        1,
        "already quantized",
        "Q8_0",
        "F16 GGUF",
    )
    # safetensors in, GGUF out: needs llama.cpp's converter first
    st = tmp_path / "model.safetensors"
    import safetensors.numpy

    safetensors.numpy.save_file({"w": np.ones((4, 32), np.float32)}, str(st))
    assert_fails(
        run("compress", st, "-o", out, "--type", "Q4_0"), 1, "not a GGUF file", "convert_hf_to_gguf"
    )
    assert_fails(run("compress", model, "-o", out, "--type", "Q4_X"), 2, "'Q4_X'", "Q4_K_M")
    assert_fails(run("compress", model, "-o", out), 2, "--type")
    assert_fails(run("compress", model, "-o", out, "--type", "Q4_0", "--bits", "4"), 2, "--bits")
    # the spec options of quant's own formats are refused, never ignored
    for option, value in (("--block-size", "64"), ("--super-block", "4"), ("--scale-dtype", "k6")):
        line = assert_fails(
            run("compress", model, "-o", out, "--type", "Q4_K", option, value), 2, option
        )
        assert "with a GGUF output" in line
    assert_fails(
        run("compress", model, "-o", tmp_path / "x.safetensors", "--type", "Q4_0"), 2, "*.gguf"
    )
    assert_fails(run("compress", model, "-o", tmp_path / "x.st", "--pure"), 2, "--pure")
    assert not out.exists() and not (tmp_path / "x.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "q8.gguf"]


def test_pure_mix_name(model, tmp_path):
    out = tmp_path / "pure.gguf"
    ok("compress", model, "-o", out, "--type", "Q4_0", "--pure", "-q")
    for t in gguf.GGUFReader(str(out)).tensors:
        if len(t.shape) >= 2 and not t.name.endswith("_norm.weight"):
            assert t.tensor_type == gguf.GGMLQuantizationType.Q4_0, t.name  # output too
