"""Options a new user meets in the first hour: defaults that depend on the bits, options that
would do nothing, tensor patterns, spellings, the environment, help texts and the terminal.

CLI results are checked on stdout, stderr and the exit code separately; files are read back
with the safetensors library, not with quant.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file
from typer.testing import CliRunner

from quantcli.cli import app
from quantcli.cli.histogram import _bars
from quantcli.core.parallel import thread_count
from quantcli.errors import UsageError
from quantcli.select import matches, module_name, natural_key

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_weights"
TRANSFORMER = SAMPLES / "transformer.safetensors"
SEED = SAMPLES / "seed_outlier.npy"
ENV = {"COLUMNS": "100", "NO_COLOR": "1"}


def run(*args, env: dict | None = None):
    result = CliRunner().invoke(app, [str(a) for a in args], env={**ENV, **(env or {})})
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def ok(*args, env: dict | None = None):
    result = run(*args, env=env)
    assert result.exit_code == 0, (result.exit_code, result.stderr)
    return result


def fails(result, code: int, *fragments: str) -> str:
    """Exit ``code``, nothing on stdout, one ``Error:`` line on stderr holding ``fragments``."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def stored_specs(path) -> dict[str, dict]:
    with safe_open(str(path), "numpy") as f:
        return json.loads(f.metadata()["quant.tensors"])


def compress_doc(tmp_path, *args) -> dict:
    out = tmp_path / "q.safetensors"
    result = ok("compress", TRANSFORMER, "-o", out, "--json", "--quiet", "--force", *args)
    return json.loads(result.stdout)


def decisions(doc: dict) -> dict[str, str | None]:
    """tensor -> None when quantized, else the reason it was kept."""
    return {t["tensor"]: t["reason"] for t in doc["tensors"]}


# -- help ----------------------------------------------------------------------------------


def test_decompress_output_help_says_what_decompress_does():
    text = " ".join(ok("decompress", "--help").stdout.split())
    assert "named after the scheme" not in text
    assert "model.q8.safetensors -> model.q8.restored.safetensors" in text
    compress = " ".join(ok("compress", "--help").stdout.split())
    assert "named after the scheme" in compress
    assert "group at 4 bits and below, channel above" in compress


# -- granularity defaults follow the bits ---------------------------------------------------


@pytest.mark.parametrize(
    ("args", "granularity", "group_size"),
    [
        (["--bits", "4"], "group", 128),
        (["--bits", "2"], "group", 128),
        (["--bits", "3", "--group-size", "32"], "group", 32),
        (["--bits", "5"], "channel", None),
        ([], "channel", None),
        (["--bits", "4", "--granularity", "channel"], "channel", None),
        (["--bits", "4", "--granularity", "tensor"], "tensor", None),
        (["--bits", "8", "--granularity", "group", "--group-size", "64"], "group", 64),
    ],
)
def test_granularity_default_depends_on_bits(tmp_path, args, granularity, group_size):
    doc = compress_doc(tmp_path, *args)
    specs = stored_specs(tmp_path / "q.safetensors")
    spec = specs["model.layers.0.mlp.up_proj.weight"]
    assert spec["granularity"] == granularity
    if group_size:
        assert spec["group_size"] == group_size
    assert {t["spec"]["granularity"] for t in doc["tensors"] if t["quantized"]} == {granularity}


# -- options that would do nothing ---------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (
            ["--group-size", "64"],
            [
                "--group-size 64 without --granularity group",
                "default granularity at 8 bits, channel",
                "add --granularity group",
            ],
        ),
        (
            ["--bits", "4", "--granularity", "channel", "--group-size", "32"],
            ["--group-size 32 without --granularity group", "--granularity channel has no groups"],
        ),
        (
            ["--bits", "4", "--axis", "1"],
            [
                "--axis 1 without --granularity channel",
                "default granularity at 4 bits, group",
                "add --granularity channel",
            ],
        ),
        (["--granularity", "tensor", "--axis", "0"], ["--axis 0 without --granularity channel"]),
        (
            ["--percentile", "99.9"],
            ["--percentile 99.9 without --calibration percentile", "add --calibration percentile"],
        ),
    ],
)
def test_an_option_that_does_nothing_is_a_usage_error(tmp_path, args, fragments):
    out = tmp_path / "q.safetensors"
    fails(run("compress", TRANSFORMER, "-o", out, *args), 2, *fragments)
    assert not out.exists()


