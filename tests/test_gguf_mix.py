"""Per-tensor types in a GGUF output: --rule PATTERN=TYPE and the budgets --target-bpw and
--max-size on quant compress --type (docs/MIX.md, "GGUF outputs").

The model is the small llama layout of test_gguf_compress; the outputs are read back by
gguf's own reader and decoded with gguf.quants.dequantize, so the types, sizes and errors
checked here are those a llama.cpp loader sees.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import gguf
import numpy as np
import pytest
from test_gguf_compress import assert_fails, llama_tensors, ok, run, write_model

from quantcli.core.ggml import FALLBACK_TYPES, GGML_TYPES
from quantcli.core.ggml.mixes import use_more_bits


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("gguf") / "tiny-f16.gguf", llama_tensors())


def types_of(path: Path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}


def squared_errors(path: Path) -> dict[str, float]:
    """Each re-typed tensor's sum of squared errors, decoded by gguf from the file."""
    arrays = llama_tensors()
    out = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        x = arrays[t.name]
        if t.tensor_type.name == {"float16": "F16", "float32": "F32"}[str(x.dtype)]:
            continue  # kept as it was
        y = gguf.quants.dequantize(t.data, t.tensor_type).reshape(x.shape).astype(np.float64)
        out[t.name] = float(np.sum((y - x.astype(np.float64)) ** 2))
    return out


def quantized_bits(path: Path) -> tuple[int, int]:
    """(stored bits, weights) over the tensors llama-quantize quantizes (2-D, not norms)."""
    bits = weights = 0
    for t in gguf.GGUFReader(str(path)).tensors:
        if len(t.shape) < 2 or "norm" in t.name:
            continue
        bits += 8 * int(t.n_bytes)
        weights += int(np.prod(t.shape))
    return bits, weights


# -- rules ---------------------------------------------------------------------------------


def test_rules_give_their_types_and_leave_the_rest_to_the_mix(model, tmp_path):
    plain, ruled = tmp_path / "plain.gguf", tmp_path / "ruled.gguf"
    ok("compress", model, "-o", plain, "--type", "Q4_K_M", "-q")
    result = ok(
        "compress", model, "-o", ruled, "--type", "Q4_K_M", "--json", "-q",
        "--rule", "blk.*.attn_q.weight=q8_0",  # case-insensitive type names
        "--rule", "re:blk\\.[0-3]\\.attn_.*=Q5_K",  # attn_q of 0-3 is decided by the first
        "--rule", "token_embd=keep",
    )  # fmt: skip
    before, after = types_of(plain), types_of(ruled)
    n_layer = sum(".attn_v." in name for name in after)
    for name, kind in after.items():
        if ".attn_q." in name:
            want = "Q8_0"
        elif name.startswith(("blk.0.attn_", "blk.1.attn_", "blk.2.attn_", "blk.3.attn_")):
            want = before[name] if "norm" in name else "Q5_K"
        elif name == "token_embd.weight":
            want = "F16"
        elif ".attn_v." in name:
            # as llama.cpp's --tensor-type: the four attn_v the rules name do not count, so
            # layer L is the (L - 4)-th attn_v of Q4_K_M's use_more_bits rule
            layer = int(name.split(".")[1])
            want = "Q6_K" if use_more_bits(layer - 4, n_layer) else "Q4_K"
        else:
            want = before[name]  # the mix's choice
        assert kind == want, (name, kind, want)
    # and the shift shows: some attn_v of layers 4 and up differ from the plain mix's
    later = [n for n in after if ".attn_v." in n and int(n.split(".")[1]) >= 4]
    assert any(before[n] != after[n] for n in later)
    src = {t.name: t for t in gguf.GGUFReader(str(model)).tensors}
    kept = next(t for t in gguf.GGUFReader(str(ruled)).tensors if t.name == "token_embd.weight")
    assert bytes(kept.data) == bytes(src["token_embd.weight"].data)
    rows = {r["tensor"]: r for r in json.loads(result.stdout)["tensors"]}
    assert rows["blk.5.attn_q.weight"]["chosen_by"] == "--rule 'blk.*.attn_q.weight=q8_0'"
    assert rows["blk.5.attn_k.weight"]["chosen_by"] == "mix"
    assert rows["token_embd.weight"]["reason"] == "kept: --rule 'token_embd=keep'"


