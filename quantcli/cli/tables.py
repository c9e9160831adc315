"""Tables and JSON documents for compress, decompress and inspect results."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich import box
from rich.table import Table

from quantcli.cli.render import (
    err_console,
    fmt_metric,
    fmt_shape,
    human_bytes,
    out_console,
    short_dtype,
)

if TYPE_CHECKING:  # annotations only: inspect must not import the compress machinery
    from quantcli.ops.compress import CompressResult
    from quantcli.ops.decompress import DecompressResult
    from quantcli.ops.inspect_file import InspectResult
    from quantcli.ops.tensor import TensorResult


def dtype_name(dtype) -> str:
    """Friendly dtype name: float32, bfloat16, int64..."""
    return str(dtype)


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
        "tensors": [tensor_json(t) for t in result.tensors],
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


def compact_table() -> Table:
    """The table style of compress and inspect: a rule under the header, no borders."""
    return Table(box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True, pad_edge=False)


def compress_table(result: CompressResult) -> None:
    """The error report: one row per tensor, then the totals; on stderr.

    When every quantized tensor has the same spec (the usual case) it is shown once, above
    the table, so the rows fit an 80-column terminal.
    """
    specs = {t.selection.spec.short_label() for t in result.tensors if t.quantized}
    common = next(iter(specs)) if len(specs) == 1 else None  # shown above, not per row
    title = f"{result.input} -> {result.output}"
    if common:
        title += f"  ({common})"
    totals = result.totals
    kept = len(result.tensors) - len(totals.quantized)
    caption = (
        f"{len(totals.quantized)} quantized, {kept} kept; {totals.bits_per_weight:.3g} bits per "
        f"quantized weight; {human_bytes(totals.bytes_in)} -> {human_bytes(totals.bytes_out)} "
        f"({totals.ratio:.2f}x smaller); SQNR in dB"
    )
    table = compact_table()
    # only the name may wrap: numbers and specs stay on one line
    table.add_column("tensor", overflow="fold", min_width=8)
    table.add_column("shape", no_wrap=True)
    table.add_column("dtype", no_wrap=True)
    table.add_column("spec", no_wrap=True)
    for name in ("MSE", "SQNR", "max err", "size"):
        table.add_column(name, justify="right", no_wrap=True)
    for t in result.tensors:
        size = f"{human_bytes(t.bytes_in)}>{human_bytes(t.bytes_out)}"
        if t.quantized:
            s = t.stats
            metrics = [fmt_metric(s.mse), fmt_metric(s.sqnr_db), fmt_metric(s.max_abs_error)]
            spec = t.selection.spec.short_label() if common is None else ""
        else:
            metrics, spec = ["", "", ""], t.selection.reason
        table.add_row(t.name, fmt_shape(t.shape), short_dtype(t.dtype), spec, *metrics, size)
    table.add_section()
    table.add_row(
        "total", *[""] * 6, f"{human_bytes(totals.bytes_in)}>{human_bytes(totals.bytes_out)}"
    )
    # title and caption as their own lines: they wrap at the terminal's width, not the table's
    console = err_console()
    console.print(title)
    console.print(table)
    console.print(caption)


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
            for t in result.tensors
        ],
    }


def decompress_summary(result: DecompressResult) -> None:
    restored = sum(t.restored for t in result.tensors)
    err_console().print(
        f"restored {restored} quantized and copied {len(result.tensors) - restored} kept "
        f"tensors from {result.input} to {result.output} ({result.format})"
    )


def inspect_json(result: InspectResult) -> dict:
    return {
        "file": result.file,
        "format": result.format,
        "quantized": result.quantized,
        "metadata": result.metadata,
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


def inspect_table(result: InspectResult) -> None:
    kind = "quantized " if result.quantized else ""
    table = compact_table()
    table.add_column("tensor", overflow="fold")
    table.add_column("dtype")
    table.add_column("shape")
    table.add_column("size", justify="right")
    if result.quantized:
        for name in ("scheme", "bits", "granularity", "scales"):
            table.add_column(name)
    for t in result.tensors:
        row = [t.name, dtype_name(t.dtype), fmt_shape(t.shape), human_bytes(t.bytes)]
        if result.quantized:
            s = t.spec
            if s is None:
                row += ["kept", "", "", ""]
            else:
                gran = {"channel": f"channel({s.axis})", "group": f"group({s.group_size})"}
                row += [
                    s.scheme,
                    str(s.bits),
                    gran.get(s.granularity, s.granularity),
                    s.scale_dtype,
                ]
        table.add_row(*row)
    table.add_section()
    n = len(result.tensors)
    table.add_row(f"{n} tensor{'s' if n != 1 else ''}", "", "", human_bytes(result.total_bytes))
    console = out_console()
    console.print(f"{result.file}: {kind}{result.format}")
    console.print(table)
    for key, value in sorted(result.metadata.items()):
        console.print(f"{key}: {value}")
