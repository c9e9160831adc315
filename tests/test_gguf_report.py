"""quant report --type (ggml types side by side, per tensor) and quant report --against a
quantized GGUF, checked against gguf's own quantizer and dequantizer."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from test_gguf_compress import (
    FFN,
    assert_fails,
    expected_type,
    llama_tensors,
    ok,
    run,
    write_model,
)
from test_gguf_read import STORED, dequantized, originals, write_f16, write_quantized

from quantcli.core.ggml import GGML_TYPES


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("report") / "tiny-f16.gguf", llama_tensors())


def test_report_types_per_tensor(model):
    result = ok(
        "report", model, "--type", "Q4_0", "--type", "Q4_K", "--type", "Q4_K_M",
        "--per-tensor", "--format", "json",
    )  # fmt: skip
    assert result.stderr == ""
    report = json.loads(result.stdout)
    arrays = llama_tensors()
    rows = {(r["tensor"], r["label"]): r for r in report["results"]}
    measured = {name for name, _ in rows}
    assert measured == {n for n, x in arrays.items() if x.ndim == 2}
    assert {k["tensor"] for k in report["kept"]} == {n for n, x in arrays.items() if x.ndim == 1}
    for (name, label), row in rows.items():
        x = arrays[name]
        assert row["type"] == expected_type(name, x.shape, label, None), (name, label)
        if row["type"] == "Q4_0":  # gguf's own NumPy Q4_0: an independent reference
            qtype = gguf.GGMLQuantizationType.Q4_0
            raw = gguf.quants.quantize(x.astype(np.float32), qtype)
            x_hat = gguf.quants.dequantize(raw, qtype)
            err = x_hat.astype(np.float64) - x.astype(np.float64)
            assert row["mse"] == pytest.approx(float(np.mean(err**2)), rel=1e-9)
        t = GGML_TYPES[row["type"]]
        assert row["bits_per_weight"] == t.bits_per_weight
    # a fallback is named on its row
    down = rows[("blk.1.ffn_down.weight", "Q4_K")]
    assert (down["type"], down["fallback_from"]) == ("Q5_0", "Q4_K") and FFN % 256
    summary = {r["label"]: r for r in report["summary"]}
    for label, s in summary.items():
        mine = [r for (_, lab), r in rows.items() if lab == label]
        assert s["tensors"] == len(mine)
        bits = 8 * sum(r["bytes"] for r in mine) / sum(r["elements"] for r in mine)
        assert s["bits_per_weight"] == pytest.approx(bits)
    table = ok("report", model, "--type", "Q4_0", "--type", "Q6_K", "--per-tensor")
    assert table.stderr == ""
    lines = [x for x in table.stdout.splitlines() if x.startswith("blk.0.ffn_down.weight")]
    assert len(lines) == 2 and "Q6_K -> Q8_0 fallback" in lines[1]


def test_report_types_with_and_without_search(model):
    doc = json.loads(
        ok(
            "report", model, "--type", "Q4_K", "--type", "Q5_0",
            "--search", "none", "--search", "mse", "--per-tensor", "--format", "json",
        ).stdout
    )  # fmt: skip
    summary = {r["label"]: r for r in doc["summary"]}
    assert list(summary) == ["Q4_K", "Q4_K mse", "Q5_0", "Q5_0 mse"]
    assert [r["search"] for r in summary.values()] == ["none", "mse", "none", "mse"]
    for kind in ("Q4_K", "Q5_0"):
        assert summary[f"{kind} mse"]["mse"] < summary[kind]["mse"]
        assert summary[f"{kind} mse"]["bytes"] == summary[kind]["bytes"]
    # each searched row is the error of what compress --search mse writes
    x = llama_tensors()["blk.0.attn_q.weight"].astype(np.float32)
    rows = {(r["tensor"], r["label"]): r for r in doc["results"]}
    codec = GGML_TYPES["Q4_K"]
    x_hat = codec.decode(codec.encode(x, search="mse"), x.shape[1])
    want = float(np.mean((x_hat.astype(np.float64) - x) ** 2))
    assert rows[("blk.0.attn_q.weight", "Q4_K mse")]["mse"] == pytest.approx(want, rel=1e-9)
    table = ok("report", model, "--type", "Q4_K", "--search", "none", "--search", "mse")
    assert "Q4_K mse" in table.stdout


def test_report_type_usage_errors(model, tmp_path):
    assert_fails(run("report", model, "--type", "Q4_0", "--search", "hqq"), 2, "--search hqq")
    assert_fails(run("report", model, "--type", "Q4_0", "--scheme", "absmax"), 2, "--scheme")
    assert_fails(run("report", model, "--type", "Q4_0", "--against", model), 2, "--against")
    assert_fails(run("report", model, "--type", "Q9_9"), 2, "'Q9_9'")
    assert_fails(run("report", model, "--pure"), 2, "--pure")


def test_report_against(tmp_path):
    quantized = write_quantized(tmp_path / "model-q.gguf")
    f16 = write_f16(tmp_path / "f16.gguf")
    result = ok("report", f16, "--against", quantized, "--per-tensor", "--format", "json")
    assert result.stderr == ""
    report = json.loads(result.stdout)
    want = dequantized(quantized)
    rows = {r["tensor"]: r for r in report["results"]}
    assert set(rows) == set(STORED)
    for name, kind in STORED.items():
        x = originals()[name].astype(np.float64)
        err = want[name].astype(np.float64) - x
        assert rows[name]["type"] == kind
        assert rows[name]["mse"] == pytest.approx(float(np.mean(err**2)), rel=1e-9)
        sqnr = 10 * np.log10(np.sum(x**2) / np.sum(err**2))
        assert rows[name]["sqnr_db"] == pytest.approx(sqnr, rel=1e-9)
    summary = {r["ggml_type"]: r for r in report["summary"]}
    assert set(summary) == set(STORED.values()) and all(r["tensors"] == 1 for r in summary.values())
    assert report["kept"] == [
        {"tensor": "blk.0.attn_norm.weight", "reason": "kept: F32 in both files"}
    ]
    table = ok("report", f16, "--against", quantized, "--per-tensor")
    assert "Q4_K" in table.stdout and "blk.0.attn_q.weight" in table.stdout


def test_report_against_type_without_decoder(tmp_path):
    path = write_quantized(tmp_path / "iq.gguf", iq_tensor=True)
    f16 = write_f16(tmp_path / "f16.gguf")
    assert_fails(run("report", f16, "--against", path), 1, "IQ4_NL", "'blk.0.ffn_up.weight'")