def test_the_same_options_where_they_do_something(tmp_path):
    compress_doc(tmp_path, "--bits", "4", "--group-size", "64")
    compress_doc(tmp_path, "--bits", "4", "--granularity", "channel", "--axis", "1")
    compress_doc(tmp_path, "--calibration", "percentile", "--percentile", "99.9")
    spec = stored_specs(tmp_path / "q.safetensors")["lm_head.weight"]
    assert spec["calibration"] == "percentile" and spec["percentile"] == 99.9


# -- patterns ------------------------------------------------------------------------------


def test_a_pattern_matches_a_tensor_or_its_module():
    assert module_name("lm_head.weight") == "lm_head"
    assert module_name("step") == "step"
    assert matches("lm_head.weight", "lm_head")
    assert matches("lm_head.weight", "lm_head.weight")
    assert matches("model.layers.0.mlp.up_proj.weight", "model.layers.*.mlp.up_proj")
    assert matches("model.layers.0.mlp.up_proj.weight", "*.mlp.*")
    assert not matches("lm_head.weight", "lm")
    assert not matches("model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp")


def test_exclude_by_module_name(tmp_path):
    got = decisions(compress_doc(tmp_path, "--exclude", "lm_head"))
    assert got["lm_head.weight"] == "kept: --exclude"
    assert got["model.embed_tokens.weight"] is None
    got = decisions(compress_doc(tmp_path, "--include", "model.layers.0.mlp.up_proj"))
    assert [n for n, reason in got.items() if reason is None] == [
        "model.layers.0.mlp.up_proj.weight"
    ]


@pytest.mark.parametrize(
    ("option", "pattern", "hint"),
    [
        ("--include", "nothing.matches", ""),
        ("--exclude", "lm-head", "did you mean 'lm_head'?"),
        ("--include", "*.mlp.gate_proj.*", ""),
    ],
)
def test_a_pattern_that_matches_nothing_is_an_error(tmp_path, option, pattern, hint):
    out = tmp_path / "q.safetensors"
    line = fails(
        run("compress", TRANSFORMER, "-o", out, option, pattern),
        2,
        f"{option} '{pattern}' matches no tensor in {TRANSFORMER}",
        hint,
    )
    assert "quant inspect" in line
    assert not out.exists()
    fails(run("report", TRANSFORMER, option, pattern), 2, f"{option} '{pattern}' matches no")


def test_against_checks_its_patterns_too(tmp_path):
    q = tmp_path / "q.safetensors"
    ok("compress", TRANSFORMER, "-o", q, "--quiet")
    fails(run("report", TRANSFORMER, "--against", q, "--include", "nope*"), 2, "'nope*'")
    doc = json.loads(
        ok(
            "report",
            TRANSFORMER,
            "--against",
            q,
            "--exclude",
            "lm_head",
            "--per-tensor",
            "--format",
            "json",
        ).stdout
    )
    assert "lm_head.weight" not in {r["tensor"] for r in doc["results"]}
    assert len(doc["results"]) == 13


# -- a very low SQNR cannot pass unnoticed ---------------------------------------------------


@pytest.fixture
def outlier_file(tmp_path) -> Path:
    """Gaussian weights and one large outlier: one scale per tensor at 4 bits has a step of
    30/7, which sends most values to 0 (SQNR about 1 dB); per group of 128 it is fine."""
    rng = np.random.default_rng(3)
    w = rng.normal(0, 1, (64, 128)).astype(np.float32)
    w[0, 0] = 30.0
    path = tmp_path / "outlier.safetensors"
    save_file(
        {"good.weight": rng.normal(0, 1, (64, 128)).astype(np.float32), "bad.weight": w}, str(path)
    )
    return path


def test_low_sqnr_warning_names_the_tensor(outlier_file, tmp_path):
    args = ("compress", outlier_file, "-o", tmp_path / "q.safetensors", "--bits", "4")
    result = ok(*args, "--granularity", "tensor", "--json")
    doc = json.loads(result.stdout)
    sqnr = {t["tensor"]: t["sqnr_db"] for t in doc["tensors"]}
    assert sqnr["bad.weight"] < 10 < sqnr["good.weight"]
    warning = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert warning == [
        f"Warning: very low SQNR (below 10 dB) in 1 tensor: bad.weight {sqnr['bad.weight']:.1f} "
        "dB; the weights are badly damaged: use more bits or smaller groups (e.g. "
        "--granularity group --group-size 32)"
    ]
    quiet = ok(*args, "--granularity", "tensor", "--quiet", "--force")
    assert quiet.stderr.startswith("Warning: very low SQNR") and quiet.stderr.count("\n") == 1
    fine = ok(*args, "--force")  # groups of 128: no warning
    assert "Warning" not in fine.stderr


