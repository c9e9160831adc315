"""Budgets: --target-bpw, --max-size, --min-sqnr (quantcli/ops/plan.py, docs/MIX.md).

The allocation is checked against a brute-force optimum on small cases; plans on files are
checked against what compress then writes (bytes read back from the file, errors recomputed
from the restored weights), and against every uniform spec of the same candidates.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from fractions import Fraction

import numpy as np
import pytest
from safetensors.numpy import save_file
from test_cli_files import (
    _build_the_command_once,  # noqa: F401  (fixture: the command built once)
    assert_fails,
    ok,
    read_safetensors,
    run,
)

from quantcli.core.spec import QuantSpec
from quantcli.errors import UsageError
from quantcli.ops.compress import compress, plan_compress
from quantcli.ops.decompress import decompress
from quantcli.ops.plan import (
    Budget,
    Plan,
    Unreachable,
    allocate,
    make_budget,
    parse_rule,
    parse_size,
    reallocate,
)
from quantcli.select import Selector

# -- the allocation against brute force ----------------------------------------------------


def brute_force(bits, errors, limit):
    best, best_choice = math.inf, None
    for choice in itertools.product(*[range(len(b)) for b in bits]):
        if sum(bits[i][k] for i, k in enumerate(choice)) <= limit:
            error = math.fsum(errors[i][k] for i, k in enumerate(choice))
            if error < best:
                best, best_choice = error, choice
    return best, best_choice


def random_case(rng: random.Random, items: int, options: int):
    """Items of mixed sizes, each with a few options: bits grow, error mostly falls as
    4^-bits (quantization-like), sometimes not (dominated options)."""
    bits, errors = [], []
    for _ in range(rng.randint(2, items)):
        size = rng.choice([16, 64, 100, 256, 1000, 4096])
        widths = sorted(rng.sample(range(1, 17), rng.randint(1, options)))
        bits.append([w * size + rng.randint(0, 40) for w in widths])
        e = [size * rng.uniform(0.1, 10) * 4.0**-w for w in widths]
        errors.append(sorted(e, reverse=True) if rng.random() < 0.7 else e)
    least, most = sum(min(b) for b in bits), sum(max(b) for b in bits)
    return bits, errors, rng.randint(least - 5, most)


@pytest.mark.parametrize("seed, items, options", [(1, 6, 5), (2, 7, 6), (3, 5, 9)])
def test_allocation_equals_the_brute_force_optimum(seed, items, options):
    rng = random.Random(seed)
    solved = 0
    for _ in range(150):
        bits, errors, limit = random_case(rng, items, options)
        best, _ = brute_force(bits, errors, limit)
        if best == math.inf:
            with pytest.raises(Unreachable) as exc:
                allocate(bits, errors, limit)
            assert exc.value.least == sum(min(b) for b in bits)
            continue
        choice = allocate(bits, errors, limit)
        assert sum(bits[i][k] for i, k in enumerate(choice)) <= limit
        assert math.fsum(errors[i][k] for i, k in enumerate(choice)) == pytest.approx(
            best, rel=1e-12, abs=1e-300
        )
        solved += 1
    assert solved > 100


def test_allocation_without_a_limit_takes_the_smallest_option_least_error_on_ties():
    bits = [[10, 10, 20], [5, 3]]
    errors = [[2.0, 1.0, 0.5], [0.0, 9.0]]
    assert allocate(bits, errors, None) == [1, 1]


def test_allocation_of_dominated_and_equal_options():
    # option 1 costs more and errs more than option 0: never chosen
    assert allocate([[10, 12, 30]], [[1.0, 2.0, 0.0]], 29) == [0]
    assert allocate([[10, 12, 30]], [[1.0, 2.0, 0.0]], 30) == [2]
    # a limit exactly on a sum is reachable
    assert allocate([[4, 8], [4, 8]], [[3.0, 0.0], [1.0, 0.0]], 12) == [1, 0]


def test_allocation_is_never_worse_than_a_start():
    rng = random.Random(7)
    for _ in range(100):
        bits, errors, limit = random_case(rng, 6, 5)
        start = [max(range(len(b)), key=lambda k, b=b: -b[k]) for b in bits]  # the smallest
        if sum(bits[i][k] for i, k in enumerate(start)) > limit:
            continue
        choice = allocate(bits, errors, limit, [start])
        assert math.fsum(errors[i][k] for i, k in enumerate(choice)) <= math.fsum(
            errors[i][k] for i, k in enumerate(start)
        )


# -- budgets on a file ---------------------------------------------------------------------

SHAPES = {
    "embed.weight": ((512, 128), 0.02, 8.0),
    "layers.0.q.weight": ((128, 128), 0.05, 3.0),
    "layers.0.v.weight": ((32, 128), 0.01, 6.0),
    "layers.0.up.weight": ((384, 128), 0.02, 5.0),
    "layers.0.down.weight": ((128, 384), 0.015, 3.0),
    "layers.1.q.weight": ((128, 128), 0.04, 3.0),
    "layers.1.v.weight": ((32, 128), 0.012, 6.0),
    "layers.1.up.weight": ((384, 128), 0.02, 5.0),
    "layers.1.down.weight": ((128, 384), 0.02, 3.0),
    "head.weight": ((512, 128), 0.03, 5.0),
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Student-t weights of different shapes and scales, with 1-D norms that stay kept."""
    rng = np.random.default_rng(42)
    tensors = {
        name: (rng.standard_t(df, shape) * std).astype(np.float32)
        for name, (shape, std, df) in SHAPES.items()
    }
    tensors["layers.0.norm.weight"] = np.ones(128, np.float32)
    tensors["layers.1.norm.weight"] = np.ones(128, np.float32)
    path = tmp_path_factory.mktemp("budget") / "w.safetensors"
    save_file(tensors, str(path))
    return path


