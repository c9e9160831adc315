"""Tables at real terminal widths: compress, inspect and report through the one renderer
(quantcli.cli.table), on a checkpoint of ~100 long tensor names like a real model's.

At 60, 80 and 120 columns: no line is wider than the terminal, every tensor is one line,
names are whole or cut in the middle (a head and a tail of the real name around "…"), in
natural order; the columns left out are named under the table. Plus the renderer's own rules,
sizes in binary units, and the legend under NO_COLOR.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from rich.cells import cell_len
from safetensors.numpy import save_file
from typer.testing import CliRunner

from quantcli.cli import app
from quantcli.cli.render import human_bytes
from quantcli.cli.table import Column, fit, shorten, table_lines

REPO = Path(__file__).resolve().parent.parent
SEED = REPO / "sample_weights" / "seed_outlier.npy"
PROJECTIONS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
LAYERS = 13
ELLIPSIS = "…"


def run(*args, columns: int, env: dict | None = None):
    result = CliRunner().invoke(
        app, [str(a) for a in args], env={"COLUMNS": str(columns), "NO_COLOR": "1", **(env or {})}
    )
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def natural(name: str) -> tuple:
    """Natural order, written here independently of quantcli.select.natural_key."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, list[str], list[str]]:
    """(file, every tensor name in natural order, the quantized ones) of a 13-layer model:
    7 projections and a 1-D norm per layer, embeddings, final norm, head: 107 tensors, names
    up to 39 characters. Written by the safetensors library, which stores names sorted as
    text (layers.1, layers.10, ..., layers.2)."""
    rng = np.random.default_rng(7)
    tensors = {
        "model.embed_tokens.weight": rng.normal(0, 0.02, (64, 32)).astype(np.float32),
        "model.norm.weight": np.ones(32, np.float32),
        "lm_head.weight": rng.normal(0, 0.02, (64, 32)).astype(np.float32),
    }
    for layer in range(LAYERS):
        for proj in PROJECTIONS:
            w = rng.normal(0, 0.02, (32, 32)).astype(np.float32)
            tensors[f"model.layers.{layer}.{proj}.weight"] = w
        tensors[f"model.layers.{layer}.input_layernorm.weight"] = np.ones(32, np.float32)
    path = tmp_path_factory.mktemp("long") / "model.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    names = sorted(tensors, key=natural)
    quantized = [n for n in names if tensors[n].ndim == 2]
    assert len(names) == 107 and max(len(n) for n in names) == 39
    return path, names, quantized


def is_whole_or_middle_cut(cell: str, name: str) -> bool:
    if cell == name:
        return True
    if cell.count(ELLIPSIS) != 1:
        return False
    head, tail = cell.split(ELLIPSIS)
    return bool(head) and bool(tail) and name.startswith(head) and name.endswith(tail)


def check_rows(lines: list[str], names: list[str], width: int) -> list[str]:
    """Every line fits ``width``; ``names`` appear one line each, in this order, each whole or
    cut in the middle. Returns the cells shown for them."""
    assert all(cell_len(line) <= width for line in lines), "\n".join(lines)
    rule = next(i for i, line in enumerate(lines) if line.startswith("─"))
    body = lines[rule + 1 : rule + 1 + len(names)]
    cells = [line.split()[0] if line.strip() else "" for line in body]
    for cell, name in zip(cells, names):
        assert is_whole_or_middle_cut(cell, name), (cell, name, width)
    assert len(cells) == len(names)
    return cells


@pytest.mark.parametrize("width", [60, 80, 120])
def test_compress_table_fits_one_line_per_tensor(checkpoint, tmp_path, width):
    path, names, quantized = checkpoint
    result = run("compress", path, "-o", tmp_path / "q.safetensors", columns=width)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    cells = check_rows(lines, names, width)
    rule = next(i for i, line in enumerate(lines) if line.startswith("─"))
    header, rows = lines[rule - 1].split(), lines[rule + 1 : rule + 1 + len(names)]
    after = " ".join(" ".join(lines[rule + 1 + len(names) :]).split())
    assert sum("kept: 1-D" in line for line in rows) == len(names) - len(quantized)
    if width >= 120:  # room for every name whole and every column
        assert cells == names
        assert "Not shown" not in after and "shortened" not in after
        assert header == [
            "tensor",
            "shape",
            "dtype",
            "spec",
            "SQNR",
            "MSE",
            "max",
            "err",
            "size",
            "stored",
        ]
    else:  # narrower: what is left out is named under the table
        assert f"at {width} columns" in after
        hidden = after.split(f"Not shown at {width} columns: ")[1].split(";")[0].split(", ")
        assert not {h.split()[0] for h in hidden} & set(header)
        assert "MSE" in hidden or width > 60
        assert any(ELLIPSIS in c for c in cells)
    # the tensor, spec, SQNR and stored columns are there at every width, SQNR with a number
    # on each quantized row
    assert {"tensor", "spec", "SQNR", "stored"} <= set(header)
    for name, line in zip(names, rows):
        if name in quantized:
            assert re.search(r"\s\d\d\.\d\s", line + " "), line