def test_low_sqnr_warning_is_coloured_on_a_terminal(outlier_file, tmp_path):
    args = (
        "compress",
        outlier_file,
        "-o",
        tmp_path / "q.safetensors",
        "--bits",
        "4",
        "--granularity",
        "tensor",
        "--quiet",
    )
    coloured = ok(*args, env={"NO_COLOR": None, "FORCE_COLOR": "1", "TERM": "xterm"})
    assert "\x1b[1;33mWarning: very low SQNR" in coloured.stderr
    plain = ok(*args, "--force")
    assert "\x1b[" not in plain.stderr


# -- spellings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "dtype"),
    [
        ("fp16", "float16"),
        ("F16", "float16"),
        ("bf16", "bfloat16"),
        ("f32", "float32"),
        ("fp32", "float32"),
        ("float16", "float16"),
    ],
)
def test_scale_dtype_spellings(tmp_path, spelling, dtype):
    compress_doc(tmp_path, "--scale-dtype", spelling)
    assert stored_specs(tmp_path / "q.safetensors")["lm_head.weight"]["scale_dtype"] == dtype


def test_sort_and_dtype_spellings(tmp_path):
    base = ("report", TRANSFORMER, "--per-tensor", "--format", "json", "--bits", "4")
    by_alias = json.loads(ok(*base, "--sort", "sqnr").stdout)
    by_name = json.loads(ok(*base, "--sort", "sqnr_db").stdout)
    assert by_alias["sort"] == "sqnr_db" and by_alias["results"] == by_name["results"]
    csv_md = ok("report", SEED, "--bits", "8", "--format", "md").stdout
    assert csv_md.startswith("| label |")
    fails(run("report", SEED, "--sort", "sqrn"), 2, "--sort")

    q = tmp_path / "q.safetensors"
    ok("compress", TRANSFORMER, "-o", q, "--quiet")
    ok("decompress", q, "-o", tmp_path / "r.safetensors", "--dtype", "fp16", "--quiet")
    with safe_open(str(tmp_path / "r.safetensors"), "numpy") as f:
        assert f.get_tensor("lm_head.weight").dtype == np.float16


# -- QUANT_THREADS -------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["abc", "0", "-1", "1.5", "２"])
def test_bad_quant_threads_is_a_usage_error(tmp_path, value):
    out = tmp_path / "q.safetensors"
    fails(
        run("compress", TRANSFORMER, "-o", out, env={"QUANT_THREADS": value}),
        2,
        f"QUANT_THREADS={value!r} in the environment",
        "positive whole number",
    )
    assert not out.exists()


def test_quant_threads_values(monkeypatch):
    for value, threads in (("", 1), (" 3 ", 3), ("2", 2)):
        monkeypatch.setenv("QUANT_THREADS", value)
        assert thread_count() == threads
    monkeypatch.delenv("QUANT_THREADS")
    assert thread_count() == 1
    monkeypatch.setenv("QUANT_THREADS", "zero")
    with pytest.raises(UsageError):
        thread_count()


# -- inspect shows where a quantized file came from -----------------------------------------


def test_inspect_shows_the_source_metadata(tmp_path):
    q = tmp_path / "q.safetensors"
    ok("compress", TRANSFORMER, "-o", q, "--quiet")
    with safe_open(str(TRANSFORMER), "numpy") as f:
        source = f.metadata()
    doc = json.loads(ok("inspect", q, "--json").stdout)
    assert doc["source_metadata"] == source
    table = ok("inspect", q).stdout
    assert "source metadata (restored by decompress):" in table
    for key, value in source.items():
        assert f"  {key}: {value}" in table
    plain = json.loads(ok("inspect", TRANSFORMER, "--json").stdout)
    assert plain["source_metadata"] is None and plain["metadata"] == source


