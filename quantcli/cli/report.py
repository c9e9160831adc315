"""quant report: compare quantization schemes side by side, as a table or for scripts.

The report is the command's data, so every format goes to stdout (the table too); only the
progress bar and errors use stderr.
"""

from __future__ import annotations

import csv
import math
import sys
from enum import Enum
from typing import Annotated

import typer

from quantcli.cli.app import app
from quantcli.cli.options import (
    Calibration,
    Exclude,
    Granularity,
    Include,
    Input,
    NonFinite,
    ScaleDtype,
    Scheme,
    check_percentile,
)
from quantcli.cli.plan import Rules
from quantcli.cli.render import fmt_metric, human_bytes
from quantcli.errors import UsageError


class ReportFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"


class SortMetric(str, Enum):
    mse = "mse"
    rmse = "rmse"
    max_abs_error = "max_abs_error"
    sqnr_db = "sqnr_db"
    cosine = "cosine"
    clipped_fraction = "clipped_fraction"
    mse_unclipped = "mse_unclipped"
    bits_per_weight = "bits_per_weight"
    bytes = "bytes"
    ratio = "ratio"


@app.command()
def report(
    input: Input,
    scheme: Annotated[
        list[Scheme] | None,
        typer.Option(
            "--scheme",
            case_sensitive=False,
            help="Scheme to compare (repeatable). Default: absmax and zeropoint.",
            show_default=False,
        ),
    ] = None,
    bits: Annotated[
        list[int] | None,
        typer.Option(
            "--bits",
            min=2,
            max=8,
            help="Bits per weight, 2 to 8 (repeatable). Default: 8 and 4.",
            show_default=False,
        ),
    ] = None,
    granularity: Annotated[
        list[Granularity] | None,
        typer.Option(
            "--granularity",
            case_sensitive=False,
            help="tensor, channel or group (repeatable). Default: channel and group.",
            show_default=False,
        ),
    ] = None,
    group_size: Annotated[
        list[int] | None,
        typer.Option(
            "--group-size",
            min=1,
            help="Group size for group granularity (repeatable). Default: 128.",
            show_default=False,
        ),
    ] = None,
    axis: Annotated[
        int | None,
        typer.Option(
            "--axis", help="Channel axis for channel granularity. Default: 0.", show_default=False
        ),
    ] = None,
    calibration: Annotated[
        list[Calibration] | None,
        typer.Option(
            "--calibration",
            case_sensitive=False,
            help="minmax or percentile (repeatable). Default: minmax.",
            show_default=False,
        ),
    ] = None,
    percentile: Annotated[
        float | None,
        typer.Option(
            "--percentile",
            callback=check_percentile,
            help="Percentile p in (50, 100] for every percentile configuration. Default: 99.99.",
            show_default=False,
        ),
    ] = None,
    scale_dtype: Annotated[
        list[ScaleDtype] | None,
        typer.Option(
            "--scale-dtype",
            case_sensitive=False,
            help="Dtype of stored scales (repeatable). Default: float32.",
            show_default=False,
        ),
    ] = None,
    include: Include = None,
    exclude: Exclude = None,
    min_elements: Annotated[
        int | None,
        typer.Option(
            "--min-elements",
            min=0,
            help="Keep tensors with fewer elements unquantized (unless --include names them). "
            "Default: 1024.",
            show_default=False,
        ),
    ] = None,
    nonfinite: Annotated[
        NonFinite | None,
        typer.Option(
            "--nonfinite",
            case_sensitive=False,
            help="A tensor with NaN or inf: stop with an error, or leave it out as compress "
            "keeps it. Default: error.",
            show_default=False,
        ),
    ] = None,
    against: Annotated[
        str | None,
        typer.Option(
            "--against",
            metavar="QUANTIZED",
            help="Evaluate this quantized file (made by quant compress from INPUT) tensor by "
            "tensor instead of sweeping configurations.",
            show_default=False,
        ),
    ] = None,
    per_tensor: Annotated[
        bool, typer.Option("--per-tensor", help="One row per tensor x configuration.")
    ] = False,
    sort: Annotated[
        SortMetric | None,
        typer.Option(
            "--sort",
            case_sensitive=False,
            help="Order rows worst first by this metric (highest error, lowest SQNR or "
            "cosine, most bits or bytes).",
            show_default=False,
        ),
    ] = None,
    top: Annotated[
        int | None,
        typer.Option(
            "--top", min=1, metavar="N", help="Show only the first N rows.", show_default=False
        ),
    ] = None,
    format: Annotated[
        ReportFormat,
        typer.Option("--format", case_sensitive=False, help="Output format, on stdout."),
    ] = ReportFormat.table,
    hist: Annotated[
        str | None,
        typer.Option(
            "--hist",
            metavar="TENSOR",
            help="Plot this tensor's values with each configuration's clipping range and "
            "quantization levels (table or json format).",
            show_default=False,
        ),
    ] = None,
    fail_below_sqnr: Annotated[
        float | None,
        typer.Option(
            "--fail-below-sqnr",
            metavar="DB",
            help="Exit with status 3 when any quantized tensor's SQNR is below DB decibels.",
            show_default=False,
        ),
    ] = None,
    # mixed specs (quantcli/cli/plan.py, docs/MIX.md): in every configuration of the sweep
    rule: Rules = None,
) -> None:
    """Compare quantization schemes on INPUT: error, SQNR, clipping, bits per weight, size.

    With no options, compares absmax and zeropoint x 8 and 4 bits x per channel and per group
    of 128 (min-max calibration); repeated options form the cartesian product. Each
    configuration is measured exactly as quant compress would write it, without writing it.

    Example: quant report model.safetensors --bits 4 --granularity group --group-size 32
    --group-size 128 --sort sqnr_db
    """
    from quantcli.cli.render import print_json, progress_bar
    from quantcli.ops import report as ops
    from quantcli.select import DEFAULT_MIN_ELEMENTS

    sweep_options = {
        "--scheme": scheme,
        "--bits": bits,
        "--granularity": granularity,
        "--group-size": group_size,
        "--axis": axis,
        "--calibration": calibration,
        "--percentile": percentile,
        "--scale-dtype": scale_dtype,
        "--min-elements": min_elements,
        "--nonfinite": nonfinite,
        "--rule": rule,
    }
    if against is not None:
        given = [name for name, value in sweep_options.items() if value not in (None, [])]
        if given:
            raise UsageError(
                f"{given[0]} with --against in quant report: --against evaluates the specs "
                f"recorded in {against}; drop {given[0]}, or drop --against to sweep"
            )
        if hist is not None:
            raise UsageError(
                "--hist with --against in quant report: the histogram marks configurations "
                "of a sweep; drop --against and give the file's --scheme, --bits, ..."
            )
    if hist is not None and rule:
        raise UsageError(
            "--rule with --hist in quant report: the histogram compares the configurations "
            "on one tensor; give that tensor's spec with --scheme, --bits, ... instead"
        )
    if hist is not None and format in (ReportFormat.csv, ReportFormat.markdown):
        raise UsageError(
            f"--hist with --format {format.value} in quant report: a histogram prints as a "
            "table or as json; use --format table or --format json"
        )

    configs = (
        []
        if against is not None
        else ops.configs_from_options(
            schemes=[s.value for s in scheme or []],
            bits=bits or [],
            granularities=[g.value for g in granularity or []],
            group_sizes=group_size or [],
            calibrations=[c.value for c in calibration or []],
            percentile=percentile,
            axis=axis,
            scale_dtypes=[d.value for d in scale_dtype or []],
        )
    )
    metric = sort.value if sort is not None else None

    if hist is not None:
        from quantcli.cli.histogram import hist_bins, hist_json, render_histogram
        from quantcli.cli.render import out_console

        console = out_console()
        result = ops.histogram(input, hist, configs, bins=hist_bins(configs, console.width))
        if format == ReportFormat.json:
            print_json(hist_json(result))
        else:
            render_histogram(result, console)
        if fail_below_sqnr is not None:
            ops.check_sqnr(
                ops.ReportResult(result.input, configs, results=result.results), fail_below_sqnr
            )
        return

    with progress_bar("measuring", enabled=True) as advance:
        if against is not None:
            result = ops.against(input, against, include or (), exclude or (), advance)
        else:
            result = ops.sweep(
                input,
                configs,
                include or (),
                exclude or (),
                DEFAULT_MIN_ELEMENTS if min_elements is None else min_elements,
                nonfinite.value if nonfinite is not None else "error",
                advance,
                rule or (),
            )
    results = ops.sort_rows(result.results, metric)
    summary = ops.sort_rows(result.summary, metric)
    if per_tensor:
        results = results[:top]
    else:
        summary = summary[:top]
    rows = results if per_tensor else summary

    if format == ReportFormat.json:
        print_json(report_json(result, results, summary, metric, top, per_tensor))
    elif format == ReportFormat.csv:
        write_csv(rows)
    elif format == ReportFormat.markdown:
        write_markdown(rows)
    else:
        from quantcli.cli.render import out_console

        render_table(result, rows, per_tensor, metric, top, out_console())
    if fail_below_sqnr is not None:
        ops.check_sqnr(result, fail_below_sqnr)


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