ELEMENTS = sum(math.prod(shape) for shape, _, _ in SHAPES.values())
FAMILY = {"scheme": "zeropoint", "granularity": "group", "group_size": 32}


def plan_of(**spec) -> Plan:
    base = {**FAMILY, **spec}
    return Plan(Selector(QuantSpec(**base)), base=base)


@pytest.fixture(scope="module")
def measured(weights):
    """Every candidate (zeropoint g32 at 2..8 bits, keep) measured on every tensor once."""
    return plan_compress(str(weights), plan_of(), Budget(target_bpw=Fraction(8)))


def test_measurement_holds_every_candidate_with_exact_sizes(measured):
    assert [t.name for t in measured.tensors] == sorted(SHAPES)  # safetensors order
    for t in measured.tensors:
        assert [o.label for o in t.options] == [f"zp u{b} g32" for b in range(2, 9)] + ["keep"]
        rows, cols = t.info.shape
        for b, option in zip(range(2, 9), t.options):
            # codes packed per row, a float32 scale and a uint8 zero point per group of 32
            groups = rows * math.ceil(cols / 32)
            assert option.nbytes == rows * math.ceil(cols * b / 8) + groups * 5
        assert t.options[-1].nbytes == rows * cols * 4 and t.options[-1].stats.sum_sq_error == 0
    assert measured.kept == [
        ("layers.0.norm.weight", "kept: 1-D"),
        ("layers.1.norm.weight", "kept: 1-D"),
    ]


@pytest.mark.parametrize("target", [3.26, 3.75, 4.2, 4.75, 5.3, 6.01, 7.4, 9.0, 9.3, 20.0])
def test_bits_per_weight_never_above_the_target(measured, target):
    result = reallocate(measured, make_budget(target_bpw=target))
    assert result.bits_per_weight <= target
    # exactly: the stored bits of the plan over its weights
    assert Fraction(result.nbytes * 8, result.elements) <= Fraction(repr(target))
    assert result.elements == ELEMENTS
    if target < 9.25:  # below 8 bits everywhere (9.25 with the scales) the plan fills it
        assert target - result.bits_per_weight < 0.1  # 10 tensors: coarse steps


