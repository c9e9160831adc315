"""Plan files (--plan-out, --plan) and --dry-run: the JSON round trip, hand edits, the errors
of a plan that does not fit the file, and what goes to stdout and stderr.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_cli_files import (
    TRANSFORMER,
    TRANSFORMER_KEPT,
    TRANSFORMER_QUANTIZED,
    _build_the_command_once,  # noqa: F401  (fixture: the command built once)
    assert_fails,
    ok,
    quantized_specs,
    read_safetensors,
    run,
)

from quantcli.core.spec import QuantSpec
from quantcli.ops.plan import PLAN_FORMAT, dump_plan, load_plan, make_budget
from quantcli.ops.plan import Plan as PlanObject
from quantcli.select import Selector

BUDGET = ["--target-bpw", "4.4", "--scheme", "zeropoint", "--granularity", "group",
          "--group-size", "32", "--scale-dtype", "float16"]  # fmt: skip


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """A budget plan of the sample transformer, written with --plan-out next to the file."""
    folder = tmp_path_factory.mktemp("plan")
    plan = folder / "plan.json"
    out = folder / "budget.safetensors"
    ok("compress", TRANSFORMER, "-o", out, "-q", *BUDGET, "--plan-out", plan)
    return plan, out


def test_plan_file_records_every_planned_tensor(planned):
    plan, _ = planned
    doc = json.loads(plan.read_text())
    assert doc["format"] == PLAN_FORMAT and doc["version"] == 1
    assert doc["target"] == {"bits_per_weight": 4.4, "max_size": None, "min_sqnr_db": None}
    names = [t["tensor"] for t in doc["tensors"]]
    assert set(names) == TRANSFORMER_QUANTIZED
    total_bytes = sum(t["bytes"] for t in doc["tensors"])
    elements = sum(int(np.prod(t["shape"])) for t in doc["tensors"])
    assert doc["totals"]["bytes"] == total_bytes and doc["totals"]["elements"] == elements
    assert doc["totals"]["bits_per_weight"] == 8 * total_bytes / elements <= 4.4
    for t in doc["tensors"]:
        assert t["why"] == "budget" and t["bits_per_weight"] == 8 * t["bytes"] / np.prod(t["shape"])
        assert t["spec"] == "keep" or QuantSpec(**t["spec"]).short_label() == t["label"]
    # one line per tensor: the file reads and diffs line by line
    lines = plan.read_text().splitlines()
    assert sum(line.lstrip().startswith('{"tensor": ') for line in lines) == len(names)


def test_plan_reproduces_the_file_byte_for_byte(planned, tmp_path):
    plan, out = planned
    again = tmp_path / "again.safetensors"
    # the plan holds full specs: the command's spec options do not change them
    ok("compress", TRANSFORMER, "-o", again, "-q", "--plan", plan, "--bits", "8")
    assert again.read_bytes() == out.read_bytes()


def test_a_hand_edited_plan(planned, tmp_path):
    plan, _ = planned
    doc = json.loads(plan.read_text())
    entries = {t["tensor"]: t for t in doc["tensors"]}
    entries["lm_head.weight"]["spec"] = "keep"
    entries["model.embed_tokens.weight"]["spec"] = "int8"
    entries["model.layers.0.mlp.up_proj.weight"]["spec"] = "bits=6"  # over the command's spec
    # a tensor left out of the plan gets the command's spec
    doc["tensors"] = [
        t for t in doc["tensors"] if t["tensor"] != "model.layers.1.mlp.up_proj.weight"
    ]
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(doc))
    out = tmp_path / "edited.safetensors"
    ok("compress", TRANSFORMER, "-o", out, "-q", "--plan", edited, "--scheme", "zeropoint",
       "--bits", "3", "--granularity", "group", "--group-size", "16")  # fmt: skip
    arrays, meta = read_safetensors(out)
    specs = quantized_specs(meta)
    assert "lm_head.weight" not in specs and arrays["lm_head.weight"].dtype == np.float32

    def got(name):
        spec = specs[name]
        return spec["scheme"], spec["bits"], spec["granularity"], spec["group_size"]

    assert got("model.embed_tokens.weight")[:3] == ("absmax", 8, "channel")
    assert got("model.layers.0.mlp.up_proj.weight") == ("zeropoint", 6, "group", 16)
    assert got("model.layers.1.mlp.up_proj.weight") == ("zeropoint", 3, "group", 16)


def test_load_plan_round_trip(tmp_path):
    from quantcli.ops.compress import plan_compress

    base = {"scheme": "absmax", "bits": 4, "granularity": "group", "group_size": 64}
    plan = PlanObject(Selector(QuantSpec(**base)), base=base)
    result = plan_compress(str(TRANSFORMER), plan, make_budget(target_bpw=5.0))
    assigned, shapes = load_plan(dump_plan(result), "p.json", base)
    assert {n: a.spec for n, a in assigned.items()} == {
        t.name: t.chosen.spec for t in result.tensors
    }
    assert shapes == {t.name: tuple(t.info.shape) for t in result.tensors}


def edit(planned, tmp_path, change) -> str:
    doc = json.loads(planned[0].read_text())
    change(doc)
    path = tmp_path / "bad.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(path)


def _set(index, key, value):
    def change(doc):
        doc["tensors"][index][key] = value

    return change


PLAN_ERRORS = [
    (_set(0, "tensor", "no.such.weight"), "unknown tensor 'no.such.weight' in "),
    (_set(0, "spec", {"scheme": "absmax", "bits": 9}), "bits 9 in tensor lm_head.weight of "),
    (_set(0, "spec", {"bitz": 4}), "unknown spec key 'bitz' in tensor lm_head.weight"),
    (_set(0, "spec", "int9"), "unknown spec 'int9' in tensor lm_head.weight"),
    (_set(0, "spec", 4), "bad spec 4 in tensor lm_head.weight"),
    (_set(0, "shape", [64, 256]), "tensor lm_head.weight in "),
    (
        lambda doc: doc["tensors"][0].update(tensor="model.norm.weight", shape=None),
        "keeps it (kept: 1-D); remove it from the plan, or name it with --include",
    ),
    (lambda doc: doc.update(version=7), "unknown plan version 7 in "),
    (lambda doc: doc.update(format="other"), 'no "format": "quant-plan" in it'),
    (lambda doc: doc.update(tensors={}), '"tensors" is not a list'),
    (lambda doc: doc["tensors"].append(doc["tensors"][0]), "tensor lm_head.weight twice in "),
]


@pytest.mark.parametrize("change, fragment", PLAN_ERRORS)
def test_a_plan_that_does_not_fit_the_file(planned, tmp_path, change, fragment):
    path = edit(planned, tmp_path, change)
    out = tmp_path / "out.safetensors"
    line = assert_fails(run("compress", TRANSFORMER, "-o", out, "--plan", path), 2, fragment)
    assert path in line
    assert not out.exists()


def test_plan_file_not_json_or_missing(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert_fails(run("compress", TRANSFORMER, "--plan", bad), 2, f"bad plan file {bad}: not JSON")
    missing = tmp_path / "missing.json"
    assert_fails(
        run("compress", TRANSFORMER, "--plan", missing), 1, f"cannot read plan file {missing}"
    )


def test_plan_excludes_rules_and_budgets(planned):
    plan, _ = planned
    assert_fails(run("compress", TRANSFORMER, "--plan", plan, "--rule", "*=int8"), 2,
                 "--rule with --plan")  # fmt: skip
    assert_fails(run("compress", TRANSFORMER, "--plan", plan, "--target-bpw", "4"), 2,
                 "--target-bpw with --plan")  # fmt: skip


def test_plan_out_never_replaces_a_file_without_force(planned, tmp_path):
    plan, _ = planned
    args = ("compress", TRANSFORMER, "--dry-run", "--target-bpw", "5", "--plan-out", plan)
    assert_fails(run(*args), 2, "exists")
    assert_fails(run("compress", TRANSFORMER, "--dry-run", "--plan-out", TRANSFORMER, "--force"), 2)
    assert TRANSFORMER.read_bytes()[:8]  # the input is untouched (and still there)
    same = plan.parent / "same.safetensors"
    line = assert_fails(run("compress", TRANSFORMER, "-o", same, "--plan-out", same), 2)
    assert "is the output in quant compress" in line and not same.exists()


# -- --dry-run -----------------------------------------------------------------------------


def test_dry_run_prints_the_plan_on_stdout_and_writes_nothing(tmp_path):
    from typer.testing import CliRunner

    from quantcli.cli import app

    out = tmp_path / "never.safetensors"
    args = ["compress", str(TRANSFORMER), "-o", str(out), "--dry-run", *BUDGET]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "150", "NO_COLOR": "1"})
    assert result.exit_code == 0 and result.stderr == ""
    assert not out.exists() and list(tmp_path.iterdir()) == []
    lines = result.stdout.splitlines()
    assert lines[0] == f"plan for {TRANSFORMER}"
    rows = [line for line in lines if line.split() and line.split()[0] in TRANSFORMER_QUANTIZED]
    assert len(rows) == len(TRANSFORMER_QUANTIZED)
    assert all(row.split()[-1] == "budget" for row in rows)
    assert any(line.startswith("budget: at most 4.4 bits per weight") for line in lines)
    assert f"{len(TRANSFORMER_KEPT)} tensors outside the plan" in result.stdout


def test_dry_run_json_equals_the_plan_file(planned):
    plan, _ = planned
    result = ok("compress", TRANSFORMER, "--dry-run", "--json", *BUDGET)
    assert result.stderr == ""
    assert json.loads(result.stdout) == json.loads(plan.read_text())


def test_dry_run_of_rules_and_of_a_plan(planned):
    plan, _ = planned
    result = ok("compress", TRANSFORMER, "--dry-run", "--json", "--rule", "lm_head=keep",
                "--rule", "*embed*=int8")  # fmt: skip
    doc = json.loads(result.stdout)
    rows = {t["tensor"]: t for t in doc["tensors"]}
    assert (
        rows["lm_head.weight"]["spec"] == "keep"
        and rows["lm_head.weight"]["why"] == "--rule lm_head=keep"
    )
    assert rows["model.embed_tokens.weight"]["label"] == "absmax i8 ch"
    assert rows["model.layers.0.mlp.up_proj.weight"]["why"] == "default"
    assert doc["target"] == {"bits_per_weight": None, "max_size": None, "min_sqnr_db": None}
    # a plan file's dry run measures its specs again: the same numbers
    again = json.loads(ok("compress", TRANSFORMER, "--dry-run", "--json", "--plan", plan).stdout)
    before = json.loads(plan.read_text())
    for a, b in zip(again["tensors"], before["tensors"]):
        assert (a["tensor"], a["spec"], a["bytes"]) == (b["tensor"], b["spec"], b["bytes"])
        assert a["sum_sq_error"] == b["sum_sq_error"]
        assert a["why"] == str(plan)


def test_dry_run_error_exit_codes(tmp_path):
    result = run("compress", TRANSFORMER, "--dry-run", "--target-bpw", "1")
    assert_fails(result, 2, "unreachable")
    result = run("compress", tmp_path / "missing.safetensors", "--dry-run")
    assert result.exit_code == 1 and result.stdout == ""
