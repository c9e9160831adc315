"""Rendering helpers shared by the commands: consoles, numbers, sizes, JSON, progress.

Data goes to stdout, messages and tables for people to stderr. Rich is used only here and in
the command modules. Tables are drawn by ``quantcli.cli.table``.

A reader of stderr that goes away (``quant compress ... 2>&1 | head -2``) does not fail the
command: what quant prints there comes after the work is done (the report, warnings), so the
rest of it is dropped and the exit status is the job's (``StderrGuard``).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.text import Text

from quantcli.cli.app import printable

# Width for tables written to a file or pipe: wide enough that rows do not wrap in a log.
# On a terminal (or with COLUMNS set) Rich uses the real width.
PIPE_WIDTH = 160


class _Console(Console):
    """A Rich console that outlives its reader.

    When the pipe it writes to is closed (``quant compress ... 2>&1 | head -2``) Rich would
    exit with code 1, failing a job whose outputs were written whole; this console goes quiet
    instead and the command ends as it would have (exit 0 for a finished job).
    """

    def on_broken_pipe(self) -> None:
        self.quiet = True
        _point_at_null(self.file)


def _point_at_null(stream) -> None:
    """Send what is still to be written to ``stream``, whose pipe is closed, to the null
    device: Python flushes it again on exit and would fail (exit code 120) on the pipe."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, stream.fileno())
        os.close(null)
    except (OSError, ValueError):
        pass  # not a real file descriptor (a test's capture): nothing is flushed there


def _console(stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    piped = not stream.isatty() and "COLUMNS" not in os.environ
    # markup off: tensor names like "a[0]" must print as they are
    return _Console(
        stderr=stderr, highlight=False, markup=False, width=PIPE_WIDTH if piped else None
    )


def err_console() -> Console:
    """The console for tables and messages meant for people: stderr."""
    return _console(stderr=True)


def out_console() -> Console:
    """The console for tables that are the command's data: stdout."""
    return _console(stderr=False)


SHORT_DTYPES = {
    "float64": "f64",
    "float32": "f32",
    "float16": "f16",
    "bfloat16": "bf16",
    "float8_e4m3fn": "f8e4m3",
    "float8_e5m2": "f8e5m2",
    "int64": "i64",
    "int32": "i32",
    "int16": "i16",
    "int8": "i8",
    "uint8": "u8",
    "bool": "bool",
}


def short_dtype(dtype) -> str:
    name = str(dtype)
    return SHORT_DTYPES.get(name, name)


BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(n: int) -> str:
    """Bytes in binary (IEC) units, 2 or 3 significant digits: ``512 B``, ``1.5 KiB``,
    ``117 KiB``, ``4.0 GiB`` (1 KiB = 1024 B)."""
    value = float(n)
    for unit in BYTE_UNITS:
        if unit == "B":
            if value < 1024:
                return f"{n} B"
        elif round(value, 1) < 10:
            return f"{value:.1f} {unit}"
        elif round(value) < 1024 or unit == BYTE_UNITS[-1]:
            return f"{value:.0f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def size_change(bytes_in: int, bytes_out: int) -> str:
    """``1.5 MiB -> 410 KiB (3.74x smaller)``; ``(1.12x larger)`` when the output grew."""
    sizes = f"{human_bytes(bytes_in)} -> {human_bytes(bytes_out)}"
    if bytes_in == bytes_out or not (bytes_in and bytes_out):
        return f"{sizes} (same size)" if bytes_in == bytes_out else sizes
    if bytes_out < bytes_in:
        return f"{sizes} ({bytes_in / bytes_out:.2f}x smaller)"
    return f"{sizes} ({bytes_out / bytes_in:.2f}x larger)"


def warn(message: str) -> None:
    """One warning line on stderr (not wrapped by quant), in bold yellow on a terminal."""
    err_console().print(Text(f"Warning: {message}", style="bold yellow"), soft_wrap=True)


def fmt_metric(value: float | None) -> str:
    """3 significant digits, short exponents: 1.41, 72.3, 0.0511, 1.23e-8; ``inf`` for an
    exact reconstruction, ``-`` for no value."""
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if math.isnan(value):
        return "nan"
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e3:
        return f"{value:.3g}"
    if 1e3 <= abs(value) < 1e5:
        return f"{value:.0f}"
    mantissa, exp = f"{value:.2e}".split("e")
    return f"{mantissa}e{int(exp)}"


def fmt_db(value: float) -> str:
    """A level in decibels with one decimal: ``44.5``, ``-3.0``; ``inf`` for an exact one."""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if math.isnan(value):
        return "nan"
    return f"{value:.1f}"


def fmt_shape(shape) -> str:
    return "(" + ", ".join(str(n) for n in shape) + ")" if len(shape) != 1 else f"({shape[0]},)"


def json_safe(value):
    """Make a JSON-able value strictly valid JSON: non-finite floats become null, and the
    bytes of a file name that is not UTF-8 are written ``\\xff`` (``printable``), since a lone
    surrogate such as ``\\udcff`` is rejected by strict JSON readers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable(k) if isinstance(k, str) else k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def print_json(data) -> None:
    try:
        sys.stdout.write(json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader went away (`| head -1`): the report on stderr still comes, as with
        # _Console, and the command ends as it would have
        _point_at_null(sys.stdout)


@contextmanager
def progress_bar(description: str, enabled: bool) -> Iterator:
    """Yields ``advance(name, done, total)``; shows a bar on stderr only on a terminal."""
    if not (enabled and sys.stderr.isatty()):
        yield lambda name, done, total: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeRemainingColumn(),
        console=err_console(),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=None)

        def advance(name: str, done: int, total: int) -> None:
            bar.update(task, total=total, advance=done, description=f"{description} {name}")

        yield advance