@pytest.mark.parametrize("bits", range(2, 9))
def test_never_worse_than_the_uniform_spec_of_the_same_bits(measured, bits):
    uniform_bytes = sum(t.options[bits - 2].nbytes for t in measured.tensors)
    uniform_error = math.fsum(t.options[bits - 2].stats.sum_sq_error for t in measured.tensors)
    target = Fraction(uniform_bytes * 8, ELEMENTS)
    result = reallocate(measured, Budget(target_bpw=target))
    assert result.nbytes <= uniform_bytes
    assert result.stats.sum_sq_error <= uniform_error
    if 2 < bits < 8:  # the tensors differ in scale and tails: a mix is strictly better
        assert result.stats.sum_sq_error < 0.98 * uniform_error


def test_unreachable_target_says_the_smallest_size(measured):
    least = sum(t.options[0].nbytes for t in measured.tensors)  # 2 bits everywhere
    with pytest.raises(UsageError) as exc:
        reallocate(measured, make_budget(target_bpw=2.0))
    message = str(exc.value)
    assert "target 2 bits per weight unreachable in" in message
    assert f"takes {8 * least / ELEMENTS:.4f} bits per weight" in message
    with pytest.raises(UsageError) as exc:
        reallocate(measured, make_budget(max_size="10KB"))
    assert f"stores {least + measured.kept_bytes} bytes of tensors" in str(exc.value)


def test_max_size_counts_every_tensor_stored(measured):
    limit = 300_000
    result = reallocate(measured, make_budget(max_size=str(limit)))
    assert result.total_bytes <= limit
    assert result.total_bytes == result.nbytes + 2 * 128 * 4
    assert limit - result.total_bytes < 2000
    both = reallocate(measured, make_budget(target_bpw=3.5, max_size=str(limit)))
    assert both.bits_per_weight <= 3.5 and both.total_bytes <= limit


def test_min_sqnr_alone_is_the_smallest_plan_above_the_floor(measured):
    result = reallocate(measured, make_budget(min_sqnr=25.0))
    for t in result.tensors:
        assert t.chosen.stats.sqnr_db >= 25.0
        cheaper = [o for o in t.options if o.nbytes < t.chosen.nbytes]
        assert all(o.stats.sqnr_db < 25.0 for o in cheaper), t.name
    # with a size budget too, every tensor stays above the floor
    capped = reallocate(measured, make_budget(target_bpw=7.0, min_sqnr=25.0))
    assert all(t.chosen.stats.sqnr_db >= 25.0 for t in capped.tensors)
    assert capped.stats.sum_sq_error < result.stats.sum_sq_error


def test_relative_objective_weighs_each_tensor_by_its_own_scale(tmp_path):
    # the same draws, one tensor ten times larger: its squared errors are 100 times larger
    rng = np.random.default_rng(3)
    x = rng.standard_t(5, (256, 256)).astype(np.float32)
    path = tmp_path / "two.safetensors"
    save_file({"big": x * 0.1, "small": x * 0.01}, str(path))
    measured = plan_compress(str(path), plan_of(), Budget(target_bpw=Fraction(8)))
    bits = lambda r: {t.name: t.chosen.spec.bits for t in r.tensors}  # noqa: E731
    total = reallocate(measured, make_budget(target_bpw=5.25))  # 4 bits each on average
    relative = reallocate(measured, make_budget(target_bpw=5.25, objective="relative"))
    # a bit buys a hundred times more error on the big one
    assert bits(total)["big"] > bits(total)["small"]
    assert bits(relative) == {"big": 4, "small": 4}  # alike relative to their own scale
    # each minimises its own objective
    assert total.stats.sum_sq_error < relative.stats.sum_sq_error
    relative_of_total = reallocate(
        measured, make_budget(target_bpw=5.25, objective="relative")
    ).objective_value
    assert relative.objective_value == relative_of_total
    assert relative.objective_value < sum(
        t.elements * t.chosen.stats.sum_sq_error / t.chosen.stats.sum_sq_signal
        for t in total.tensors
    )


