"""quant compress: quantize a weight file, print the error report."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from quantcli.cli.app import app
from quantcli.cli.options import (
    BlockSize,
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
    Search,
    check_percentile,
)
from quantcli.cli.plan import (
    Candidates,
    DryRun,
    Importance,
    MaxSize,
    MinSqnr,
    ObjectiveOption,
    PlanFile,
    PlanOut,
    Rules,
    TargetBpw,
)
from quantcli.errors import UsageError


class OutputFormat(str, Enum):
    compressed_tensors = "compressed-tensors"
    quant = "quant"


@app.command()
def compress(
    ctx: typer.Context,
    input: Input,
    output: Output = None,
    scheme: Annotated[
        Scheme,
        typer.Option(
            "--scheme",
            case_sensitive=False,
            help="Number format: absmax, zeropoint, fullrange (Q4_0's rule), fullrange-ct "
            "(compressed-tensors' observer), fp8 (E4M3), fp8-e5m2, nf4, mxfp4 (OCP rule), "
            "mxfp4-ct (rounded-up exponent), nvfp4. See 'quant formats'.",
        ),
    ] = Scheme.absmax,
    bits: Annotated[
        int | None,
        typer.Option(
            "--bits",
            min=2,
            max=8,
            help="Bits per weight, 2 to 8. Default: the scheme's (8 for the integer schemes; "
            "fp8, nf4, mxfp4 and nvfp4 have fixed widths).",
            show_default=False,
        ),
    ] = None,
    granularity: Annotated[
        Granularity | None,
        typer.Option(
            "--granularity",
            case_sensitive=False,
            help="One scale per tensor, per channel (along --axis), per group of --group-size "
            "elements along the last axis, or per 2-D block of --block-size (fp8 only; 2-D "
            "tensors only). 0-d and 1-D tensors use one scale per tensor "
            "when channel is asked for. Default: the scheme's; for the integer schemes group "
            "at 4 bits and below, channel above (nf4, mxfp4 and nvfp4: group).",
            show_default=False,
        ),
    ] = None,
    axis: Annotated[
        int, typer.Option("--axis", help="Channel axis for --granularity channel.")
    ] = 0,
    group_size: Annotated[
        int | None,
        typer.Option(
            "--group-size",
            min=1,
            help="Group size for --granularity group. Default: the scheme's (128; nf4 64, "
            "mxfp4 32, nvfp4 16).",
            show_default=False,
        ),
    ] = None,
    block_size: BlockSize = None,
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
        ScaleDtype | None,
        typer.Option(
            "--scale-dtype",
            case_sensitive=False,
            help="How scales are stored. Default: the scheme's (float32; e8m0 for mxfp4, "
            "e4m3 under a float32 tensor scale for nvfp4). k4, k6, k8 (absmax, zeropoint; "
            "per group): two-level, a k-bit scale (and min) code per group under a float16 "
            "scale (and min) per super-block, as llama.cpp's K-quants (Q4_K's 4.5 bits: "
            "--scheme zeropoint --bits 4 --group-size 32 --scale-dtype k6 --search mse).",
            show_default=False,
        ),
    ] = None,
    super_block: Annotated[
        int | None,
        typer.Option(
            "--super-block",
            min=1,
            help="Groups a super-block holds with --scale-dtype k4, k6 or k8: one float16 "
            "scale (and min) per super-block. Default: 8 (Q4_K's 8 groups of 32).",
            show_default=False,
        ),
    ] = None,
    format: Annotated[
        OutputFormat | None,
        typer.Option(
            "--format",
            case_sensitive=False,
            help="Output format: compressed-tensors (a model folder that transformers and "
            "vLLM load; needs a model folder as INPUT) or quant (quant's own format). "
            "Default: compressed-tensors for a model folder (config.json beside the "
            "weights), quant otherwise.",
            show_default=False,
        ),
    ] = None,
    search: Annotated[
        Search,
        typer.Option(
            "--search",
            case_sensitive=False,
            help="How each group's scale is chosen: none (round to nearest from the range), "
            "mse (a search for the scale, and zero point, with the least squared error), "
            "wmse (the same, weighted by magnitude, as llama.cpp's K-quants) or hqq (HQQ's "
            "zero-point optimizer; zeropoint only). auto: mse at 4 bits and below for "
            "absmax, fullrange and zeropoint per group or channel, none elsewhere. See "
            "docs/SEARCH.md. With --type: none (llama.cpp's reference encoder; auto means "
            "none) or mse (the same ggml types with less squared error; docs/GGUF.md).",
        ),
    ] = Search.auto,
    ggml_type: Annotated[
        str | None,
        typer.Option(
            "--type",
            metavar="TYPE",
            help="Write a GGUF file for llama.cpp (INPUT an F16/F32 GGUF): a llama-quantize "
            "mix (Q4_K_M, Q5_K_S, Q4_0, ...) or a ggml type for every tensor llama-quantize "
            "quantizes (Q4_K, MXFP4, ...). Default output: INPUT's name with .TYPE.gguf. "
            "See 'quant formats'.",
            show_default=False,
        ),
    ] = None,
    pure: Annotated[
        bool,
        typer.Option(
            "--pure",
            help="With --type: a mix name means its base type for every tensor it quantizes "
            "(llama-quantize --pure).",
        ),
    ] = False,
    no_fallback: Annotated[
        bool,
        typer.Option(
            "--no-fallback",
            help="With --type: stop with an error when a tensor's rows do not fit its type's "
            "block, instead of llama.cpp's fallback type.",
        ),
    ] = False,
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
    # mixed specs: rules, budgets and plan files (quantcli/cli/plan.py, docs/MIX.md)
    rule: Rules = None,
    target_bpw: TargetBpw = None,
    max_size: MaxSize = None,
    min_sqnr: MinSqnr = None,
    objective: ObjectiveOption = None,
    importance: Importance = None,
    candidate: Candidates = None,
    plan: PlanFile = None,
    plan_out: PlanOut = None,
    dry_run: DryRun = False,
) -> None:
    """Quantize INPUT and write the codes, scales and zero points as a safetensors file.

    A model folder (config.json beside its weights) gives a model folder, its other files
    carried over; by default in the compressed-tensors format, where only Linear weights are
    quantized (4 or 8 bits, per channel or per group).

    Prints the error report (one row per tensor, with the totals) on stderr, and a warning
    naming the tensors whose SQNR is below 10 dB; --json prints the same facts on stdout.

    Example: quant compress model.safetensors --scheme zeropoint --bits 4 --group-size 32

    Example: quant compress my-model/ -o my-model-w4 --bits 4 --granularity group

    Example: quant compress model-f16.gguf -o model-Q4_K_M.gguf --type Q4_K_M

    Example: quant compress model.safetensors --bits 4 --granularity group --rule
    '*embed*=int8' --rule 'lm_head=keep'

    Example: quant compress model.safetensors --target-bpw 4.5 --dry-run
    """
    from quantcli.cli.plan import prepare_plan
    from quantcli.cli.render import print_json, progress_bar
    from quantcli.cli.spec_options import given_options, granularity_for, refuse_unused
    from quantcli.cli.tables import compress_json, compress_table, warn_low_sqnr
    from quantcli.core.spec import QuantSpec
    from quantcli.ops.compress import compress as run_compress
    from quantcli.select import Selector

    # stdin input writes to stdout by default
    if json and not dry_run and (output == "-" or (output is None and input == "-")):
        raise UsageError(
            "--json with the output on stdout (-o -, the default for input -) in quant "
            "compress: both would use standard output; write the quantized file to a path with -o, "
            "or drop --json"
        )
    gguf_output = output is not None and output.lower().endswith(".gguf")
    if ggml_type is not None or gguf_output:
        from quantcli.cli.gguf_compress import compress_to_gguf

        return compress_to_gguf(
            ctx,
            input,
            output,
            ggml_type,
            pure,
            no_fallback,
            exclude,
            force,
            json,
            quiet,
            rules=rule,
            target_bpw=target_bpw,
            max_size=max_size,
            objective=objective.value if objective is not None else None,
            importance=importance,
            candidates=candidate,
            dry_run=dry_run,
            search=search.value,
        )
    if pure or no_fallback:
        flag = "--pure" if pure else "--no-fallback"
        raise UsageError(
            f"{flag} without --type in quant compress: it applies to ggml types of a GGUF "
            f"output; add --type (e.g. --type Q4_K_M), or drop {flag}"
        )
    refuse_unused(
        given_options(ctx),
        bits=bits,
        granularity=granularity.value if granularity else None,
        axis=axis,
        group_size=group_size,
        calibration=calibration.value,
        percentile=percentile,
        scheme=scheme.value,
        scale_dtype=scale_dtype and scale_dtype.value,
        super_block=super_block,
        block_size=block_size,
    )
    gran = granularity.value if granularity else None
    if gran is None and bits is not None:
        # the default for the bits given (4 bits and below: groups); without --bits a rule's
        # scheme keeps its own default granularity
        gran = granularity_for(bits, None, scheme.value)
    base = {
        "scheme": scheme.value,
        "bits": bits,
        "granularity": gran,
        "axis": axis,
        "group_size": group_size,
        "calibration": calibration.value,
        "percentile": percentile,
        "scale_dtype": scale_dtype and scale_dtype.value,
        "search": search.value,
        "super_block": super_block,
        "block_size": block_size,
    }
    selector = Selector(QuantSpec(**base), tuple(include or ()), tuple(exclude or ()), min_elements)
    the_plan = prepare_plan(
        input,
        output,
        selector,
        base,
        rules=rule,
        target_bpw=target_bpw,
        max_size=max_size,
        min_sqnr=min_sqnr,
        objective=objective,
        importance=importance,
        candidates=candidate,
        plan_file=plan,
        plan_out=plan_out,
        dry_run=dry_run,
        format=None if format is None else format.value,
        nonfinite=nonfinite.value,
        force=force,
        quiet=quiet,
        json=json,
    )
    if the_plan is None:  # --dry-run: the plan is printed, nothing is written
        return
    with progress_bar("quantizing", enabled=not quiet) as advance:
        result = run_compress(
            input,
            output,
            the_plan,
            nonfinite.value,
            force,
            advance,
            format=None if format is None else format.value,
        )
    if json:
        print_json(compress_json(result))
    if not quiet:
        compress_table(result)
        if result.carried or result.skipped:
            from quantcli.cli.render import err_console

            line = f"{result.format} model folder; carried over: {', '.join(result.carried)}"
            if result.skipped:
                line += f"; left out (other weight files): {', '.join(result.skipped)}"
            err_console().print(line, markup=False, highlight=False)
    warn_low_sqnr(result)
