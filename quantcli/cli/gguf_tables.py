"""Tables and JSON documents for GGUF files: inspect and compress with ggml types."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from rich.text import Text

from quantcli.cli.render import (
    err_console,
    fmt_metric,
    fmt_shape,
    human_bytes,
    out_console,
    size_change,
)
from quantcli.cli.table import Column, printable, render
from quantcli.cli.tables import dtype_name, metadata_lines

if TYPE_CHECKING:  # annotations only: inspect must not import the compress machinery
    from rich.console import Console

    from quantcli.ops.gguf_compress import GGUFCompressResult
    from quantcli.ops.inspect_file import InspectResult


def _bpw(value: float) -> str:
    return f"{value:.4g}"


def type_counts(types: list[str]) -> str:
    """``Q4_K x 169, Q6_K x 29, F32 x 65``, most frequent first."""
    return ", ".join(f"{name} x {n}" for name, n in Counter(types).most_common())


def gguf_inspect_json(result: InspectResult) -> dict:
    return {
        "file": result.file,
        "format": result.format,
        "quantized": result.quantized,
        "metadata": result.metadata,
        "total_bytes": result.total_bytes,
        "bits_per_weight": result.bits_per_weight,
        "tensors": [
            {
                "tensor": t.name,
                "ggml_type": t.ggml_type,
                "dtype": dtype_name(t.dtype),
                "shape": list(t.shape),
                "bytes": t.bytes,
                "bits_per_weight": t.bits_per_weight,
            }
            for t in result.tensors
        ],
    }


INSPECT_COLUMNS = [
    Column("tensor", name=True),
    Column("type", drop=1),
    Column("shape", drop=3),
    Column("size", "right", drop=2),
    Column("bits/w", "right", drop=4),
]


def gguf_inspect_table(result: InspectResult) -> None:
    rows = [
        [t.name, t.ggml_type, fmt_shape(t.shape), human_bytes(t.bytes), _bpw(t.bits_per_weight)]
        for t in result.tensors
    ]
    n = len(result.tensors)
    footer = [
        [
            f"{n} tensor{'s' if n != 1 else ''}",
            "",
            "",
            human_bytes(result.total_bytes),
            _bpw(result.bits_per_weight),
        ]
    ]
    console = out_console()
    console.print(Text(printable(f"{result.file}: gguf")))
    render(console, INSPECT_COLUMNS, rows, footer, hint="use --json")
    console.print(Text(f"types: {type_counts([t.ggml_type for t in result.tensors])}"))
    metadata_lines(console, "metadata", result.metadata)


def _type_cell(t) -> str:
    """``Q4_K``; ``Q5_0 (fallback)`` when the rows did not fit the type asked for (the
    summary under the table names that type)."""
    c = t.choice
    kind = f"{c.type} (fallback)" if c.fallback else c.type
    return f"{kind} (rule)" if c.by.startswith("--rule") else kind


def gguf_compress_json(result: GGUFCompressResult) -> dict:
    stats = result.stats
    return {
        "input": result.input,
        "output": result.output,
        "files": result.files,
        "format": "gguf",
        "type": result.mix.name,
        "pure": result.mix.pure,
        "file_type": result.mix.ftype,
        "search": result.search,
        "tensors": [
            {
                "tensor": t.name,
                "shape": list(t.shape),
                "source_type": t.choice.source_type,
                "type": t.choice.type,
                "fallback_from": t.choice.asked,
                "retyped": t.retyped,
                "reason": t.choice.reason or None,
                "chosen_by": t.choice.by or ("mix" if t.retyped else None),
                "bytes_in": t.bytes_in,
                "bytes_out": t.bytes_out,
                "bits_per_weight": t.bits_per_weight,
                **(t.stats.as_dict() if t.stats else {"mse": None, "sqnr_db": None}),
            }
            for t in result.tensors
        ],
        "totals": {
            "tensors": len(result.tensors),
            "retyped": len(result.retyped),
            "kept": len(result.tensors) - len(result.retyped),
            "fallbacks": len(result.fallbacks),
            "types": dict(Counter(t.choice.type for t in result.tensors).most_common()),
            "bytes_in": result.bytes_in,
            "bytes_out": result.bytes_out,
            "bits_per_weight": result.bits_per_weight,
            "file_bits_per_weight": result.file_bits_per_weight,
            "mse": stats.mse if stats.count else None,
            "sqnr_db": stats.sqnr_db if stats.count else None,
        },
        "budget": None
        if result.plan is None
        else {
            "limits": result.plan.budget.describe,
            "objective": result.plan.budget.objective,
            "candidates": list(result.plan.budget.candidates),
            "bits_per_weight": result.plan.bits_per_weight,
            "bytes": result.plan.nbytes,
            "tensors": len(result.plan.tensors),
        },
    }


COMPRESS_COLUMNS = [
    Column("tensor", name=True),
    Column("shape", drop=4),
    Column("type", drop=1),
    Column("bits/w", "right", drop=3),
    Column("MSE", "right", drop=5),
    Column("SQNR", "right", drop=2),
    Column("size", "right", drop=7),
    Column("stored", "right", drop=6),
]


def gguf_compress_table(result: GGUFCompressResult, console: Console | None = None) -> None:
    """The error report of a GGUF output: one row per tensor with its type, then the totals;
    on stderr (or ``console``: a plan printed by --dry-run goes to stdout). A fallback shows
    on its row, and counts in the summary's bits per weight."""
    rows = []
    for t in result.tensors:
        size = [human_bytes(t.bytes_in), human_bytes(t.bytes_out)]
        if t.retyped:
            s = t.stats
            metrics = [fmt_metric(s.mse), fmt_metric(s.sqnr_db)] if s else ["", ""]
            kind = _type_cell(t)
        else:
            metrics = ["", ""]
            kind = f"{t.choice.type} {t.choice.reason or '(already)'}"
        rows.append([t.name, fmt_shape(t.shape), kind, _bpw(t.bits_per_weight), *metrics, *size])
    stats = result.stats
    footer = [
        [
            "total",
            "",
            "",
            _bpw(result.file_bits_per_weight),
            fmt_metric(stats.mse) if stats.count else "",
            fmt_metric(stats.sqnr_db) if stats.count else "",
            human_bytes(result.bytes_in),
            human_bytes(result.bytes_out),
        ]
    ]
    mix = result.mix
    what = f"{mix.name} (every quantizable tensor)" if mix.pure else f"{mix.name} mix"
    if result.search != "none":
        what += f", search {result.search}"
    console = console or err_console()
    sources = type_counts([t.choice.source_type for t in result.retyped])
    where = f"{result.input} -> {result.output}" if result.output else f"plan for {result.input}"
    if result.plan is not None:
        what += f", types chosen by the budget ({result.plan.budget.describe})"
    console.print(Text(printable(f"{where}  ({what}, file type {mix.ftype}; from {sources})")))
    render(console, COMPRESS_COLUMNS, rows, footer, hint="use --json")
    n_retyped = len(result.retyped)
    fallbacks = result.fallbacks
    line = (
        f"{n_retyped} re-typed, {len(result.tensors) - n_retyped} kept; "
        f"{result.bits_per_weight:.4g} bits per re-typed weight, "
        f"{result.file_bits_per_weight:.4g} over the file; types: "
        f"{type_counts([t.choice.type for t in result.tensors])}; SQNR in dB"
    )
    console.print(line)
    if result.output:
        console.print(size_change(result.bytes_in, result.bytes_out))
    plan = result.plan
    if plan is not None:
        n_fixed = sum(1 for t in result.tensors if t.choice.by.startswith("--rule"))
        minimised = "relative" if plan.budget.objective == "relative" else "total"
        console.print(
            f"budget: {plan.bits_per_weight:.4f} bits per weight over the tensors the mix "
            f"quantizes ({len(plan.tensors)} chosen by the budget, {n_fixed} by rules); "
            f"least {minimised} squared error among {', '.join(plan.budget.candidates)}"
        )
    if fallbacks:
        console.print(
            f"{len(fallbacks)} tensor{'s' if len(fallbacks) != 1 else ''} fell back to another "
            "type (rows not a multiple of the block), as llama.cpp does: "
            + ", ".join(f"{t.name} {t.choice.asked} -> {t.choice.type}" for t in fallbacks)
            + "; --no-fallback makes this an error"
        )
