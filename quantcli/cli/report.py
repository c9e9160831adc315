"""quant report: compare quantization schemes side by side, as a table or for scripts.

The report is the command's data, so every format goes to stdout (the table too); only the
progress bar and errors use stderr.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from quantcli.cli.app import app
from quantcli.cli.options import (
    BlockSize,
    Calibration,
    Exclude,
    Granularity,
    Include,
    Input,
    NonFinite,
    ScaleDtype,
    Scheme,
    Search,
    check_percentile,
)
from quantcli.cli.plan import Rules
from quantcli.errors import UsageError


class ReportFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"


class HistScale(str, Enum):
    linear = "linear"
    log = "log"


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
            help="tensor, channel, group or block (fp8 only: 2-D blocks of --block-size) "
            "(repeatable). Default: channel and group.",
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
            help="Dtype of stored scales (repeatable; also f32, fp16, bf16; k4, k6, k8: "
            "two-level scales for absmax and zeropoint groups, see quant compress). "
            "Default: float32.",
            show_default=False,
        ),
    ] = None,
    super_block: Annotated[
        list[int] | None,
        typer.Option(
            "--super-block",
            min=1,
            help="Groups a super-block holds for --scale-dtype k4, k6 and k8 (repeatable). "
            "Default: 8.",
            show_default=False,
        ),
    ] = None,
    block_size: BlockSize = None,
    search: Annotated[
        list[Search] | None,
        typer.Option(
            "--search",
            case_sensitive=False,
            help="Scale search (repeatable): auto, none, mse, wmse or hqq, compared side by "
            "side. A configuration a search does not fit is measured without it. Default: "
            "auto, as compress (mse at 4 bits and below for absmax, fullrange and zeropoint "
            "per group or channel, none elsewhere). With --type: none (llama.cpp's "
            "reference encoder; auto means none) and mse (less squared error, same types).",
            show_default=False,
        ),
    ] = None,
    ggml_type: Annotated[
        list[str] | None,
        typer.Option(
            "--type",
            metavar="TYPE",
            help="ggml type or llama-quantize mix to compare (repeatable), on the tensors "
            "llama-quantize quantizes, in place of --scheme and the other sweep options: "
            "Q4_0, Q4_K, Q6_K, Q4_K_M, ... See 'quant formats'.",
            show_default=False,
        ),
    ] = None,
    pure: Annotated[
        bool,
        typer.Option(
            "--pure",
            help="With --type: a mix name means its base type on every tensor "
            "(llama-quantize --pure).",
        ),
    ] = False,
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
            "cosine, most bits or bytes); also sqnr, max_err, clip, cos, bpw.",
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
    hist_scale: Annotated[
        HistScale | None,
        typer.Option(
            "--hist-scale",
            case_sensitive=False,
            help="Bar heights of --hist: linear in the count, or log (log(1 + count)) so that "
            "sparse bins stay visible beside a dominant one. Default: linear.",
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
    --group-size 128 --sort sqnr
    """
    from quantcli.core.ggml.mixes import resolve_type
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
        "--super-block": super_block,
        "--block-size": block_size,
        "--search": search,
        "--min-elements": min_elements,
        "--nonfinite": nonfinite,
        "--rule": rule,
    }
    _refuse_conflicts(against, hist, hist_scale, format, sweep_options, ggml_type, pure)
    configs = (
        []
        if against is not None or ggml_type
        else ops.configs_from_options(
            schemes=[s.value for s in scheme or []],
            bits=bits or [],
            granularities=[g.value for g in granularity or []],
            group_sizes=group_size or [],
            calibrations=[c.value for c in calibration or []],
            percentile=percentile,
            axis=axis,
            scale_dtypes=[d.value for d in scale_dtype or []],
            super_blocks=super_block or [],
            block_size=block_size,
            searches=[s.value for s in search or []],
        )
    )
    if hist is not None:
        _histogram(input, hist, configs, format, hist_scale, fail_below_sqnr)
        return
    result = _measure(
        input,
        against,
        [resolve_type(name, pure) for name in ggml_type or []],
        [s.value for s in search or []],
        configs,
        include or (),
        exclude or (),
        DEFAULT_MIN_ELEMENTS if min_elements is None else min_elements,
        nonfinite.value if nonfinite is not None else "error",
        rule or (),
    )
    _print(result, format, per_tensor, sort.value if sort is not None else None, top)
    if fail_below_sqnr is not None:
        ops.check_sqnr(result, fail_below_sqnr)