def _db(value: float) -> str:
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.1f}"


def _cosine(value: float) -> str:
    return "1" if value == 1 else f"{value:.5f}"


def _percent(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    return fmt_metric(value * 100) + "%"


def _bytes(value: int) -> str:
    return human_bytes(value)


# key, header, formatter; the table shows them in this order
COLUMNS = [
    ("mse", "MSE", fmt_metric),
    ("rmse", "RMSE", fmt_metric),
    ("max_abs_error", "max\nerr", fmt_metric),
    ("sqnr_db", "SQNR\ndB", _db),
    ("cosine", "cos", _cosine),
    ("clipped_fraction", "clip", _percent),
    ("mse_unclipped", "MSE\nunclip", fmt_metric),
    ("bits_per_weight", "bits\n/w", lambda v: f"{v:.4g}"),
    ("bytes", "bytes", _bytes),
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
MIN_NAME_WIDTH = 20


def best_values(rows, keys) -> dict:
    """key -> the best value of that column over ``rows`` (lowest error, highest SQNR...)."""
    from quantcli.ops.report import SORT_METRICS

    best = {}
    for key in keys:
        values = [v for v in (r.metric(key) for r in rows) if v is not None and not math.isnan(v)]
        if values:
            best[key] = min(values) if SORT_METRICS[key] else max(values)
    return best


def shorten(name: str, width: int) -> str:
    """``name`` in at most ``width`` characters, keeping what tells tensors apart.

    Dotted components are cut to their first letter from the left, numbers and the last two
    kept (``model.layers.0.self_attn.q_proj.weight`` -> ``m.l.0.s.q_proj.weight``); a name
    still too long is cut in the middle.
    """
    if len(name) <= width:
        return name
    parts = name.split(".")
    for i in range(len(parts) - 2):
        if not parts[i].isdigit():
            parts[i] = parts[i][:1]
        if len(".".join(parts)) <= width:
            return ".".join(parts)
    name = ".".join(parts)
    if len(name) <= width:
        return name
    head = max(1, (width - 1) // 3)
    return name[:head] + "…" + name[len(name) - (width - 1 - head) :]


def _build_table(rows, keys, per_tensor: bool, gap: int, name_width: int | None, best: dict):
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(
        box=box.SIMPLE_HEAD,
        padding=(0, gap - 1, 0, 0),
        pad_edge=False,
        show_edge=False,
        header_style="bold",
    )
    if per_tensor:
        table.add_column("tensor", no_wrap=True)
    table.add_column("config", no_wrap=True)
    formats = {key: fmt for key, _, fmt in COLUMNS}
    for key, header, _ in COLUMNS:
        if key in keys:
            table.add_column(header, justify="right", no_wrap=True)
    for row in rows:
        cells = []
        if per_tensor:
            cells.append(shorten(row.tensor, name_width) if name_width else "")
        cells.append(row.config.short_label())
        for key, _, _ in COLUMNS:
            if key not in keys:
                continue
            value = row.metric(key)
            text = formats[key](value) if value is not None else "-"
            style = "bold green" if value is not None and best.get(key) == value else ""
            cells.append(Text(text, style=style))
        table.add_row(*cells)
    return table


def fit_columns(rows, per_tensor: bool, width: int, keep: str | None, console):
    """(keys, gap, name width) of the widest table that fits ``width`` columns."""
    clipped = any((r.clipped_fraction or 0) > 0 for r in rows)
    order = [k for k in (DROP_ORDER_CLIPPED if clipped else DROP_ORDER) if k != keep]
    names = max((len(r.tensor) for r in rows), default=0) if per_tensor else 0
    all_keys = [key for key, _, _ in COLUMNS]
    for n_drop in range(len(order) + 1):
        keys = [k for k in all_keys if k not in order[:n_drop]]
        for gap in (2, 1):
            table = _build_table(rows, keys, per_tensor, gap, None, {})
            fixed = console.measure(table, options=console.options.update(width=10_000)).maximum
            if not per_tensor:
                if fixed <= width:
                    return keys, gap, None
                continue
            room = width - (fixed - len("tensor"))
            if room >= min(names, MIN_NAME_WIDTH):
                return keys, gap, min(names, room)
    keys = [k for k in all_keys if k not in order]
    return keys, 1, MIN_NAME_WIDTH


def render_table(result, rows, per_tensor: bool, metric, top, console) -> None:
    from rich.text import Text

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
    console.print(Text(head, style="bold"))
    keys, gap, name_width = fit_columns(rows, per_tensor, console.width, metric, console)
    best = best_values(rows, keys)
    console.print(_build_table(rows, keys, per_tensor, gap, name_width, best))
    notes = [
        "SQNR in dB; clip: clipped fraction; MSE unclip: MSE on unclipped elements; "
        "bits/w: codes + scales + zero points; best of each column in bold green."
    ]
    hidden = [HEADERS[k] for k, _, _ in COLUMNS if k not in keys]
    if hidden:
        notes.append(
            f"Not shown at {console.width} columns: {', '.join(hidden)} "
            "(widen the terminal, or use --format json or csv)."
        )
    if any(r.clipped_fraction is None for r in rows):
        notes.append(
            "clip -: a percentile-calibrated file does not record its clipping ranges, so "
            "what was clipped is unknown."
        )
    for note in notes:
        console.print(Text(note, style="dim"))
