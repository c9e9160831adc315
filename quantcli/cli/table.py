"""The one table renderer of the CLI: every table fits the terminal, one line per row.

compress's error report, inspect's listing and report's comparison all go through
``render``, so they behave alike at any width:

- a row is one line: cells never wrap, and no line is wider than the console;
- a name column (``Column(name=True)``) shows names whole, or shortened in the middle
  (``model.layers.17.…q_proj.weight``) when the terminal is narrow, keeping the numbers
  (layer and expert indices) and the last component, which tell tensors apart;
- when the columns do not fit, those with the highest ``drop`` rank are left out first, until
  the name column gets at least ``NAME_MIN`` characters (or all it needs), and a note under
  the table names the columns left out;
- a column whose cells are all empty is not shown (e.g. compress's spec column when every
  tensor has the same spec and none is kept).

Layout, with ``gap`` spaces between columns (2, or 1 when that saves a column)::

    tensor                          SQNR   MSE   stored
    ─────────────────────────────────────────────────────
    model.layers.0.…q_proj.weight   44.5  1.46e-8  4.2 KiB
    ─────────────────────────────────────────────────────
    total                                         117 KiB
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.cells import cell_len
from rich.console import Console
from rich.text import Text

# the narrowest a name column is made before columns are left out: enough for
# "model.layers.17.…q_proj.weight"
NAME_MIN = 30
ELLIPSIS = "…"
RULE = "─"

Cell = str | Text | None


@dataclass(frozen=True)
class Column:
    """One column. header: its title (``\\n`` for two lines); align: ``left`` or ``right``;
    drop: 0 to always show it, else its rank among the columns left out when the table is too
    wide (the highest first; on a tie, the rightmost first); name: a column of names, shortened
    in the middle to fit instead of being left out; clip: a column of prose (descriptions),
    cut at the end with ``…`` to fit instead of being left out. A table has at most one column
    that is a name or clipped column."""

    header: str
    align: str = "left"
    drop: int = 0
    name: bool = False
    clip: bool = False

    @property
    def shrinks(self) -> bool:
        return self.name or self.clip

    @property
    def title(self) -> str:
        """The header on one line, for notes."""
        return " ".join(self.header.split())


@dataclass(frozen=True)
class Layout:
    """How a table fits a width: the indices of the columns shown and their widths, the gap
    between columns, the columns left out and whether names were shortened."""

    shown: tuple[int, ...]
    widths: tuple[int, ...]
    gap: int
    hidden: tuple[int, ...]
    shortened: bool

    @property
    def width(self) -> int:
        return sum(self.widths) + self.gap * max(len(self.widths) - 1, 0)


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\x1b``), so that a name from a
    hostile file can neither split a row nor drive the terminal, and the bytes of a file name
    that is not UTF-8 shown as ``\\xff`` (``quantcli.cli.app.printable``)."""
    from quantcli.cli.app import printable as encodable

    text = encodable(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _text(cell: Cell) -> Text:
    if cell is None:
        return Text("")
    if isinstance(cell, Text):
        return cell
    return Text(printable(str(cell)))


def shorten(name: str, width: int) -> str:
    """``name`` in at most ``width`` terminal cells: whole when it fits, else a head and a tail
    of it around ``…``.

    Of the ways to cut, the one kept keeps the most digits (layer and expert numbers), then
    the whole last component (``weight``), then the most characters, counting a cut at a dot
    as worth five more: ``model.layers.17.self_attn.q_proj.weight`` at 30 ->
    ``model.layers.17.…q_proj.weight``; at 33 -> ``model.…17.self_attn.q_proj.weight``.
    """
    name = printable(name)
    if cell_len(name) <= width:
        return name
    if width <= 1:
        return ELLIPSIS[:width]
    budget = width - 1
    n = len(name)
    last = name.rfind(".") + 1  # where the last component starts
    # tails that start right after a dot, and for each head the longest tail
    dotted = [n - i - 1 for i, c in enumerate(name) if c == "."]
    best, best_score = "", None
    budget = min(budget, n - 1)  # fewer characters than cells: wide characters
    if budget < 2:  # no room for both a head and a tail
        return name[:budget] + ELLIPSIS
    for head in range(1, budget):  # a head and a tail: cut in the middle, not at an end
        for tail in {budget - head, *(t for t in dotted if 0 < t <= budget - head)}:
            removed = name[head : n - tail]
            boundaries = (name[head - 1] == ".") + (name[n - tail - 1] == ".")
            score = (
                -sum(c.isdigit() for c in removed),
                tail >= n - last,
                head + tail + 5 * boundaries,
                -abs(head - budget // 3),  # else a third of the name before the cut
            )
            if best_score is None or score > best_score:
                best, best_score = name[:head] + ELLIPSIS + name[n - tail :], score
    while cell_len(best) > width:  # wide characters: give up cells from the head
        cut = best.index(ELLIPSIS)
        best = best[: cut - 1] + best[cut:] if cut else best[:1] + best[2:]
    return best


def fit(
    columns: Sequence[Column], rows: Sequence[Sequence[Cell]], width: int, name_min: int = NAME_MIN
) -> Layout:
    """The widest layout of ``columns`` x ``rows`` that fits ``width`` terminal cells."""
    natural = []
    for i, col in enumerate(columns):
        cells = [cell_len(_text(row[i]).plain) for row in rows]
        natural.append(max([cell_len(line) for line in col.header.split("\n")] + cells))
    # columns with nothing to show are not shown (and not reported as left out)
    present = [
        i
        for i, col in enumerate(columns)
        if col.shrinks or any(_text(row[i]).plain for row in rows)
    ]
    droppable = sorted(
        (i for i in present if columns[i].drop > 0), key=lambda i: (-columns[i].drop, -i)
    )
    name_col = next((i for i in present if columns[i].shrinks), None)
    for n_drop in range(len(droppable) + 1):
        hidden = set(droppable[:n_drop])
        shown = [i for i in present if i not in hidden]
        for gap in (2, 1):
            fixed = sum(natural[i] for i in shown if i != name_col) + gap * (len(shown) - 1)
            if name_col is None:
                if fixed <= width:
                    return _layout(shown, natural, gap, droppable[:n_drop], None, 0)
                continue
            room = width - fixed
            if room >= min(natural[name_col], name_min):
                return _layout(shown, natural, gap, droppable[:n_drop], name_col, room)
    # too narrow even without every column that may be left out: names get what remains
    # (lines are cropped at the width as a last resort)
    shown = [i for i in present if i not in droppable]
    fixed = sum(natural[i] for i in shown if i != name_col) + (len(shown) - 1)
    return _layout(shown, natural, 1, droppable, name_col, max(width - fixed, 1))


def _layout(shown, natural, gap, hidden, name_col, room) -> Layout:
    widths = [natural[i] for i in shown]
    shortened = False
    if name_col is not None:
        k = shown.index(name_col)
        shortened = natural[name_col] > room
        widths[k] = min(natural[name_col], room)
    return Layout(tuple(shown), tuple(widths), gap, tuple(sorted(hidden)), shortened)


def _line(cells: list[Text], columns: list[Column], widths: Sequence[int], gap: int) -> Text:
    line = Text()
    for k, (cell, col, w) in enumerate(zip(cells, columns, widths)):
        if k:
            line.append(" " * gap)
        pad = " " * max(w - cell_len(cell.plain), 0)
        is_last = k == len(widths) - 1
        if col.align == "right":
            line.append(pad)
            line.append_text(cell)
        else:
            line.append_text(cell)
            if not is_last:  # no trailing spaces
                line.append(pad)
    return line


def table_lines(
    columns: Sequence[Column],
    rows: Sequence[Sequence[Cell]],
    width: int,
    footer: Sequence[Sequence[Cell]] = (),
) -> tuple[list[Text], Layout]:
    """The lines of the table (header, rule, rows, and the footer rows after a rule), each at
    most ``width`` cells wide, and the layout they follow."""
    layout = fit(columns, [*rows, *footer], width)
    shown = [columns[i] for i in layout.shown]

    def cells(row: Sequence[Cell]) -> list[Text]:
        out = []
        for i, col, w in zip(layout.shown, shown, layout.widths):
            text = _text(row[i])
            if col.name and cell_len(text.plain) > w:
                text = Text(shorten(text.plain, w), style=text.style)
            elif col.clip and cell_len(text.plain) > w:
                text.truncate(w, overflow="ellipsis")
            out.append(text)
        return out

    height = max(len(col.header.split("\n")) for col in shown) if shown else 0
    lines = []
    for level in range(height):
        heads = []
        for col in shown:
            parts = col.header.split("\n")
            missing = height - len(parts)  # headers are aligned at the bottom
            heads.append(Text(parts[level - missing] if level >= missing else "", style="bold"))
        lines.append(_line(heads, shown, layout.widths, layout.gap))
    rule = Text(RULE * min(layout.width, width))
    lines.append(rule)
    lines += [_line(cells(row), shown, layout.widths, layout.gap) for row in rows]
    if footer:
        lines.append(rule.copy())
        lines += [_line(cells(row), shown, layout.widths, layout.gap) for row in footer]
    for line in lines:
        line.rstrip()
        line.truncate(width)
    return lines, layout


def fit_note(columns: Sequence[Column], layout: Layout, width: int, hint: str) -> str | None:
    """The note under a table that did not fit whole: which columns are not shown, whether
    names were shortened; ``hint`` says where the whole data is (``use --json``)."""
    hidden = [columns[i].title for i in layout.hidden]
    advice = f"(widen the terminal, or {hint})" if hint else "(widen the terminal)"
    clipped = any(columns[i].clip for i in layout.shown)
    cut = (
        f"{columns[next(i for i in layout.shown if columns[i].clip)].title} cut at the end"
        if clipped
        else "names shortened in the middle"
    )
    if hidden and layout.shortened:
        return f"Not shown at {width} columns: {', '.join(hidden)}; {cut} {advice}."
    if hidden:
        return f"Not shown at {width} columns: {', '.join(hidden)} {advice}."
    if layout.shortened:
        return f"{cut[0].upper()}{cut[1:]} at {width} columns {advice}."
    return None


def render(
    console: Console,
    columns: Sequence[Column],
    rows: Sequence[Sequence[Cell]],
    footer: Sequence[Sequence[Cell]] = (),
    hint: str = "",
) -> Layout:
    """Print the table on ``console`` at its width, then the note of what did not fit (dim).
    Returns the layout, so a caller can word its own legend after what is shown."""
    width = console.width
    lines, layout = table_lines(columns, rows, width, footer)
    for line in lines:
        console.print(line, no_wrap=True, overflow="ignore", crop=True, soft_wrap=True)
    note = fit_note(columns, layout, width, hint)
    if note:
        console.print(Text(note, style="dim"))
    return layout


def colour_words(console: Console, words: str = "bold green") -> str:
    """How a highlighted cell looks on ``console``, for a legend: ``bold green`` on a colour
    terminal, ``bold`` under NO_COLOR, "" when nothing is highlighted (a pipe, a file)."""
    if console.color_system is None:
        return ""
    if console.no_color:
        return " ".join(w for w in words.split() if w in ("bold", "italic", "underline"))
    return words