def _refuse_conflicts(
    against, hist, hist_scale, format, sweep_options: dict, ggml_type, pure
) -> None:
    """UsageError for options that do not go together."""
    if ggml_type or pure:
        # --rule (PATTERN=TYPE) and --search none/mse apply to ggml types too
        given = [
            name
            for name, value in sweep_options.items()
            if value not in (None, []) and not (ggml_type and name in ("--search", "--rule"))
        ]
        bad = [
            s.value
            for s in sweep_options["--search"] or []
            if s.value not in ("auto", "none", "mse")
        ]
        if ggml_type and bad:
            raise UsageError(
                f"--search {bad[0]} with --type in quant report: ggml types take --search "
                "none (llama.cpp's reference encoder) or mse (least squared error); use those"
            )
        clash = given[0] if given else "--against" if against else "--hist" if hist else None
        if not ggml_type:
            clash = "--pure without --type"
        if clash:
            raise UsageError(
                f"{clash} with --type in quant report: --type compares ggml types on the "
                "tensors llama-quantize quantizes; drop one of them"
                if ggml_type
                else f"{clash} in quant report: --pure applies to --type; add --type"
            )
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
    if hist is not None and sweep_options["--rule"]:
        raise UsageError(
            "--rule with --hist in quant report: the histogram compares the configurations "
            "on one tensor; give that tensor's spec with --scheme, --bits, ... instead"
        )
    if hist is not None and format in (ReportFormat.csv, ReportFormat.markdown):
        raise UsageError(
            f"--hist with --format {format.value} in quant report: a histogram prints as a "
            "table or as json; use --format table or --format json"
        )
    if hist is None and hist_scale is not None:
        raise UsageError(
            f"--hist-scale {hist_scale.value} without --hist in quant report: only the "
            "histogram has a scale; add --hist TENSOR, or drop --hist-scale"
        )


def _histogram(input, tensor, configs, format, scale, fail_below_sqnr) -> None:
    from quantcli.cli.histogram import hist_bins, hist_json, render_histogram
    from quantcli.cli.render import out_console, print_json
    from quantcli.ops import report as ops

    console = out_console()
    log = scale == HistScale.log
    result = ops.histogram(input, tensor, configs, bins=hist_bins(configs, console.width))
    if format == ReportFormat.json:
        print_json(hist_json(result, log))
    else:
        render_histogram(result, console, log)
    if fail_below_sqnr is not None:
        ops.check_sqnr(
            ops.ReportResult(result.input, configs, results=result.results), fail_below_sqnr
        )


def _measure(
    input, against, mixes, searches, configs, include, exclude, min_elements, nonfinite, rules
):
    from quantcli.cli.render import progress_bar
    from quantcli.ops import report as ops

    with progress_bar("measuring", enabled=True) as advance:
        if mixes:
            from quantcli.ops.gguf_plan import parse_type_rule
            from quantcli.ops.gguf_report import sweep_types

            type_rules = [parse_type_rule(text) for text in rules]
            return sweep_types(input, mixes, include, exclude, True, advance, searches, type_rules)
        if against is not None:
            return ops.against(input, against, include, exclude, advance)
        return ops.sweep(input, configs, include, exclude, min_elements, nonfinite, advance, rules)


def _print(result, format, per_tensor: bool, metric: str | None, top: int | None) -> None:
    """The rows asked for (sorted, cut to ``top``) in ``format``, on stdout."""
    from quantcli.cli.render import out_console, print_json
    from quantcli.cli.report_output import render_table, report_json, write_csv, write_markdown
    from quantcli.ops import report as ops

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
        render_table(result, rows, per_tensor, metric, top, out_console())