@pytest.mark.parametrize("width", [60, 80, 120])
def test_inspect_table_fits_one_line_per_tensor(checkpoint, tmp_path, width):
    path, names, quantized = checkpoint
    plain = run("inspect", path, columns=width)
    assert plain.exit_code == 0 and plain.stderr == ""
    lines = plain.stdout.splitlines()
    check_rows(lines[1:], names, width)
    assert "107 tensors" in plain.stdout

    q = tmp_path / "q.safetensors"
    assert run("compress", path, "-o", q, "--quiet", columns=width).exit_code == 0
    shown = run("inspect", q, columns=width)
    assert shown.exit_code == 0
    lines = shown.stdout.splitlines()
    cells = check_rows(lines[1:], names, width)
    if width == 120:
        assert cells == names


@pytest.mark.parametrize("width", [60, 80, 120])
def test_report_per_tensor_fits_one_line_per_row(checkpoint, width):
    path, _, quantized = checkpoint
    result = run(
        "report",
        path,
        "--per-tensor",
        "--bits",
        "4",
        "--scheme",
        "absmax",
        "--granularity",
        "group",
        columns=width,
    )
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(cell_len(line) <= width for line in lines)
    start = next(i for i, line in enumerate(lines) if line.startswith("─")) + 1
    check_rows(lines[start - 1 :], quantized, width)
    assert all("absmax i4 g128" in line for line in lines[start : start + len(quantized)])


def test_long_names_are_not_wrapped_at_80_columns_as_they_were(checkpoint, tmp_path):
    """The 80-column table of 107 tensors: 107 rows plus a few lines around them, not a
    name broken into pieces over several lines."""
    path, names, _ = checkpoint
    result = run("compress", path, "-o", tmp_path / "q.safetensors", columns=80)
    # title, header, 2 rules, total, notes and summary (a few wrapped): not 585 lines
    assert len(result.stderr.splitlines()) <= len(names) + 15


def test_sizes_in_binary_units_and_the_summary_line(checkpoint, tmp_path):
    path, _, _ = checkpoint
    result = run("compress", path, "-o", tmp_path / "q.safetensors", columns=120)
    summary = result.stderr.splitlines()[-1]
    doc = json.loads(
        run(
            "compress", path, "-o", tmp_path / "q2.safetensors", "--json", "--quiet", columns=120
        ).stdout
    )["totals"]
    ratio = doc["bytes_in"] / doc["bytes_out"]
    assert f"{human_bytes(doc['bytes_in'])} -> {human_bytes(doc['bytes_out'])}" in summary
    assert f"({ratio:.2f}x smaller)" in summary
    assert ">" not in summary.replace("->", "")
    total = next(line for line in result.stderr.splitlines() if line.startswith("total "))
    assert total.split()[1:] == [
        *human_bytes(doc["bytes_in"]).split(),
        *human_bytes(doc["bytes_out"]).split(),
    ]


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (10 * 1024 - 1, "10 KiB"),
        (117 * 1024, "117 KiB"),
        (1024 * 1024 - 1, "1.0 MiB"),
        (3 * 1024**3 // 2, "1.5 GiB"),
    ],
)
def test_human_bytes(n, text):
    assert human_bytes(n) == text


def test_a_file_that_grows_says_larger(tmp_path):
    """Groups of one element: a float32 scale per int8 code, 5 bytes for each 4."""
    x = np.random.default_rng(0).normal(0, 1, (16, 64)).astype(np.float32)
    np.save(tmp_path / "w.npy", x)
    result = run(
        "compress",
        tmp_path / "w.npy",
        "-o",
        tmp_path / "q.safetensors",
        "--granularity",
        "group",
        "--group-size",
        "1",
        columns=100,
    )
    assert result.exit_code == 0, result.stderr
    summary = result.stderr.splitlines()[-1]
    assert "4.0 KiB -> 5.0 KiB (1.25x larger)" in summary
    assert "smaller" not in summary


# -- natural order -------------------------------------------------------------------------


def test_natural_order_everywhere(checkpoint, tmp_path):
    path, names, quantized = checkpoint
    q = tmp_path / "q.safetensors"
    doc = json.loads(run("compress", path, "-o", q, "--json", "--quiet", columns=120).stdout)
    assert [t["tensor"] for t in doc["tensors"]] == names
    doc = json.loads(run("inspect", q, "--json", columns=120).stdout)
    assert [t["tensor"] for t in doc["tensors"]] == names
    doc = json.loads(
        run(
            "report",
            path,
            "--per-tensor",
            "--bits",
            "8",
            "--scheme",
            "absmax",
            "--granularity",
            "channel",
            "--format",
            "json",
            columns=120,
        ).stdout
    )
    assert [r["tensor"] for r in doc["results"]] == quantized
    layer_order = [int(n.split(".")[2]) for n in quantized if n.startswith("model.layers.")]
    assert layer_order == sorted(layer_order) and layer_order[-1] == LAYERS - 1