def test_importance_buys_a_tensor_more_bits(measured):
    plain = reallocate(measured, make_budget(target_bpw=4.0))
    weighted = reallocate(measured, make_budget(target_bpw=4.0, importance=["*v.weight=1000"]))
    for name in ("layers.0.v.weight", "layers.1.v.weight"):
        a = next(t for t in plain.tensors if t.name == name).chosen
        b = next(t for t in weighted.tensors if t.name == name).chosen
        assert b.nbytes > a.nbytes and b.stats.sum_sq_error < a.stats.sum_sq_error


def test_the_plan_is_what_compress_writes(weights, tmp_path):
    budget = make_budget(target_bpw=3.6)
    result = plan_compress(str(weights), plan_of(), budget)
    out = tmp_path / "mix.safetensors"
    written = compress(str(weights), str(out), result.plan)
    rows = {t.name: t for t in written.tensors}
    arrays, meta = read_safetensors(out)
    specs = json.loads(meta["quant.tensors"])
    restored = tmp_path / "restored.safetensors"
    decompress(str(out), str(restored), dtype="float32")
    original, back = read_safetensors(weights)[0], read_safetensors(restored)[0]
    for t in result.tensors:
        row = rows[t.name]
        if t.chosen.spec is None:
            assert not row.quantized and t.name not in specs
            continue
        assert specs[t.name]["bits"] == t.chosen.spec.bits
        stored = [n for n in arrays if n == t.name or n.startswith(t.name + ".")]
        assert sum(arrays[n].nbytes for n in stored) == t.chosen.nbytes == row.bytes_out
        error = np.sum((original[t.name].astype(np.float64) - back[t.name]) ** 2)
        assert t.chosen.stats.sum_sq_error == pytest.approx(error, rel=1e-9)
    assert written.totals.bytes_out == result.total_bytes


def test_a_rule_fixes_its_tensors_inside_the_budget(weights):
    plan = Plan(Selector(QuantSpec(**FAMILY)), [parse_rule("layers.0.v=keep")], FAMILY)
    result = plan_compress(str(weights), plan, make_budget(target_bpw=6.0))
    v = next(t for t in result.tensors if t.name == "layers.0.v.weight")
    assert v.fixed and v.chosen.spec is None and len(v.options) == 1
    assert v.why == "--rule layers.0.v=keep"
    assert result.bits_per_weight <= 6.0  # the kept tensor's 32 bits count in the average
    others = [t for t in result.tensors if t is not v]
    assert sum(t.chosen.nbytes for t in others) * 8 <= 6.0 * ELEMENTS - 32 * 32 * 128
    assert all(not t.fixed and len(t.options) == 8 for t in others)


def test_nonfinite_tensor_is_kept_outside_the_plan(tmp_path):
    rng = np.random.default_rng(0)
    bad = rng.normal(0, 1, (64, 64)).astype(np.float32)
    bad[3, 5] = np.nan
    path = tmp_path / "nan.safetensors"
    save_file({"bad": bad, "good": rng.normal(0, 1, (64, 64)).astype(np.float32)}, str(path))
    result = plan_compress(str(path), plan_of(), make_budget(target_bpw=4.0), nonfinite="keep")
    assert [t.name for t in result.tensors] == ["good"]
    assert result.kept == [("bad", "kept: 1 non-finite values")]
    with pytest.raises(Exception, match="1 non-finite values"):
        plan_compress(str(path), plan_of(), make_budget(target_bpw=4.0))


