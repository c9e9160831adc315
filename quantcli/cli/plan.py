"""The options of mixed specs (rules, budgets, plan files) and the plan table (docs/MIX.md).

compress takes every option here, report takes ``--rule``; the decisions themselves live in
``quantcli.ops.plan``.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from quantcli.cli.render import err_console, fmt_metric, fmt_shape, human_bytes, out_console
from quantcli.errors import UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from quantcli.ops.plan import Plan, PlanResult
    from quantcli.select import Selector


class Objective(str, Enum):
    total = "total"
    relative = "relative"


Rules = Annotated[
    list[str] | None,
    typer.Option(
        "--rule",
        metavar="PATTERN=SPEC",
        help="Quantize the tensors PATTERN names with SPEC (repeatable; the first matching "
        "rule wins). PATTERN: a glob, or re:REGEX matched whole, on the tensor name or its "
        "module name (lm_head names lm_head.weight). SPEC: keep; a preset (int8, int4, "
        "uint4, w4a16, nf4, fp8, any scheme name); key=value,... over the spec options "
        "(bits, scheme, granularity, group_size, axis, calibration, percentile, "
        "scale_dtype), applied on top of this command's; or a preset then options "
        "(int4,group_size=32). With --type (a GGUF output): PATTERN=TYPE, a ggml type "
        "(Q6_K, Q8_0, F16, ...) or keep. See docs/MIX.md.",
        show_default=False,
    ),
]
TargetBpw = Annotated[
    float | None,
    typer.Option(
        "--target-bpw",
        metavar="BITS",
        help="Choose each tensor's spec to least total squared error with at most BITS "
        "stored bits per weight (codes, scales, zero points) over the tensors quantized.",
        show_default=False,
    ),
]
MaxSize = Annotated[
    str | None,
    typer.Option(
        "--max-size",
        metavar="SIZE",
        help="Choose each tensor's spec to least error with at most SIZE bytes of tensors "
        "in the output (4GB = 4*1000^3, 4GiB or 4G = 4*1024^3).",
        show_default=False,
    ),
]
MinSqnr = Annotated[
    float | None,
    typer.Option(
        "--min-sqnr",
        metavar="DB",
        help="Give no tensor a candidate below DB dB of SQNR; alone, the smallest output "
        "where every tensor reaches DB.",
        show_default=False,
    ),
]
ObjectiveOption = Annotated[
    Objective | None,
    typer.Option(
        "--objective",
        case_sensitive=False,
        help="What the budget minimises: total (the sum of squared errors) or relative "
        "(each tensor's squared error over its mean square). Default: total.",
        show_default=False,
    ),
]
Importance = Annotated[
    list[str] | None,
    typer.Option(
        "--importance",
        metavar="PATTERN=WEIGHT",
        help="Multiply the error of the tensors PATTERN names by WEIGHT in the budget's "
        "objective (repeatable; the first match wins).",
        show_default=False,
    ),
]
Candidates = Annotated[
    list[str] | None,
    typer.Option(
        "--candidate",
        metavar="SPEC",
        help="A spec the budget may give a tensor (repeatable; SPEC as in --rule; with "
        "--type, a ggml type). Default: the spec options at every bit width from 2 to 8, "
        "and keep (with --type: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_0 and keep).",
        show_default=False,
    ),
]
PlanFile = Annotated[
    str | None,
    typer.Option(
        "--plan",
        metavar="PLAN",
        help="Quantize each tensor as the plan file PLAN says (written by --plan-out, "
        "perhaps edited).",
        show_default=False,
    ),
]
PlanOut = Annotated[
    str | None,
    typer.Option(
        "--plan-out",
        metavar="PLAN",
        help="Write the plan (each tensor's spec, size and error) as JSON to PLAN.",
        show_default=False,
    ),
]
DryRun = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Measure and print the plan (a table, or JSON with --json) on stdout; write "
        "no output.",
    ),
]


def prepare_plan(
    input: str,
    output: str | None,
    selector: Selector,
    base: dict[str, Any],
    *,
    rules: list[str] | None,
    target_bpw: float | None,
    max_size: str | None,
    min_sqnr: float | None,
    objective: Objective | None,
    importance: list[str] | None,
    candidates: list[str] | None,
    plan_file: str | None,
    plan_out: str | None,
    dry_run: bool,
    format: str | None,
    nonfinite: str,
    force: bool,
    quiet: bool,
    json: bool,
) -> Plan | None:
    """The plan compress writes with, measured (and allocated) first when a budget,
    ``--dry-run`` or ``--plan-out`` asks for it; None when ``--dry-run`` printed it."""
    from quantcli.cli.render import print_json, progress_bar
    from quantcli.ops import plan as ops
    from quantcli.ops.compress import plan_compress

    plan = ops.make_plan(selector, base, rules or (), plan_file)
    budget = ops.make_budget(
        target_bpw,
        max_size,
        min_sqnr,
        objective.value if objective is not None else None,
        importance or (),
        candidates or (),
        plan_file,
    )
    if budget is None and not dry_run and plan_out is None:
        return plan
    if plan_out is not None and output is not None and not dry_run and _same(plan_out, output):
        raise UsageError(
            f"--plan-out {plan_out} is the output in quant compress: the weights would replace "
            "the plan; give the plan another name"
        )
    if input == "-" and not dry_run:
        raise UsageError(
            "a budget or --plan-out with standard input in quant compress: the input is read "
            "twice (measured, then written); pass a file path, or use --dry-run"
        )
    with progress_bar("measuring", enabled=not quiet) as advance:
        result = plan_compress(input, plan, budget, format, nonfinite, advance)
    if plan_out is not None:
        ops.save_plan(result, plan_out, [input] if input != "-" else [], force)
    if dry_run:
        if json:
            print_json(ops.plan_json(result))
        else:
            plan_table(result, out_console())
        return None
    if budget is not None and not quiet:
        err_console().print(summary_line(result), markup=False, highlight=False)
    return result.plan


def _same(a: str, b: str) -> bool:
    import os

    return os.path.abspath(a) == os.path.abspath(b)


def summary_line(result: PlanResult) -> str:
    """``plan: 4.4987 bits per weight (--target-bpw 4.5), 3.1M of tensors; ...``."""
    stats = result.stats
    line = f"plan: {result.bits_per_weight:.4f} bits per weight"
    if result.budget is not None and result.budget.describe:
        line += f" ({result.budget.describe})"
    line += (
        f", {human_bytes(result.total_bytes)} of tensors; total squared error "
        f"{fmt_metric(stats.sum_sq_error)}, SQNR {_db(stats.sqnr_db)} dB over "
        f"{len(result.tensors)} planned tensors"
    )
    return line


def _db(value: float) -> str:
    return "inf" if math.isinf(value) and value > 0 else fmt_metric(value)


def _why(result: PlanResult, t) -> str:
    if not t.fixed:
        return "budget"
    return t.why.removeprefix("--rule ")


def plan_table(result: PlanResult, console: Console) -> None:
    """The plan: one row per planned tensor (spec, bits per weight, error, size, why), the
    totals, and what decided them."""
    from rich.text import Text

    from quantcli.cli.table import Column, printable, render

    columns = [
        Column("tensor", name=True),
        Column("shape", drop=4),
        Column("spec", drop=1),
        Column("bits/w", "right", drop=2),
        Column("MSE", "right", drop=5),
        Column("SQNR", "right", drop=3),
        Column("size", "right", drop=6),
        Column("why", drop=7),
    ]
    rows = []
    for t in result.tensors:
        o = t.chosen
        spec = "keep" if o.spec is None else o.spec.short_label()
        bpw = 8.0 * o.nbytes / t.elements if t.elements else 0.0
        rows.append(
            [
                t.name,
                fmt_shape(t.info.shape),
                spec,
                f"{bpw:.3f}",
                fmt_metric(o.stats.mse),
                _db(o.stats.sqnr_db),
                human_bytes(o.nbytes),
                _why(result, t),
            ]
        )
    stats = result.stats
    footer = [
        [
            f"total ({len(result.tensors)} tensors)",
            "",
            "",
            f"{result.bits_per_weight:.4f}",
            fmt_metric(stats.mse),
            _db(stats.sqnr_db),
            human_bytes(result.nbytes),
            "",
        ]
    ]
    console.print(Text(printable(f"plan for {result.input}")))
    render(console, columns, rows, footer, hint="use --json or --plan-out")
    budget = result.budget
    lines = []
    if budget is not None:
        limits = []
        if budget.target_bpw is not None:
            limits.append(f"at most {float(budget.target_bpw):g} bits per weight")
        if budget.max_size is not None:
            limits.append(f"at most {budget.max_size} bytes of tensors")
        if budget.min_sqnr is not None:
            limits.append(f"every tensor the budget decides at {budget.min_sqnr:g} dB or more")
        what = (
            "sum of squared errors"
            if budget.objective == "total"
            else "sum of squared errors relative to each tensor's mean square"
        )
        if budget.importance:
            what = "importance-weighted " + what
        lines.append(f"budget: {'; '.join(limits)}; minimised: {what}")
    lines.append(
        f"{result.bits_per_weight:.4f} bits per weight over {result.elements} weights; "
        f"{result.nbytes} bytes planned + {result.kept_bytes} bytes kept = "
        f"{result.total_bytes} bytes of tensors ({human_bytes(result.total_bytes)}); "
        f"total squared error {stats.sum_sq_error:.6g}"
    )
    if result.kept:
        lines.append(
            f"{len(result.kept)} tensors outside the plan, stored as they are "
            f"({_reasons(result.kept)})"
        )
    lines.append("bits/w: codes + scales + zero points + tensor scales; SQNR in dB")
    for line in lines:
        console.print(line, markup=False, highlight=False)


def _reasons(kept: list[tuple[str, str]]) -> str:
    counts: dict[str, int] = {}
    for _, reason in kept:
        key = reason.removeprefix("kept: ")
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} {why}" for why, n in counts.items())
