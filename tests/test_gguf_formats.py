"""quant formats: every scheme, ggml type and llama-quantize mix, with bits per weight."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from quantcli.cli import app
from quantcli.core.ggml import GGML_TYPES
from quantcli.core.schemes import SCHEMES


def ok(*args):
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "120", "NO_COLOR": "1"})
    assert result.exit_code == 0, (result.exit_code, result.stderr, result.exception)
    return result


# Llama-3-8B file sizes in GiB as llama-quantize lists them (tools/quantize/quantize.cpp)
LLAMA3_8B_GIB = {
    "Q4_0": 4.34, "Q4_1": 4.78, "Q5_0": 5.21, "Q5_1": 5.65, "Q2_K": 2.96, "Q3_K_S": 3.41,
    "Q3_K_M": 3.74, "Q3_K_L": 4.03, "Q4_K_S": 4.37, "Q4_K_M": 4.58, "Q5_K_S": 5.21,
    "Q5_K_M": 5.33, "Q6_K": 6.14, "Q8_0": 7.96,
}  # fmt: skip
LLAMA3_8B_PARAMS = 8_030_261_248


def test_formats_lists_everything():
    result = ok("formats", "--json")
    assert result.stderr == ""
    entries = json.loads(result.stdout)["formats"]
    by_kind: dict[str, dict] = {}
    for e in entries:
        by_kind.setdefault(e["kind"], {})[e["name"]] = e
    assert set(by_kind["scheme"]) == set(SCHEMES)
    assert set(by_kind["ggml type"]) == set(GGML_TYPES)
    for name, t in GGML_TYPES.items():
        e = by_kind["ggml type"][name]
        assert e["bits_per_weight"] == t.block_bytes * 8 / t.block_size
        assert e["block"] == t.block_size and e["loads"] == "llama.cpp"
    # nf4: 4-bit codes plus a float32 scale per 64; nvfp4: an E4M3 scale per 16
    assert by_kind["scheme"]["nf4"]["bits_per_weight"] == 4 + 32 / 64
    assert by_kind["scheme"]["nvfp4"]["bits_per_weight"] == 4 + 8 / 16
    assert by_kind["scheme"]["zeropoint"]["bits_per_weight"] == 8 + (32 + 8) / 128
    # a mix's bits per weight on Llama-3-8B give the file sizes llama-quantize quotes, within
    # the metadata (a 128K-token vocabulary and its merges, about 0.01 GiB) and the rounding
    # to 0.01 GiB; a rule off by one bit for every ffn_down would move it by 0.22 GiB
    for name, gib in LLAMA3_8B_GIB.items():
        e = by_kind["mix"][name]
        size = e["bits_per_weight"] * LLAMA3_8B_PARAMS / 8 / 2**30
        assert abs(gib - size) <= 0.02, (name, size, gib)
    table = ok("formats")
    for title in ("quant schemes", "ggml types", "llama-quantize mixes"):
        assert title in table.stdout
    assert "Q4_K_M" in table.stdout and "nvfp4" in table.stdout
