"""What compress, decompress and inspect print: their tables (drawn by ``quantcli.cli.table``)
and their JSON documents. Tensors are listed in natural name order in both."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.text import Text

from quantcli.cli.render import (
    err_console,
    fmt_db,
    fmt_metric,
    fmt_shape,
    human_bytes,
    out_console,
    short_dtype,
    size_change,
    warn,
)
from quantcli.cli.table import Column, printable, render
from quantcli.select import natural_key

if TYPE_CHECKING:  # annotations only: inspect must not import the compress machinery
    from quantcli.ops.compress import CompressResult
    from quantcli.ops.decompress import DecompressResult
    from quantcli.ops.inspect_file import InspectResult
    from quantcli.ops.tensor import TensorResult

# compress warns about tensors whose SQNR is below this: the error's power is then over a tenth
# of the weights' (cosine below about 0.95), which damages a model noticeably; a uniform
# quantizer gives about 6 dB per bit, so 4-bit per-channel or per-group weights sit near 20 dB
LOW_SQNR_DB = 10.0
# how many of the worst tensors the warning names
LOW_SQNR_NAMED = 3


def dtype_name(dtype) -> str:
    """Friendly dtype name: float32, bfloat16, int64..."""
    return str(dtype)


def _natural(tensors):
    return sorted(tensors, key=lambda t: natural_key(t.name))


# -- compress ------------------------------------------------------------------------------


def tensor_json(t: TensorResult) -> dict:
    row = {
        "tensor": t.name,
        "shape": list(t.shape),
        "dtype": dtype_name(t.dtype),
        "quantized": t.quantized,
        "spec": t.selection.spec.to_dict() if t.quantized else None,
        "reason": t.selection.reason or None,
        "bytes_in": t.bytes_in,
        "bytes_out": t.bytes_out,
        "bits_per_weight": t.bits_per_weight if t.quantized else None,
    }
    stats = (
        t.stats.as_dict()
        if t.stats
        else dict.fromkeys(
            (
                "mse",
                "rmse",
                "max_abs_error",
                "sqnr_db",
                "cosine",
                "clipped_fraction",
                "mse_unclipped",
            )
        )
    )
    row.update(stats)
    return row


def compress_json(result: CompressResult) -> dict:
    totals = result.totals
    return {
        "input": result.input,
        "output": result.output,
        "files": result.files,
        "tensors": [tensor_json(t) for t in _natural(result.tensors)],
        "totals": {
            "tensors": len(result.tensors),
            "quantized": len(totals.quantized),
            "kept": len(result.tensors) - len(totals.quantized),
            "bytes_in": totals.bytes_in,
            "bytes_out": totals.bytes_out,
            "ratio": totals.ratio,
            "bits_per_weight": totals.bits_per_weight,
        },
    }


# drop ranks: the highest is left out first when the terminal is narrow
COMPRESS_COLUMNS = [
    Column("tensor", name=True),
    Column("shape", drop=4),
    Column("dtype", drop=5),
    Column("spec", drop=2),  # each tensor's spec when they differ; why a tensor is kept
    Column("SQNR", "right", drop=1),
    Column("MSE", "right", drop=3),
    Column("max err", "right", drop=6),
    Column("size", "right", drop=7),
    Column("stored", "right", drop=2),
]


def _sqnr_cell(value: float) -> Text:
    return Text(fmt_db(value), style="bold red" if value < LOW_SQNR_DB else "")


def compress_table(result: CompressResult) -> None:
    """The error report on stderr: one row per tensor, then the totals.

    When every quantized tensor has the same spec (the usual case) it is shown once, above
    the table, and the spec column only says why the other tensors are kept.
    """
    specs = {t.selection.spec.short_label() for t in result.tensors if t.quantized}
    common = next(iter(specs)) if len(specs) == 1 else None
    title = f"{result.input} -> {result.output}"
    if common:
        title += f"  ({common})"
    rows = []
    for t in _natural(result.tensors):
        if t.quantized:
            s = t.stats
            spec = "" if common else t.selection.spec.short_label()
            metrics = [_sqnr_cell(s.sqnr_db), fmt_metric(s.mse), fmt_metric(s.max_abs_error)]
        else:
            spec, metrics = t.selection.reason, ["", "", ""]
        rows.append(
            [
                t.name,
                fmt_shape(t.shape),
                short_dtype(t.dtype),
                spec,
                *metrics,
                human_bytes(t.bytes_in),
                human_bytes(t.bytes_out),
            ]
        )
    totals = result.totals
    footer = [["total", *[""] * 6, human_bytes(totals.bytes_in), human_bytes(totals.bytes_out)]]
    kept = len(result.tensors) - len(totals.quantized)
    console = err_console()
    console.print(Text(printable(title)))
    render(console, COMPRESS_COLUMNS, rows, footer, hint="use --json")
    # two short lines rather than one that wraps inside a size at 60 columns
    console.print(
        f"{len(totals.quantized)} quantized, {kept} kept; {totals.bits_per_weight:.3g} bits per "
        "quantized weight; SQNR in dB"
    )
    console.print(size_change(totals.bytes_in, totals.bytes_out))


def warn_low_sqnr(result: CompressResult) -> None:
    """One warning line on stderr naming the worst tensors below LOW_SQNR_DB, if any."""
    low = sorted(
        (t for t in result.tensors if t.quantized and t.stats.sqnr_db < LOW_SQNR_DB),
        key=lambda t: t.stats.sqnr_db,
    )
    if not low:
        return
    named = ", ".join(f"{printable(t.name)} {t.stats.sqnr_db:.1f} dB" for t in low[:LOW_SQNR_NAMED])
    more = f" and {len(low) - LOW_SQNR_NAMED} more" if len(low) > LOW_SQNR_NAMED else ""
    n = len(low)
    warn(
        f"very low SQNR (below {LOW_SQNR_DB:g} dB) in {n} tensor{'s' * (n != 1)}: {named}{more}; "
        "the weights are badly damaged: use more bits or smaller groups (e.g. --granularity "
        "group --group-size 32)"
    )


# -- decompress ----------------------------------------------------------------------------


def decompress_json(result: DecompressResult) -> dict:
    return {
        "input": result.input,
        "output": result.output,
        "format": result.format,
        "files": result.files,
        "tensors": [
            {
                "tensor": t.name,
                "shape": list(t.shape),
                "dtype": dtype_name(t.dtype),
                "restored": t.restored,
            }
            for t in _natural(result.tensors)
        ],
    }


def decompress_summary(result: DecompressResult) -> None:
    restored = sum(t.restored for t in result.tensors)
    err_console().print(
        Text(
            printable(
                f"restored {restored} quantized and copied {len(result.tensors) - restored} "
                f"kept tensors from {result.input} to {result.output} ({result.format})"
            )
        )
    )


# -- inspect -------------------------------------------------------------------------------

# metadata entries shown under inspect's table (each on one line); --json has them all
METADATA_LINES = 8


def inspect_json(result: InspectResult) -> dict:
    return {
        "file": result.file,
        "format": result.format,
        "quantized": result.quantized,
        "metadata": result.metadata,
        "source_metadata": result.source_metadata,
        "total_bytes": result.total_bytes,
        "tensors": [
            {
                "tensor": t.name,
                "dtype": dtype_name(t.dtype),
                "shape": list(t.shape),
                "bytes": t.bytes,
                "spec": t.spec.to_dict() if t.spec else None,
            }
            for t in result.tensors
        ],
    }


INSPECT_COLUMNS = [
    Column("tensor", name=True),
    Column("dtype", drop=5),
    Column("shape", drop=4),
    Column("size", "right", drop=3),
]
QUANTIZED_COLUMNS = [
    Column("scheme", drop=1),
    Column("bits", "right", drop=1),
    Column("granularity", drop=2),
    Column("scales", drop=6),
]


# shown when a tensor's scales were searched (--search): "none" elsewhere
SEARCH_COLUMN = Column("search", drop=7)


def inspect_table(result: InspectResult) -> None:
    kind = "quantized " if result.quantized else ""
    columns = INSPECT_COLUMNS + (QUANTIZED_COLUMNS if result.quantized else [])
    searched = any(t.spec is not None and t.spec.search != "none" for t in result.tensors)
    if searched:
        columns = columns + [SEARCH_COLUMN]
    rows = []
    for t in result.tensors:
        row = [t.name, dtype_name(t.dtype), fmt_shape(t.shape), human_bytes(t.bytes)]
        if result.quantized:
            s = t.spec
            if s is None:
                row += ["kept", "", "", ""] + ([""] if searched else [])
            else:
                gran = {"channel": f"channel({s.axis})", "group": f"group({s.group_size})"}
                if s.block_size is not None:
                    gran["block"] = "block({}x{})".format(*s.block_size)
                row += [
                    s.scheme,
                    str(s.bits),
                    gran.get(s.granularity, s.granularity),
                    f"{s.scale_dtype}x{s.super_block}" if s.two_level else s.scale_dtype,
                ] + ([s.search] if searched else [])
        rows.append(row)
    n = len(result.tensors)
    footer = [[f"{n} tensor{'s' if n != 1 else ''}", "", "", human_bytes(result.total_bytes)]]
    footer[0] += [""] * (len(columns) - len(footer[0]))
    console = out_console()
    console.print(Text(printable(f"{result.file}: {kind}{result.format}")))
    render(console, columns, rows, footer, hint="use --json")
    metadata_lines(console, "metadata", result.metadata)
    if result.source_metadata:
        metadata_lines(console, "source metadata (restored by decompress)", result.source_metadata)


def metadata_lines(console: Console, heading: str, metadata: dict[str, str]) -> None:
    """``heading:`` then up to METADATA_LINES ``key: value`` lines, each cut to the width."""
    if not metadata:
        return
    console.print(Text(f"{heading}:"))
    items = sorted(metadata.items(), key=lambda kv: natural_key(kv[0]))
    for key, value in items[:METADATA_LINES]:
        line = Text(printable(f"  {key}: {value}"), no_wrap=True, overflow="ellipsis")
        line.truncate(console.width, overflow="ellipsis")
        console.print(line, no_wrap=True, overflow="ellipsis", crop=True)
    if len(items) > METADATA_LINES:
        console.print(
            Text(f"  ... {len(items) - METADATA_LINES} more (quant inspect --json shows all)")
        )
