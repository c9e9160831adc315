"""quant report: the library sweep, --against, --hist, every output format and the CLI.

Expected numbers are computed here independently of quantcli.ops and quantcli.io: files are
loaded with NumPy / safetensors and run through quantcli.core directly.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from quantcli.cli import app
from quantcli.core import ErrorStats, QuantSpec, clipped_mask, packed_length, param_shape, quantize
from quantcli.ops import report as ops

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = REPO_ROOT / "sample_weights"
SEED = str(SAMPLES / "seed_outlier.npy")
TRANSFORMER = str(SAMPLES / "transformer.safetensors")
SEED_ARGS = (
    "--scheme absmax --scheme zeropoint --bits 8 --granularity tensor "
    "--calibration minmax --calibration percentile"
).split()
METRICS = (
    "mse rmse max_abs_error sqnr_db cosine clipped_fraction mse_unclipped bits_per_weight bytes"
).split()
REQUIRED_KEYS = {"scheme", "bits", "granularity", "group_size", "calibration", *METRICS}


def run(*args, columns: int = 80):
    """Invoke ``quant`` with a fixed terminal width; stdout and stderr stay separate."""
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": str(columns)})
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def report_json(*args) -> dict:
    result = run("report", *args, "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    return json.loads(result.stdout, parse_constant=_no_constants)


def _no_constants(name):
    raise AssertionError(f"{name} is not valid JSON")


def by_label(rows: list[dict]) -> dict[str, dict]:
    return {row["label"]: row for row in rows}


# -- independent expectations -------------------------------------------------------------


def stored_bytes(shape: tuple[int, ...], spec: QuantSpec) -> int:
    """Bytes compress stores for one tensor: codes (packed below 8 bits), scales, zero points."""
    lead = int(np.prod(shape[:-1], dtype=np.int64))
    codes = lead * (shape[-1] if spec.bits == 8 else packed_length(shape[-1], spec.bits))
    n_params = int(np.prod(param_shape(shape, spec)))
    scale = {"float32": 4, "float16": 2, "bfloat16": 2}[spec.scale_dtype]
    return codes + n_params * (scale + (1 if spec.has_zero_point else 0))


def expected(path: str, spec: QuantSpec):
    """(per-tensor {name: (stats, bytes)}, summary stats, quantized bytes, kept bytes) of the
    tensors compress quantizes by default (float, >= 2-D, >= 1024 elements)."""
    tensors = load_file(path)
    per_tensor, kept_bytes = {}, 0
    for name, x in tensors.items():
        if x.dtype.kind != "f" or x.ndim < 2 or x.size < 1024:
            kept_bytes += x.nbytes
            continue
        qt = quantize(x, spec, name)
        stats = ErrorStats.of(x, qt.dequantize(), clipped_mask(x, qt))
        per_tensor[name] = (stats, stored_bytes(x.shape, spec))
    total = ErrorStats()
    for stats, _ in per_tensor.values():
        total = total.merge(stats)
    quantized_bytes = sum(b for _, b in per_tensor.values())
    return per_tensor, total, quantized_bytes, kept_bytes


def metrics_of(stats: ErrorStats, quantized_bytes: int, total_bytes: int) -> dict:
    return {
        **stats.as_dict(),
        "bits_per_weight": 8.0 * quantized_bytes / stats.count,
        "bytes": total_bytes,
    }


SPECS = {
    "absmax i8 ch": QuantSpec("absmax", 8, "channel"),
    "zp u4 g64": QuantSpec("zeropoint", 4, "group", group_size=64, search="none"),
    "zp u4 g64 mse": QuantSpec("zeropoint", 4, "group", group_size=64, search="mse"),
    "absmax i3 t p99.9": QuantSpec(
        "absmax", 3, "tensor", calibration="percentile", percentile=99.9
    ),
}


def assert_metrics(row: dict, want: dict, rel: float = 1e-12) -> None:
    for key, value in want.items():
        got = row[key]
        if math.isinf(value):
            assert got is None or got == value, key
        else:
            assert got == pytest.approx(value, rel=rel, abs=1e-300), key


# -- the seed notebook's comparison --------------------------------------------------------


def test_seed_comparison_reproduces_the_notebook():
    configs = ops.configs_from_options(
        ["absmax", "zeropoint"], [8], ["tensor"], [], ["minmax", "percentile"]
    )
    result = ops.sweep(SEED, configs)
    rows = {r.config.short_label(): r for r in result.summary}
    assert set(rows) == {"absmax i8 t", "zp u8 t", "absmax i8 t p99.99", "zp u8 t p99.99"}
    zp, absmax, zp_pct = rows["zp u8 t"], rows["absmax i8 t"], rows["zp u8 t p99.99"]
    # zeropoint beats absmax at 8 bits: D^2/12 with D = 1050/255 vs 1000/127
    assert zp.mse == pytest.approx(1.41, abs=0.02)
    assert absmax.mse == pytest.approx(5.1, abs=0.1)
    assert zp.mse < absmax.mse
    # percentile clipping: far worse with the outlier, far better without it
    assert zp_pct.mse == pytest.approx(72.34, abs=0.5)
    assert zp_pct.mse_unclipped == pytest.approx(0.05, abs=0.005)
    assert zp_pct.clipped_fraction == pytest.approx(1e-4)
    assert zp.clipped_fraction == 0 and zp.mse_unclipped == zp.mse


def test_seed_comparison_through_the_cli():
    doc = report_json(SEED, *SEED_ARGS)
    rows = by_label(doc["summary"])
    assert rows["zp u8 t"]["mse"] == pytest.approx(1.41, abs=0.02)
    assert rows["absmax i8 t"]["mse"] == pytest.approx(5.1, abs=0.1)
    assert rows["zp u8 t p99.99"]["mse"] == pytest.approx(72.34, abs=0.5)
    assert rows["zp u8 t p99.99"]["mse_unclipped"] == pytest.approx(0.05, abs=0.005)
    table = run("report", SEED, *SEED_ARGS)
    assert table.exit_code == 0
    line = next(s for s in table.stdout.splitlines() if s.startswith("zp u8 t "))
    assert "1.42" in line


# -- configurations -------------------------------------------------------------------------


def test_default_sweep():
    labels = [c.short_label() for c in ops.configs_from_options()]
    # the default search (auto): mse at 4 bits
    assert labels == [
        "absmax i8 ch",
        "absmax i8 g128",
        "absmax i4 ch mse",
        "absmax i4 g128 mse",
        "zp u8 ch",
        "zp u8 g128",
        "zp u4 ch mse",
        "zp u4 g128 mse",
    ]
    assert all(c.calibration == "minmax" for c in ops.configs_from_options())


def test_repeated_options_form_the_cartesian_product():
    configs = ops.configs_from_options(
        ["zeropoint"],
        [4, 3],
        ["group", "channel"],
        [32, 128],
        ["minmax", "percentile"],
        percentile=99.9,
    )
    # (2 group sizes + 1 channel) x 2 bits x 2 calibrations
    assert len(configs) == 12
    assert {c.percentile for c in configs if c.calibration == "percentile"} == {99.9}
    assert {c.group_size for c in configs if c.granularity == "group"} == {32, 128}


def test_options_no_configuration_uses_are_refused():
    assert run("report", SEED, "--percentile", "99.9").exit_code == 2
    assert run("report", SEED, "--granularity", "channel", "--group-size", "64").exit_code == 2


# -- formats parse back to the library's own numbers -------------------------------------


@pytest.mark.parametrize("label", list(SPECS))
def test_json_matches_independent_metrics(label):
    spec = SPECS[label]
    per_tensor, total, qbytes, kept = expected(TRANSFORMER, spec)
    doc = report_json(TRANSFORMER, *spec_args(spec), "--per-tensor")
    assert doc["input"] == TRANSFORMER
    (summary,) = doc["summary"]
    assert summary["label"] == label
    assert REQUIRED_KEYS <= set(summary)
    assert_metrics(summary, metrics_of(total, qbytes, qbytes + kept))
    assert summary["bytes_in"] == sum(x.nbytes for x in load_file(TRANSFORMER).values())
    assert {r["tensor"] for r in doc["results"]} == set(per_tensor)
    for row in doc["results"]:
        assert REQUIRED_KEYS | {"tensor"} <= set(row)
        stats, nbytes = per_tensor[row["tensor"]]
        assert_metrics(row, metrics_of(stats, nbytes, nbytes))


def spec_args(spec: QuantSpec) -> list[str]:
    args = ["--scheme", spec.scheme, "--bits", str(spec.bits), "--granularity", spec.granularity]
    if spec.granularity == "group":
        args += ["--group-size", str(spec.group_size)]
    args += ["--calibration", spec.calibration]
    if spec.calibration == "percentile":
        args += ["--percentile", str(spec.percentile)]
    return args + ["--search", spec.search]


def test_csv_matches_independent_metrics():
    spec = SPECS["zp u4 g64"]
    per_tensor, total, qbytes, kept = expected(TRANSFORMER, spec)
    result = run("report", TRANSFORMER, *spec_args(spec), "--format", "csv", "--per-tensor")
    assert result.exit_code == 0 and result.stderr == ""
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == len(per_tensor)
    for row in rows:
        assert REQUIRED_KEYS | {"tensor"} <= set(row)
        assert row["scheme"] == "zeropoint" and row["bits"] == "4" and row["group_size"] == "64"
        stats, nbytes = per_tensor[row["tensor"]]
        want = metrics_of(stats, nbytes, nbytes)
        # full precision: the text parses back to the exact float
        assert {k: float(row[k]) for k in want} == pytest.approx(want, rel=1e-15)
    summary = run("report", TRANSFORMER, *spec_args(spec), "--format", "csv")
    (row,) = csv.DictReader(io.StringIO(summary.stdout))
    want = metrics_of(total, qbytes, qbytes + kept)
    assert {k: float(row[k]) for k in want} == pytest.approx(want, rel=1e-15)


def test_markdown_matches_independent_metrics():
    spec = SPECS["absmax i3 t p99.9"]
    _, total, qbytes, kept = expected(TRANSFORMER, spec)
    result = run("report", TRANSFORMER, *spec_args(spec), "--format", "markdown")
    assert result.exit_code == 0 and result.stderr == ""
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3 and re.fullmatch(r"\|[-:|]+\|", lines[1])
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    row = dict(zip(header, cells))
    assert REQUIRED_KEYS <= set(row)
    assert row["calibration"] == "percentile" and row["percentile"] == "99.9"
    want = metrics_of(total, qbytes, qbytes + kept)
    assert {k: float(row[k]) for k in want} == pytest.approx(want, rel=1e-5)


def test_json_is_strict_when_the_reconstruction_is_exact(tmp_path):
    # multiples of 0.5 up to 63.5: absmax 8-bit per tensor has scale 0.5 and is exact
    x = (np.arange(-127, 128, dtype=np.float32) * 0.5).reshape(5, 51)
    path = tmp_path / "exact.npy"
    np.save(path, x)
    doc = report_json(path, "--scheme", "absmax", "--bits", "8", "--granularity", "tensor")
    (row,) = doc["summary"]
    assert row["mse"] == 0 and row["sqnr_db"] is None and row["cosine"] == 1
    table = run("report", path, "--scheme", "absmax", "--bits", "8", "--granularity", "tensor")
    assert " inf " in table.stdout


# -- --against -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source, args",
    [
        (TRANSFORMER, "--scheme zeropoint --bits 4 --granularity group --group-size 64".split()),
        # the 1-D q_proj biases fall back to per-tensor and still belong to the channel config
        (
            TRANSFORMER,
            "--scheme absmax --bits 8 --granularity channel --include *proj* "
            "--min-elements 0".split(),
        ),
        (SEED, "--scheme absmax --bits 6 --granularity tensor".split()),
    ],
)
def test_against_agrees_with_a_sweep_of_the_same_configuration(tmp_path, source, args):
    quantized = tmp_path / "q.safetensors"
    compressed = run("compress", source, "-o", quantized, *args, "--quiet")
    assert compressed.exit_code == 0, compressed.stderr
    swept = report_json(source, *args, "--per-tensor")
    against = report_json(source, "--against", quantized, "--per-tensor")
    assert against["against"] == str(quantized)
    (s_row,), (a_row,) = swept["summary"], against["summary"]
    assert a_row["label"] == s_row["label"]
    # a searched file (the default search at 4 bits) does not record the range it clipped to
    searched = a_row["label"].endswith(" mse")
    unknown = {"clipped_fraction", "mse_unclipped"} if searched else set()
    for key in METRICS + ["bytes_in", "ratio", "tensors"]:
        assert a_row[key] == (None if key in unknown else s_row[key]), key
    assert [r["tensor"] for r in against["results"]] == [r["tensor"] for r in swept["results"]]
    for a, s in zip(against["results"], swept["results"]):
        for key in METRICS:
            assert a[key] == (None if key in unknown else s[key]), (a["tensor"], key)


def test_against_a_percentile_file_does_not_claim_to_know_the_clipping(tmp_path):
    quantized = tmp_path / "q.safetensors"
    args = "--scheme zeropoint --bits 8 --granularity tensor --calibration percentile".split()
    assert run("compress", SEED, "-o", quantized, *args, "--quiet").exit_code == 0
    swept = report_json(SEED, *args)
    against = report_json(SEED, "--against", quantized)
    (s_row,), (a_row,) = swept["summary"], against["summary"]
    assert a_row["mse"] == s_row["mse"] == pytest.approx(72.3, abs=0.5)
    assert a_row["clipped_fraction"] is None and a_row["mse_unclipped"] is None
    table = run("report", SEED, "--against", quantized)
    assert table.exit_code == 0 and "clipping ranges" in " ".join(table.stdout.split())


def test_against_a_file_that_is_not_quantized():
    result = run("report", TRANSFORMER, "--against", TRANSFORMER)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("Error: not a quantized file")
    assert result.stderr.count("\n") == 1


def test_against_refuses_sweep_options(tmp_path):
    result = run("report", TRANSFORMER, "--against", tmp_path / "q.safetensors", "--bits", "4")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: --bits with --against")


# -- --fail-below-sqnr ---------------------------------------------------------------------


def test_fail_below_sqnr_exit_codes():
    args = ["report", TRANSFORMER, "--scheme", "absmax", "--granularity", "channel"]
    low = run(*args, "--bits", "8", "--fail-below-sqnr", "30")
    assert low.exit_code == 0, low.stderr
    assert "absmax i8 ch" in low.stdout
    failed = run(*args, "--bits", "4", "--fail-below-sqnr", "30")
    assert failed.exit_code == 3
    assert "absmax i4 ch" in failed.stdout  # the report still prints
    assert failed.stderr.startswith("Error: SQNR below 30 dB in tensor ")
    assert failed.stderr.count("\n") == 1
    # json too, and the gate looks at every tensor, not only the rows shown by --top
    gated = run(
        *args, *"--bits 4 --fail-below-sqnr 30 --format json --sort sqnr_db --top 1".split()
    )
    assert gated.exit_code == 3
    assert json.loads(gated.stdout)["summary"]


# -- the table -----------------------------------------------------------------------------


def table_lines(result) -> list[str]:
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    return result.stdout.splitlines()


@pytest.mark.parametrize(
    "args",
    [
        [],
        (
            "--calibration minmax --calibration percentile --percentile 99.99 "
            "--scale-dtype float32 --scale-dtype bfloat16 --bits 4"
        ).split(),
        ["--per-tensor"],
        ["--per-tensor", "--sort", "sqnr_db", "--top", "5"],
    ],
)
def test_table_fits_80_columns_one_line_per_row(args):
    configs = ops.configs_from_options(**_config_kwargs(args))
    lines = table_lines(run("report", TRANSFORMER, *args, columns=80))
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    labels = [c.short_label() for c in configs]
    rows = [line for line in lines if any(_has_label(line, lab) for lab in labels)]
    if "--per-tensor" in args:
        n = 5 if "--top" in args else len(labels) * 14
        assert len(rows) == n
    else:
        for label in labels:
            matching = [line for line in rows if re.match(rf"{re.escape(label)}\s+[-\d.]", line)]
            assert len(matching) == 1, label
            # the row carries its numbers on the same line
            assert len(matching[0].split()) >= len(label.split()) + 5


def _has_label(line: str, label: str) -> bool:
    return re.search(rf"(^|\s){re.escape(label)}\s+[-\d.]", line) is not None


def _config_kwargs(args: list[str]) -> dict:
    def values(flag):
        return [args[i + 1] for i, a in enumerate(args) if a == flag]

    percentile = values("--percentile")
    return {
        "bits": [int(b) for b in values("--bits")],
        "calibrations": values("--calibration"),
        "percentile": float(percentile[0]) if percentile else None,
        "scale_dtypes": values("--scale-dtype"),
    }


def test_table_shows_every_column_when_wide():
    lines = table_lines(run("report", SEED, *SEED_ARGS, columns=160))
    header = " ".join(lines[1:4])
    for name in ("MSE", "RMSE", "max", "SQNR", "cos", "clip", "unclip", "bits", "bytes", "ratio"):
        assert name in header
    assert not any("Not shown" in line for line in lines)


def test_table_goes_to_stdout_and_nothing_to_stderr():
    result = run("report", SEED)
    assert result.exit_code == 0
    assert "absmax i8 ch" in result.stdout
    assert result.stderr == ""


def test_best_values_are_the_best_of_each_column():
    result = ops.sweep(
        SEED,
        ops.configs_from_options(
            ["absmax", "zeropoint"], [8], ["tensor"], [], ["minmax", "percentile"]
        ),
    )
    from quantcli.cli.report_output import best_values

    best = best_values(result.summary, ["mse", "sqnr_db", "mse_unclipped", "bits_per_weight"])
    assert best["mse"] == min(r.mse for r in result.summary)
    assert best["sqnr_db"] == max(r.sqnr_db for r in result.summary)
    assert best["mse_unclipped"] == pytest.approx(0.0511, abs=1e-3)
    assert best["bits_per_weight"] == min(r.bits_per_weight for r in result.summary)


# -- --sort and --top ----------------------------------------------------------------------


def test_sort_worst_first_and_top():
    doc = report_json(TRANSFORMER, "--per-tensor", "--sort", "sqnr_db", "--top", "4")
    sqnr = [r["sqnr_db"] for r in doc["results"]]
    assert len(sqnr) == 4 and sqnr == sorted(sqnr)
    everything = report_json(TRANSFORMER, "--per-tensor")
    assert sqnr == sorted(r["sqnr_db"] for r in everything["results"])[:4]
    assert len(doc["summary"]) == 8  # --top limits the rows shown: per tensor here

    doc = report_json(TRANSFORMER, "--sort", "mse")
    mse = [r["mse"] for r in doc["summary"]]
    assert mse == sorted(mse, reverse=True)
    doc = report_json(TRANSFORMER, "--sort", "cosine", "--top", "2")
    assert [r["label"] for r in doc["summary"]] == ["absmax i4 ch mse", "absmax i4 g128 mse"]


# -- --hist --------------------------------------------------------------------------------


def test_hist_shows_bars_and_clipping_ranges():
    args = "--scheme zeropoint --bits 8 --granularity tensor --calibration minmax --calibration"
    result = run("report", SEED, "--hist", "seed_outlier", *args.split(), "percentile")
    lines = table_lines(result)
    assert all(len(line) <= 80 for line in lines)
    assert any("█" in line for line in lines)
    marks = {
        line.split("  ")[0].strip(): line
        for line in lines
        if line.startswith("zp") and ":" not in line
    }
    assert set(marks) == {"zp u8 t", "zp u8 t p99.99"}
    # the percentile range stops near 150, far left of the outlier at 1000
    full, clipped = marks["zp u8 t"], marks["zp u8 t p99.99"]
    assert full.index("[") == clipped.index("[")
    assert clipped.index("]") < full.index("]") - 30
    assert "clip [-49.98, 150.1]" in result.stdout
    assert "MSE unclipped 0.0511" in result.stdout


def test_hist_json():
    args = "--scheme absmax --bits 4 --granularity tensor --calibration percentile".split()
    doc = report_json(SEED, "--hist", "seed_outlier", *args)
    assert sum(doc["counts"]) == 10_000
    assert len(doc["edges"]) == len(doc["counts"]) + 1
    (config,) = doc["configs"]
    assert config["clip_hi"] < 200 and config["clip_lo"] == -config["clip_hi"]
    assert len(config["levels"]) == 15  # -7..7
    (row,) = doc["results"]
    assert row["tensor"] == "seed_outlier" and row["clipped_fraction"] > 0


def test_hist_unknown_tensor():
    result = run("report", TRANSFORMER, "--hist", "no.such.weight")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ") and "'no.such.weight'" in result.stderr
    assert result.stderr.count("\n") == 1


def test_hist_refuses_csv():
    result = run("report", SEED, "--hist", "seed_outlier", "--format", "csv")
    assert result.exit_code == 2 and result.stderr.startswith("Error: --hist with --format csv")


# -- streaming -----------------------------------------------------------------------------


def test_sweep_reads_each_tensor_once(monkeypatch):
    reads: list[str] = []
    real_open = ops.open_input

    def counting_open(path):
        source = real_open(path)
        real_read = source.read

        def read(name):
            reads.append(name)
            return real_read(name)

        source.read = read
        return source

    monkeypatch.setattr(ops, "open_input", counting_open)
    seen = []
    result = ops.sweep(
        TRANSFORMER,
        ops.configs_from_options(),
        progress=lambda name, n, total: seen.append((name, n, total)),
    )
    assert len(result.results) == 14 * 8
    assert sorted(reads) == sorted(set(reads)) and len(reads) == 14  # kept tensors: never read
    assert [name for name, _, _ in seen] == reads
    assert sum(n for _, n, _ in seen) == seen[0][2]


def test_nothing_to_report():
    result = run("report", TRANSFORMER, "--min-elements", "100000000")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: no tensor to report")
    # a pattern that matches nothing is named instead (tests/test_cli_options.py)
    result = run("report", TRANSFORMER, "--include", "nothing.matches")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: --include 'nothing.matches' matches no tensor")


# -- the docs ------------------------------------------------------------------------------


def test_docs_examples_run(tmp_path, monkeypatch):
    """Every ``$ quant ...`` line of docs/report.md runs (from a copy of the repository root
    layout, so outputs land in tmp_path)."""
    shutil.copytree(SAMPLES, tmp_path / "sample_weights")
    monkeypatch.chdir(tmp_path)
    text = (REPO_ROOT / "docs" / "report.md").read_text()
    commands = re.findall(r"^\$ quant (.+)$", text, flags=re.M)
    assert any(c.startswith("report") for c in commands)
    for command in commands:
        args = shlex.split(command)
        result = run(*args, columns=80)
        want = 3 if "--fail-below-sqnr" in args else 0
        assert result.exit_code == want, (command, result.stderr)
