"""quant compress: quantize a weight file, print the error report."""

from __future__ import annotations

from typing import Annotated

import typer

from quantcli.cli.app import app
from quantcli.cli.options import (
    Calibration,
    Exclude,
    Force,
    Granularity,
    Include,
    Input,
    Json,
    MinElements,
    NonFinite,
    Output,
    ScaleDtype,
    Scheme,
    check_percentile,
)
from quantcli.errors import UsageError


@app.command()
def compress(
    ctx: typer.Context,
    input: Input,
    output: Output = None,
    scheme: Annotated[
        Scheme, typer.Option("--scheme", case_sensitive=False, help="Quantization scheme.")
    ] = Scheme.absmax,
    bits: Annotated[int, typer.Option("--bits", min=2, max=8, help="Bits per weight, 2 to 8.")] = 8,
    granularity: Annotated[
        Granularity | None,
        typer.Option(
            "--granularity",
            case_sensitive=False,
            help="One scale per tensor, per channel (along --axis) or per group of --group-size "
            "elements along the last axis. 0-d and 1-D tensors use one scale per tensor "
            "when channel is asked for. Default: group at 4 bits and below, channel above.",
            show_default=False,
        ),
    ] = None,
    axis: Annotated[
        int, typer.Option("--axis", help="Channel axis for --granularity channel.")
    ] = 0,
    group_size: Annotated[
        int, typer.Option("--group-size", min=1, help="Group size for --granularity group.")
    ] = 128,
    calibration: Annotated[
        Calibration,
        typer.Option("--calibration", case_sensitive=False, help="How the range is chosen."),
    ] = Calibration.minmax,
    percentile: Annotated[
        float,
        typer.Option(
            "--percentile",
            callback=check_percentile,
            help="Percentile p in (50, 100] for --calibration percentile.",
        ),
    ] = 99.99,
    scale_dtype: Annotated[
        ScaleDtype,
        typer.Option("--scale-dtype", case_sensitive=False, help="Dtype of stored scales."),
    ] = ScaleDtype.float32,
    include: Include = None,
    exclude: Exclude = None,
    min_elements: MinElements = 1024,
    nonfinite: Annotated[
        NonFinite,
        typer.Option(
            "--nonfinite",
            case_sensitive=False,
            help="A tensor with NaN or inf: stop with an error, or keep it unquantized.",
        ),
    ] = NonFinite.error,
    force: Force = False,
    json: Json = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No report table and no progress bar.")
    ] = False,
) -> None:
    """Quantize INPUT and write the codes, scales and zero points as a safetensors file.

    Prints the error report (one row per tensor, with the totals) on stderr, and a warning
    naming the tensors whose SQNR is below 10 dB; --json prints the same facts on stdout.

    Example: quant compress model.safetensors --scheme zeropoint --bits 4 --group-size 32
    """
    from quantcli.cli.render import print_json, progress_bar
    from quantcli.cli.spec_options import given_options, granularity_for, refuse_unused
    from quantcli.cli.tables import compress_json, compress_table, warn_low_sqnr
    from quantcli.core.spec import QuantSpec
    from quantcli.ops.compress import compress as run_compress
    from quantcli.select import Selector

    # stdin input writes to stdout by default
    if json and (output == "-" or (output is None and input == "-")):
        raise UsageError(
            "--json with the output on stdout (-o -, the default for input -) in quant "
            "compress: both would use standard output; write the quantized file to a path with -o, "
            "or drop --json"
        )
    refuse_unused(
        given_options(ctx),
        bits=bits,
        granularity=granularity.value if granularity else None,
        axis=axis,
        group_size=group_size,
        calibration=calibration.value,
        percentile=percentile,
    )
    spec = QuantSpec(
        scheme=scheme.value,
        bits=bits,
        granularity=granularity_for(bits, granularity.value if granularity else None),
        axis=axis,
        group_size=group_size,
        calibration=calibration.value,
        percentile=percentile,
        scale_dtype=scale_dtype.value,
    )
    selector = Selector(spec, tuple(include or ()), tuple(exclude or ()), min_elements)
    with progress_bar("quantizing", enabled=not quiet) as advance:
        result = run_compress(input, output, selector, nonfinite.value, force, advance)
    if json:
        print_json(compress_json(result))
    if not quiet:
        compress_table(result)
    warn_low_sqnr(result)
