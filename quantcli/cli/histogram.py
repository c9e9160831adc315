"""The terminal histogram of ``quant report --hist``: a tensor's values, each configuration's
clipping range ``[ ]`` and its quantization levels ``|``.

Bar heights are linear in the count, or with ``--hist-scale log`` in log(1 + count), so that
a few values far from the bulk stay visible beside a bin holding most of them. Layout (every
line fits the console width):

      1712 │        ▂█████▆
           │        ███████
         0 │▁       ███████                      ▁
           └──────────────────────────────────────
            -1000             0              1000
    zp u8 t        [||||||||||||||||||||||||||||]
    zp u8 t p99.99  [||||||]
"""

from __future__ import annotations

import math

import numpy as np
from rich.console import Console
from rich.text import Text

from quantcli.ops.report import HistMarks, Histogram, config_fields

BLOCKS = " ▁▂▃▄▅▆▇█"
HEIGHT = 8
MIN_BINS, MAX_BINS = 10, 100


def _margin(labels: list[str]) -> int:
    return max([len(s) for s in labels] + [9]) + 1


def hist_bins(configs, width: int) -> int:
    """How many bins fit beside the labels of ``configs`` in ``width`` columns."""
    margin = _margin([c.short_label() for c in configs])
    return max(MIN_BINS, min(MAX_BINS, width - margin - 2))


def _bin_of(value: float, edges: np.ndarray) -> int:
    lo, hi = float(edges[0]), float(edges[-1])
    n = len(edges) - 1
    i = int(math.floor((value - lo) / (hi - lo) * n)) if hi > lo else 0
    return min(max(i, 0), n - 1)


def _bars(counts: np.ndarray, log: bool = False) -> list[str]:
    """HEIGHT lines of block characters, top first; a non-empty bin shows at least ▁.

    counts: int64 (bins,). log: heights in log(1 + count) instead of count."""
    peak = int(counts.max(initial=0))
    if log:
        top = math.log1p(peak)
        heights = [math.log1p(int(c)) / top if top else 0.0 for c in counts]
    else:
        heights = [int(c) / peak if peak else 0.0 for c in counts]
    eighths = [0 if c == 0 else max(1, round(h * HEIGHT * 8)) for c, h in zip(counts, heights)]
    lines = []
    for level in range(HEIGHT - 1, -1, -1):
        lines.append("".join(BLOCKS[min(8, max(0, e - level * 8))] for e in eighths))
    return lines


def _mark_line(mark: HistMarks, edges: np.ndarray) -> str:
    n = len(edges) - 1
    cells = [" "] * n
    first, last = _bin_of(mark.lo, edges), _bin_of(mark.hi, edges)
    has_level = set()
    for v in mark.levels:
        if mark.lo <= float(v) <= mark.hi:
            has_level.add(_bin_of(float(v), edges))
    for i in range(first, last + 1):
        cells[i] = "|" if i in has_level else "-"
    cells[first] = "["
    if last != first:
        cells[last] = "]"
    return "".join(cells)


def _num(value: float) -> str:
    return f"{value:.4g}"


def render_histogram(h: Histogram, console: Console, log: bool = False) -> None:
    from quantcli.cli.render import fmt_metric, fmt_shape
    from quantcli.cli.report_output import percent

    labels = [m.config.short_label() for m in h.marks]
    margin = _margin(labels)
    n = len(h.counts)
    width = float(h.edges[1] - h.edges[0])
    console.print(
        Text(
            f"{h.input}: {h.tensor} {fmt_shape(h.shape)} {h.dtype}, "
            f"{int(h.counts.sum())} values in {n} bins of {_num(width)}"
            + (", log scale" if log else ""),
            style="bold",
        )
    )
    peak = int(h.counts.max(initial=0))
    for i, line in enumerate(_bars(h.counts, log)):
        axis = str(peak) if i == 0 else ""
        out = Text(f"{axis:>{margin - 1}} │")
        out.append(line, style="cyan")
        console.print(out, no_wrap=True, crop=False)
    console.print(Text(" " * margin + "└" + "─" * n), no_wrap=True)
    lo, hi = _num(float(h.edges[0])), _num(float(h.edges[-1]))
    axis = list(" " * n)
    axis[: len(lo)] = lo
    axis[n - len(hi) :] = hi
    zero = _bin_of(0.0, h.edges)
    if float(h.edges[0]) < 0 < float(h.edges[-1]) and len(lo) + 1 < zero < n - len(hi) - 1:
        axis[zero] = "0"
    console.print(Text(" " * (margin + 1) + "".join(axis)), no_wrap=True)
    for label, mark in zip(labels, h.marks):
        out = Text(f"{label:<{margin}} ")
        out.append(_mark_line(mark, h.edges), style="bold")
        console.print(out, no_wrap=True, crop=False)
    console.print(
        Text("[ ] clipping range, | a quantization level, - no level in that bin", style="dim")
    )
    for label, mark in zip(labels, h.marks):
        row = mark.row
        groups = f" (widest of {mark.groups} groups)" if mark.groups > 1 else ""
        console.print(
            Text(
                f"{label}: clip [{_num(mark.lo)}, {_num(mark.hi)}]{groups}, "
                f"{mark.levels.size} levels step {_num(mark.step)}; MSE {fmt_metric(row.mse)}, "
                f"SQNR {row.sqnr_db:.1f} dB, clipped {percent(row.clipped_fraction)}, "
                f"MSE unclipped {fmt_metric(row.mse_unclipped)}"
            )
        )


def hist_json(h: Histogram, log: bool = False) -> dict:
    return {
        "input": h.input,
        "tensor": h.tensor,
        "shape": list(h.shape),
        "dtype": str(h.dtype),
        "scale": "log" if log else "linear",
        "edges": [float(e) for e in h.edges],
        "counts": [int(c) for c in h.counts],
        "configs": [
            {
                **config_fields(m.config),
                "clip_lo": m.lo,
                "clip_hi": m.hi,
                "groups": m.groups,
                "levels": [float(v) for v in m.levels],
            }
            for m in h.marks
        ],
        "results": [m.row.as_dict() for m in h.marks],
    }