def test_a_ruled_tensor_does_not_advance_the_mix_counters(model, tmp_path):
    """llama.cpp (0c1e57098) skips its mix rules, counters included, for a tensor that a
    --tensor-type pattern names: with blk.0's ffn_down named, layer L's ffn_down gets what
    layer L - 1's gets in the plain mix (checked against llama-quantize, docs/GGUF.md)."""
    plain, ruled = tmp_path / "plain.gguf", tmp_path / "ruled.gguf"
    ok("compress", model, "-o", plain, "--type", "Q4_K_M", "-q")
    rule = ("--rule", "blk.0.ffn_down.weight=Q8_0")
    ok("compress", model, "-o", ruled, "--type", "Q4_K_M", *rule, "-q")
    before, after = types_of(plain), types_of(ruled)
    layers = sum(".ffn_down." in name for name in after)
    assert after["blk.0.ffn_down.weight"] == "Q8_0"
    for layer in range(1, layers):
        name = f"blk.{layer}.ffn_down.weight"
        assert after[name] == before[f"blk.{layer - 1}.ffn_down.weight"], name
    assert any(after[f"blk.{i}.ffn_down.weight"] != before[f"blk.{i}.ffn_down.weight"]
               for i in range(1, layers))  # fmt: skip
    others = [n for n in after if ".ffn_down." not in n]
    assert all(after[n] == before[n] for n in others)


def test_rule_errors_are_one_line(model, tmp_path):
    out = tmp_path / "x.gguf"
    cases = [
        (("--rule", "blk.*.attn_qq.weight=Q8_0"), "no tensor named by --rule"),
        (("--rule", "*attn_norm*=Q8_0"), "names only tensors the output keeps"),
        (("--rule", "*attn_q*=Q8_0", "--rule", "blk.0.attn_q.weight=Q6_K"), "earlier rule"),
        (("--rule", "*attn_q*=Q9_K"), "unknown ggml type 'Q9_K'"),
        (("--rule", "*attn_q*"), "expected PATTERN=TYPE"),
    ]
    for args, fragment in cases:
        assert_fails(run("compress", model, "-o", out, "--type", "Q4_K_M", *args), 2, fragment)
    assert not out.exists()


# -- budgets -------------------------------------------------------------------------------


def test_a_budget_beats_the_q4_k_m_rules_at_their_size(model, tmp_path):
    """At the bits per weight of Q4_K_M's own file, the budget's types have less total
    squared error (measured on what gguf decodes) and no more bits."""
    mix, budget = tmp_path / "q4km.gguf", tmp_path / "budget.gguf"
    ok("compress", model, "-o", mix, "--type", "Q4_K_M", "-q")
    bits, weights = quantized_bits(mix)
    target = math.floor(bits / weights * 1e4) / 1e4
    result = ok("compress", model, "-o", budget, "--type", "Q4_K_M", "--json", "-q",
                "--target-bpw", str(target))  # fmt: skip
    got_bits, got_weights = quantized_bits(budget)
    assert got_weights == weights
    assert got_bits <= target * weights
    assert got_bits / weights >= target - 0.01  # the budget is spent
    ours, theirs = squared_errors(budget), squared_errors(mix)
    assert sum(ours.values()) < 0.5 * sum(theirs.values()), (ours, theirs)
    report = json.loads(result.stdout)
    assert report["budget"]["bits_per_weight"] == pytest.approx(got_bits / weights)
    rows = {r["tensor"]: r for r in report["tensors"]}
    for name, sse in ours.items():  # the report's errors are those of the file
        n = math.prod(rows[name]["shape"])
        assert rows[name]["mse"] * n == pytest.approx(sse, rel=1e-9), name
        assert rows[name]["chosen_by"] == "budget"


def test_budget_with_rules_max_size_and_candidates(model, tmp_path):
    out = tmp_path / "b.gguf"
    ok("compress", model, "-o", out, "--type", "Q4_K_M", "-q", "--max-size", "1.5MiB",
       "--rule", "output=Q8_0", "--candidate", "Q3_K", "--candidate", "Q5_K")  # fmt: skip
    types = types_of(out)
    assert types["output.weight"] == "Q8_0"
    total = sum(int(t.n_bytes) for t in gguf.GGUFReader(str(out)).tensors)
    assert total <= 1.5 * 2**20
    # K-quant candidates or their fallbacks (ffn_down rows of 288): nothing else
    allowed = {"Q3_K", "Q5_K", "Q4_0", "Q5_0", "Q5_1", "Q8_0", "F16", "F32"}
    assert set(types.values()) <= allowed, types


