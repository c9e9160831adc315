"""The GGUF path of ``quant compress`` (``--type`` or ``-o x.gguf``): checks the options,
calls ``quantcli.ops.gguf_compress`` and renders its error report."""

from __future__ import annotations

import typer

from quantcli.errors import UsageError

# options of quant's own formats, which ggml types fix: refused with a GGUF output when given
_SPEC_OPTIONS = {
    "scheme": "--scheme",
    "bits": "--bits",
    "granularity": "--granularity",
    "axis": "--axis",
    "group_size": "--group-size",
    "calibration": "--calibration",
    "percentile": "--percentile",
    "scale_dtype": "--scale-dtype",
    "super_block": "--super-block",
    "block_size": "--block-size",
    "format": "--format",
    "include": "--include",
    "min_elements": "--min-elements",
    "nonfinite": "--nonfinite",
}
# mixed-spec options that GGUF outputs do not take
_PLAN_ONLY = {"min_sqnr": "--min-sqnr", "plan": "--plan", "plan_out": "--plan-out"}


def compress_to_gguf(
    ctx: typer.Context,
    input: str,
    output: str | None,
    ggml_type: str | None,
    pure: bool,
    no_fallback: bool,
    exclude: list[str] | None,
    force: bool,
    json: bool,
    quiet: bool,
    rules: list[str] | None = None,
    target_bpw: float | None = None,
    max_size: str | None = None,
    objective: str | None = None,
    importance: list[str] | None = None,
    candidates: list[str] | None = None,
    dry_run: bool = False,
    search: str = "none",
) -> None:
    from quantcli.cli.gguf_tables import gguf_compress_json, gguf_compress_table
    from quantcli.cli.render import out_console, print_json, progress_bar
    from quantcli.core.ggml.mixes import resolve_type
    from quantcli.ops.gguf_compress import compress_gguf, plan_gguf
    from quantcli.ops.gguf_plan import make_type_budget, parse_type_rule

    given = [
        flag
        for name, flag in _SPEC_OPTIONS.items()
        if ctx.get_parameter_source(name).name not in ("DEFAULT", "DEFAULT_MAP")
    ]
    if given:
        raise UsageError(
            f"{given[0]} with a GGUF output in quant compress: ggml types fix the number "
            f"format, block and scales, and llama.cpp's rules choose the tensors; drop "
            f"{given[0]} (--exclude keeps tensors as they are)"
        )
    not_here = [
        flag
        for name, flag in _PLAN_ONLY.items()
        if ctx.get_parameter_source(name).name not in ("DEFAULT", "DEFAULT_MAP")
    ]
    if not_here:
        raise UsageError(
            f"{not_here[0]} with a GGUF output in quant compress: GGUF outputs take --rule "
            "PATTERN=TYPE and the budgets --target-bpw and --max-size, not plan files or "
            f"--min-sqnr; drop {not_here[0]}"
        )
    from quantcli.ops.gguf_compress import GGUF_SEARCHES, ggml_search

    if search not in GGUF_SEARCHES:
        raise UsageError(
            f"--search {search} with a GGUF output in quant compress: ggml types take "
            "--search none (llama.cpp's reference encoder, the same bytes as llama-quantize) "
            "or --search mse (blocks with the least squared error, never worse than the "
            "reference's); use one of them"
        )
    search = ggml_search(search)
    if ggml_type is None:
        raise UsageError(
            f"no --type for the GGUF output {output} in quant compress: name a llama-quantize "
            "mix or a ggml type, e.g. --type Q4_K_M ('quant formats' lists them)"
        )
    if output is not None and output != "-" and not output.lower().endswith(".gguf"):
        raise UsageError(
            f"--type with a non-GGUF output in {output}: --type writes a GGUF file and the "
            "output's extension chooses the container; name the output *.gguf, or drop "
            "--type for quant's own format"
        )
    mix = resolve_type(ggml_type, pure)
    type_rules = [parse_type_rule(text) for text in rules or ()]
    budget = make_type_budget(target_bpw, max_size, objective, importance or (), candidates or ())
    if dry_run or budget is not None:
        with progress_bar("measuring", enabled=not quiet) as advance:
            planned = plan_gguf(
                input,
                mix,
                not no_fallback,
                tuple(exclude or ()),
                type_rules,
                budget,
                advance,
                search,
            )
        if dry_run:
            if json:
                print_json(gguf_compress_json(planned))
            else:
                gguf_compress_table(planned, out_console())
            return
        budget = planned.plan
    with progress_bar("quantizing", enabled=not quiet) as advance:
        result = compress_gguf(
            input,
            output,
            mix,
            not no_fallback,
            tuple(exclude or ()),
            force,
            advance,
            type_rules,
            budget,
            search,
        )
    if json:
        print_json(gguf_compress_json(result))
    if not quiet:
        gguf_compress_table(result)