def test_progress_reports_each_tensor_measured(weights):
    seen = []
    plan_compress(
        str(weights), plan_of(), make_budget(target_bpw=4.0), progress=lambda *a: seen.append(a)
    )
    assert [name for name, _, _ in seen] == sorted(SHAPES)
    assert sum(n for _, n, _ in seen) == ELEMENTS and {t for _, _, t in seen} == {ELEMENTS}


# -- options -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, value",
    [("4GB", 4 * 10**9), ("4 GiB", 4 * 2**30), ("4G", 4 * 2**30), ("1.5MB", 1_500_000),
     ("300", 300), ("2kib", 2048), (".5KB", 500)],
)  # fmt: skip
def test_sizes(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["4 GBs", "GB", "-1GB", "4e9", ""])
def test_bad_sizes(text):
    with pytest.raises(UsageError, match="bad size .* in --max-size"):
        parse_size(text)


def test_candidates_are_the_only_specs_used(weights):
    budget = make_budget(target_bpw=6.0, candidates=["int8", "uint4,group_size=32", "keep"])
    result = plan_compress(str(weights), plan_of(), budget)
    assert {t.chosen.label for t in result.tensors} <= {"int8", "uint4,group_size=32", "keep"}
    assert {len(t.options) for t in result.tensors} == {3}
    assert 5.25 < result.bits_per_weight <= 6.0


CLI_CASES = [
    (["--target-bpw", "2"], 2, "target 2 bits per weight unreachable"),
    (["--target-bpw", "0"], 2, "target 0 in --target-bpw: must be a number above 0"),
    (["--max-size", "4 GBs"], 2, "bad size '4 GBs' in --max-size"),
    (["--max-size", "1KB"], 2, "size 1000 bytes unreachable"),
    (["--objective", "relative"], 2, "--objective without a budget"),
    (["--candidate", "int8"], 2, "--candidate without a budget"),
    (["--importance", "x=2"], 2, "--importance without a budget"),
    (["--target-bpw", "4", "--importance", "x"], 2, "bad importance 'x' in --importance"),
    (["--target-bpw", "4", "--candidate", "bits=12"], 2, "bits 12 in --candidate 'bits=12'"),
    (["--target-bpw", "4", "--min-sqnr", "nan"], 2, "--min-sqnr"),
    (
        ["--min-sqnr", "60", "--candidate", "int8"],
        2,
        "no candidate reaches --min-sqnr 60 in tensor embed.weight: the best is int8 at ",
    ),
]


@pytest.mark.parametrize("args, code, fragment", CLI_CASES)
def test_budget_errors_through_the_cli(weights, tmp_path, args, code, fragment):
    out = tmp_path / "out.safetensors"
    assert_fails(run("compress", weights, "-o", out, *args), code, fragment)
    assert not out.exists()


def test_budget_with_stdin_is_refused_unless_dry_run(weights):
    data = weights.read_bytes()
    line = assert_fails(run("compress", "-", "--target-bpw", "4", input=data), 2)
    assert "read twice" in line
    result = ok("compress", "-", "--target-bpw", "4", "--dry-run", "--json", input=data)
    assert json.loads(result.stdout)["totals"]["bits_per_weight"] <= 4


def test_compress_with_a_budget_prints_the_plan_line(weights, tmp_path):
    family = ["--scheme", "zeropoint", "--granularity", "group", "--group-size", "32"]
    result = ok(
        "compress", weights, "-o", tmp_path / "o.safetensors", "--target-bpw", "4.5", *family
    )
    first = result.stderr.splitlines()[0]
    assert first.startswith("plan: ") and "(--target-bpw 4.5)" in first
    bpw = float(first.split()[1])
    assert 4.4 < bpw <= 4.5
    assert "mix" not in str(tmp_path / "o.safetensors")
    # the default output of a budget is named mix
    default = ok("compress", weights, "--target-bpw", "4.5", "-q")
    assert default.exit_code == 0 and (weights.parent / "w.mix.safetensors").exists()