def test_dry_run_prints_the_plan_and_writes_nothing(model, tmp_path):
    out = tmp_path / "never.gguf"
    result = ok("compress", model, "-o", out, "--type", "Q4_K_M", "--target-bpw", "5",
                "--dry-run", "--json")  # fmt: skip
    report = json.loads(result.stdout)
    assert report["budget"]["bits_per_weight"] <= 5
    assert not out.exists() and list(tmp_path.iterdir()) == []
    table = ok("compress", model, "-o", out, "--type", "Q4_K_M", "--target-bpw", "5",
               "--dry-run", "-q")  # fmt: skip
    assert table.stdout.startswith(f"plan for {model}") and "budget: " in table.stdout


def test_budget_errors(model, tmp_path):
    out = tmp_path / "x.gguf"
    line = assert_fails(
        run("compress", model, "-o", out, "--type", "Q4_K_M", "--target-bpw", "1"),
        2,
        "unreachable budget (--target-bpw 1)",
    )

    def least_bytes(shape) -> int:
        """The smallest default candidate after llama.cpp's fallbacks, or kept in F16."""
        sizes = [2 * math.prod(shape)]
        for kind in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"):
            if shape[-1] % GGML_TYPES[kind].block_size:
                kind = FALLBACK_TYPES[kind]
            sizes.append(GGML_TYPES[kind].row_bytes(shape[-1]) * (math.prod(shape) // shape[-1]))
        return min(sizes)

    smallest = sum(least_bytes(a.shape) for a in llama_tensors().values() if a.ndim == 2)
    assert f"take {smallest} bytes" in line
    for args, fragment in [
        (("--min-sqnr", "20"), "--min-sqnr with a GGUF output"),
        (("--candidate", "Q4_K"), "--candidate without a budget"),
        (("--target-bpw", "5", "--candidate", "Q4_X"), "unknown ggml type 'Q4_X'"),
    ]:
        assert_fails(run("compress", model, "-o", out, "--type", "Q4_K_M", *args), 2, fragment)
    assert not out.exists()


def test_report_applies_rules_to_ggml_types(model, tmp_path):
    """quant report --type with --rule measures each type with the rules on top, and its
    numbers are those of the file compress writes with the same rules."""
    rule = "blk.*.attn_q.weight=Q8_0"
    result = ok("report", model, "--type", "Q4_K_M", "--rule", rule, "--per-tensor",
                "--format", "json")  # fmt: skip
    rows = {r["tensor"]: r for r in json.loads(result.stdout)["results"]}
    assert {rows[f"blk.{i}.attn_q.weight"]["type"] for i in range(8)} == {"Q8_0"}
    out = tmp_path / "ruled.gguf"
    ok("compress", model, "-o", out, "--type", "Q4_K_M", "--rule", rule, "-q")
    assert {name: row["type"] for name, row in rows.items()} == {
        name: kind for name, kind in types_of(out).items() if name in rows
    }
    errors = squared_errors(out)
    for name, row in rows.items():
        n = math.prod(llama_tensors()[name].shape)
        assert row["mse"] * n == pytest.approx(errors[name], rel=1e-9), name
    assert_fails(run("report", model, "--type", "Q4_K_M", "--rule", "*nope*=Q8_0"), 2, "no tensor")


def test_a_tensor_no_candidate_fits_is_one_line(model, tmp_path):
    """ffn_down's rows of 288 fit no K-quant block, and --no-fallback forbids the fallback."""
    out = tmp_path / "x.gguf"
    line = assert_fails(
        run("compress", model, "-o", out, "--type", "Q4_K", "--no-fallback", "--target-bpw",
            "5", "--candidate", "Q4_K", "--candidate", "Q6_K"),
        2,
        "no candidate type fits tensor blk.0.ffn_down.weight",
    )  # fmt: skip
    assert "--no-fallback" in line and "--candidate keep" in line
    assert not out.exists()
