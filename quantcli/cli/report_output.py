"""What quant report prints: the table (drawn by ``quantcli.cli.table``), JSON, CSV and
markdown, all on stdout."""

from __future__ import annotations

import csv
import math
import sys

from rich.console import Console
from rich.text import Text

from quantcli.cli.render import fmt_db, fmt_metric, human_bytes
from quantcli.cli.table import Column, colour_words, printable, render

# -- machine formats -----------------------------------------------------------------------


def report_json(result, results, summary, metric, top, per_tensor) -> dict:
    return {
        "input": result.input,
        "against": result.against,
        "sort": metric,
        "top": top,
        "per_tensor": per_tensor,
        "results": [r.as_dict() for r in results],
        "summary": [r.as_dict() for r in summary],
        "kept": [{"tensor": name, "reason": reason} for name, reason in result.kept],
    }


def _csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # full precision; inf and nan spelled as Python and csv readers do
    return str(value)


def write_csv(rows) -> None:
    dicts = [r.as_dict() for r in rows]
    writer = csv.writer(sys.stdout, lineterminator="\n")
    if dicts:
        writer.writerow(list(dicts[0]))
    for d in dicts:
        writer.writerow([_csv_cell(v) for v in d.values()])
    sys.stdout.flush()


def _md_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.6g}"
    return str(value).replace("|", "\\|")


def write_markdown(rows) -> None:
    dicts = [r.as_dict() for r in rows]
    if not dicts:
        return
    keys = list(dicts[0])
    numeric = {k for k in keys if any(isinstance(d[k], (int, float)) for d in dicts)}
    lines = [
        "| " + " | ".join(keys) + " |",
        "|" + "|".join("---:" if k in numeric else "---" for k in keys) + "|",
    ]
    lines += ["| " + " | ".join(_md_cell(d[k]) for k in keys) + " |" for d in dicts]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


# -- the table -----------------------------------------------------------------------------


def _cosine(value: float) -> str:
    return "1" if value == 1 else f"{value:.5f}"


def percent(value: float | None) -> str:
    """A fraction as a percentage: ``0.01%``; ``0`` for none, ``-`` when unknown."""
    if value is None:
        return "-"
    if value == 0:
        return "0"
    return fmt_metric(value * 100) + "%"


# key, header, formatter; the table shows them in this order
COLUMNS = [
    ("mse", "MSE", fmt_metric),
    ("rmse", "RMSE", fmt_metric),
    ("max_abs_error", "max\nerr", fmt_metric),
    ("sqnr_db", "SQNR\ndB", fmt_db),
    ("cosine", "cos", _cosine),
    ("clipped_fraction", "clip", percent),
    ("mse_unclipped", "MSE\nunclip", fmt_metric),
    ("bits_per_weight", "bits\n/w", lambda v: f"{v:.4g}"),
    ("bytes", "bytes", human_bytes),
    ("ratio", "ratio", lambda v: f"{v:.2f}x"),
]
HEADERS = {key: header.replace("\n", " ") for key, header, _ in COLUMNS}
# the columns given up first when the terminal is too narrow for all of them
DROP_ORDER = [
    "rmse",
    "ratio",
    "mse_unclipped",
    "bytes",
    "max_abs_error",
    "cosine",
    "clipped_fraction",
    "bits_per_weight",
]
# when something was clipped, the clipping columns tell the most
DROP_ORDER_CLIPPED = [
    "rmse",
    "ratio",
    "bytes",
    "max_abs_error",
    "cosine",
    "bits_per_weight",
    "mse_unclipped",
    "clipped_fraction",
]


def best_values(rows, keys) -> dict:
    """key -> the best value of that column over ``rows`` (lowest error, highest SQNR...)."""
    from quantcli.ops.report import SORT_METRICS

    best = {}
    for key in keys:
        values = [v for v in (r.metric(key) for r in rows) if v is not None and not math.isnan(v)]
        if values:
            best[key] = min(values) if SORT_METRICS[key] else max(values)
    return best


def table_columns(rows, per_tensor: bool, keep: str | None) -> list[Column]:
    """The report's columns: tensor (per tensor), config, then the metrics, each with its drop
    rank; ``keep`` (the --sort metric) is never left out."""
    clipped = any((r.clipped_fraction or 0) > 0 for r in rows)
    order = [k for k in (DROP_ORDER_CLIPPED if clipped else DROP_ORDER) if k != keep]
    columns = [Column("tensor", name=True)] if per_tensor else []
    columns.append(Column("config"))
    for key, header, _ in COLUMNS:
        drop = len(order) - order.index(key) if key in order else 0
        columns.append(Column(header, "right", drop=drop))
    return columns


def table_rows(rows, per_tensor: bool, best: dict) -> list[list]:
    out = []
    for row in rows:
        cells = [row.tensor] if per_tensor else []
        cells.append(row.config.short_label())
        for key, _, fmt in COLUMNS:
            value = row.metric(key)
            text = fmt(value) if value is not None else "-"
            style = "bold green" if value is not None and best.get(key) == value else ""
            cells.append(Text(text, style=style))
        out.append(cells)
    return out


def render_table(result, rows, per_tensor: bool, metric, top, console: Console) -> None:
    """The report as a table on ``console``: a heading, one row per configuration (or per
    tensor x configuration), the legend and what did not fit."""
    n_tensors = len(result.tensors)
    what = f"{result.against} against {result.input}" if result.against else result.input
    head = (
        f"{what}: {n_tensors} tensor{'s' * (n_tensors != 1)} quantized, "
        f"{len(result.kept)} kept, {len(result.configs)} configuration"
        f"{'s' * (len(result.configs) != 1)}"
    )
    if metric:
        head += f"; worst {HEADERS.get(metric, metric)} first"
    if top:
        head += f"; top {top}"
    console.print(Text(printable(head), style="bold"))
    best = best_values(rows, [key for key, _, _ in COLUMNS])
    render(
        console,
        table_columns(rows, per_tensor, metric),
        table_rows(rows, per_tensor, best),
        hint="use --format json or csv",
    )
    legend = (
        "SQNR in dB; clip: clipped fraction; MSE unclip: MSE on unclipped elements; "
        "bits/w: codes + scales + zero points"
    )
    looks = colour_words(console)
    if looks and len(rows) > 1:
        legend += f"; best of each column in {looks}"
    notes = [legend + "."]
    if any(r.clipped_fraction is None for r in rows):
        notes.append(
            "clip -: a percentile-calibrated or searched file does not record its clipping "
            "ranges, so what was clipped is unknown."
        )
    if result.against and not result.fingerprinted:
        notes.append(
            f"{result.against} records no fingerprints of its source tensors (an older "
            "quant made it): only names, shapes and dtypes were checked against "
            f"{result.input}."
        )
    for note in notes:
        console.print(Text(printable(note), style="dim"))