# -- the legend and colour -----------------------------------------------------------------


def test_legend_follows_what_the_terminal_shows():
    args = ("report", SEED, "--bits", "8", "--granularity", "tensor")

    def words(text: str) -> str:
        return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())

    colour = run(*args, columns=120, env={"NO_COLOR": None, "FORCE_COLOR": "1", "TERM": "xterm"})
    assert "best of each column in bold green" in words(colour.stdout)
    assert "\x1b[1;32m" in colour.stdout  # bold green
    no_colour = run(*args, columns=120, env={"FORCE_COLOR": "1", "TERM": "xterm"})  # NO_COLOR=1
    assert "best of each column in bold." in words(no_colour.stdout)
    assert "green" not in no_colour.stdout
    assert "\x1b[32m" not in no_colour.stdout and "\x1b[1;32m" not in no_colour.stdout
    piped = run(*args, columns=120)
    assert "best of each column" not in piped.stdout and "\x1b[" not in piped.stdout


# -- the renderer's rules ------------------------------------------------------------------

COLUMNS = [
    Column("tensor", name=True),
    Column("a", drop=1),
    Column("b", "right", drop=3),
    Column("c", drop=2),
    Column("empty", drop=9),
]
ROWS = [["layers.17.q_proj.weight", "aaaaaaaa", "bbbbbbbb", "cccccccc", ""]]  # 23 + 3 x 8


@pytest.mark.parametrize(
    ("width", "hidden", "gap", "widths"),
    [
        (53, (), 2, (23, 8, 8, 8)),  # 23 + 24 + 3 gaps of 2
        (50, (), 1, (23, 8, 8, 8)),  # gaps of 1 before leaving a column out
        (49, (2,), 2, (23, 8, 8)),  # b has the highest drop rank
        (41, (2,), 1, (23, 8, 8)),
        (40, (2, 3), 2, (23, 8)),  # then c
        (32, (2, 3), 1, (23, 8)),
        (31, (1, 2, 3), 2, (23,)),  # then a; "empty" is never shown nor reported
        (12, (1, 2, 3), 1, (12,)),  # the name is cut when nothing else can go
    ],
)
def test_columns_are_left_out_by_drop_rank(width, hidden, gap, widths):
    layout = fit(COLUMNS, ROWS, width)
    assert (layout.hidden, layout.gap, layout.widths) == (hidden, gap, widths)
    assert layout.shortened == (widths[0] < 23)
    assert layout.width <= width


def test_a_long_name_is_cut_to_keep_a_column():
    """A column stays while the name keeps at least NAME_MIN (30) cells."""
    rows = [["model.layers.17.self_attn.q_proj.weight", "aaaaaaaa", "", "", ""]]
    assert fit(COLUMNS, rows, 80).widths == (39, 8)
    kept = fit(COLUMNS, rows, 40)
    assert (kept.hidden, kept.widths, kept.gap, kept.shortened) == ((), (30, 8), 2, True)
    gone = fit(COLUMNS, rows, 38)
    assert (gone.hidden, gone.widths, gone.shortened) == ((1,), (38,), True)


@pytest.mark.parametrize("width", range(1, 50))
def test_lines_never_exceed_the_width(width):
    lines, _ = table_lines(COLUMNS, ROWS * 3, width, footer=[["total", "", "1", "", ""]])
    assert all(cell_len(line.plain) <= width for line in lines)
    assert len(lines) == 1 + 1 + 3 + 1 + 1  # header, rule, rows, rule, footer


@pytest.mark.parametrize(
    ("name", "width", "want"),
    [
        ("model.layers.17.self_attn.q_proj.weight", 30, "model.layers.17.…q_proj.weight"),
        ("model.layers.17.self_attn.q_proj.weight", 33, "model.…17.self_attn.q_proj.weight"),
        ("model.layers.0.mlp.down_proj.weight", 33, "model.layers.0.…down_proj.weight"),
        ("lm_head.weight", 14, "lm_head.weight"),
    ],
)
def test_shorten_keeps_numbers_and_the_last_component(name, width, want):
    assert shorten(name, width) == want


@pytest.mark.parametrize("width", range(3, 45))
def test_shorten_is_a_middle_cut_within_the_width(width):
    for name in ("model.layers.17.self_attn.q_proj.weight", "x" * 40, "a.b.c.d.e.f.g.h.i.j.k"):
        cut = shorten(name, width)
        assert cell_len(cut) <= width
        assert is_whole_or_middle_cut(cut, name)


def test_control_characters_cannot_split_a_row():
    lines, _ = table_lines([Column("tensor", name=True)], [["evil\nname\x1b[31m"]], 40)
    assert lines[2].plain == "evil\\nname\\x1b[31m"