def test_inspect_metadata_is_a_few_lines(tmp_path):
    meta = {f"key{i}": f"value {i} " + "x" * 300 for i in range(12)}
    path = tmp_path / "m.safetensors"
    save_file({"w": np.ones((2, 2), np.float32)}, str(path), metadata=meta)
    out = ok("inspect", path).stdout.splitlines()
    shown = [line for line in out if line.startswith("  key")]
    assert [line.split(":")[0].strip() for line in shown] == [f"key{i}" for i in range(8)]
    assert all(len(line) <= 100 for line in out)
    assert "  ... 4 more (quant inspect --json shows all)" in out


# -- the histogram's log scale --------------------------------------------------------------


def test_log_scale_bars_follow_log_counts():
    counts = np.array([10_000, 1, 100, 0], np.int64)
    linear = _bars(counts)
    log = _bars(counts, log=True)

    # in eighths of a cell, 8 lines of 8: linear gives both small bins the minimum (1 eighth)
    # while log gives round(log(1 + c) / log(1 + 10000) * 64)
    def eighths(lines, i):
        blocks = " ▁▂▃▄▅▆▇█"
        return sum(blocks.index(line[i]) for line in lines)

    assert [eighths(linear, i) for i in range(4)] == [64, 1, 1, 0]
    want = [round(np.log1p(c) / np.log1p(10_000) * 64) if c else 0 for c in counts]
    assert [eighths(log, i) for i in range(4)] == want
    assert want[1] < want[2] < want[0]


def test_hist_scale_option():
    args = (
        "report",
        SEED,
        "--hist",
        "seed_outlier",
        "--bits",
        "4",
        "--granularity",
        "tensor",
        "--scheme",
        "zeropoint",
    )
    linear = ok(*args).stdout
    log = ok(*args, "--hist-scale", "log").stdout
    assert "log scale" in " ".join(log.split("│")[0].split()) and "log scale" not in linear

    def last_bin(text: str) -> str:
        """The outlier's bin (the last), top line first."""
        bars = [line for line in text.splitlines() if "│" in line]
        assert len(bars) == 8
        return "".join(line.split("│", 1)[1][-1] for line in bars)

    doc = json.loads(ok(*args, "--hist-scale", "log", "--format", "json").stdout)
    assert doc["scale"] == "log"
    counts = doc["counts"]
    assert counts[-1] == 1  # the outlier at 1000, alone in the last bin
    # linearly the smallest visible block; on the log scale log(2) / log(1 + peak) of 8 lines
    assert last_bin(linear) == "       ▁"
    eighths = round(np.log1p(1) / np.log1p(max(counts)) * 64)
    assert 1 < eighths < 8
    assert last_bin(log) == "       " + " ▁▂▃▄▅▆▇█"[eighths]
    fails(run("report", SEED, "--hist-scale", "log"), 2, "--hist-scale log without --hist")


# -- natural order -------------------------------------------------------------------------


def test_natural_key():
    names = ["layers.10.w", "layers.2.w", "layers.1.w", "layers.11.w", "lm_head", "layers.1.b"]
    assert sorted(names, key=natural_key) == [
        "layers.1.b",
        "layers.1.w",
        "layers.2.w",
        "layers.10.w",
        "layers.11.w",
        "lm_head",
    ]
    assert sorted(["a01", "a1", "a001"], key=natural_key) == ["a001", "a01", "a1"]


# -- a closed stderr pipe does not fail a finished job ---------------------------------------


def test_closed_stderr_pipe_after_the_work_is_done(tmp_path):
    """``quant compress ... 2>&1 | head -2``: the reader goes away before the report is
    printed; the file is complete and the exit status is 0."""
    out = tmp_path / "q.safetensors"
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "quantcli", "compress", str(TRANSFORMER), "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    proc.stderr.close()  # before quant writes anything there
    assert proc.wait(timeout=120) == 0
    with safe_open(str(out), "numpy") as f:
        assert "quant.tensors" in f.metadata()

    # through a shell, as typed
    shell = subprocess.run(
        f"{sys.executable} -m quantcli compress {TRANSFORMER} -o {out} --force 2>&1 | head -2;"
        " echo ${PIPESTATUS[0]}",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    lines = shell.stdout.splitlines()
    assert len(lines) == 3 and lines[-1] == "0", shell.stdout + shell.stderr
    assert shell.stderr == ""


# -- the README names the package -----------------------------------------------------------


def test_readme_names_the_package():
    text = (REPO / "README.md").read_text()
    intro = text.split("## ", 1)[0]
    assert "`quantcli`" in intro and "python -m quantcli" in intro
