"""Pipes closed by their reader: a finished job is not failed by a report nobody reads, and a
binary output on stdout that was cut short is.

Real quant processes write into real pipes. "Closed early" is made certain, not raced: the
reading end is closed before quant starts (every write gets EPIPE), or the output is larger
than a pipe holds, so that quant is still writing when ``head -c`` exits.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
from processes import QUANT, run, temp_files

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX pipes, bash")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """in.npy, q.safetensors (quant compress in.npy) and q.restored.npy (quant decompress q):
    the outputs every run below must reproduce byte for byte."""
    folder = tmp_path_factory.mktemp("pipes")
    rng = np.random.default_rng(0)
    # 1 MiB of int8 codes quantized: more than a pipe holds (64 KiB on Linux)
    np.save(folder / "in.npy", rng.standard_normal((1024, 1024), dtype=np.float32))
    assert run(["compress", "in.npy", "-o", "q.safetensors"], cwd=folder).returncode == 0
    restored = run(["decompress", "q.safetensors", "-o", "q.restored.npy"], cwd=folder)
    assert restored.returncode == 0 and restored.stderr, restored.stderr  # a report to lose
    return folder


def closed_pipe() -> int:
    """The writing end of a pipe whose reader is already gone."""
    read, write = os.pipe()
    os.close(read)
    return write


def run_into(args: list, stdout, stderr, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*QUANT, *map(str, args)], stdout=stdout, stderr=stderr, cwd=cwd, timeout=300
    )


@pytest.mark.parametrize(
    "args, reference",
    [
        pytest.param(
            ["compress", "in.npy", "-o", "o1.safetensors"], "q.safetensors", id="compress"
        ),
        pytest.param(
            ["compress", "in.npy", "-o", "o2.safetensors", "--json"], "q.safetensors", id="json"
        ),
        pytest.param(
            ["decompress", "q.safetensors", "-o", "o3.npy"], "q.restored.npy", id="decompress"
        ),
    ],
)
def test_a_closed_pipe_does_not_fail_a_finished_job(folder, args, reference):
    """``quant ... 2>&1 | head -2`` with head gone before quant prints: exit 0, whole output."""
    pipe = closed_pipe()
    try:
        result = run_into(args, stdout=pipe, stderr=pipe, cwd=folder)
    finally:
        os.close(pipe)
    assert result.returncode == 0
    assert (folder / args[3]).read_bytes() == (folder / reference).read_bytes()
    assert temp_files(folder) == []


def test_head_2_on_the_report(folder):
    """The user's command line: the first two lines of the report, then head exits."""
    quant = shlex.join(QUANT)
    line = f"{quant} compress in.npy -o out.safetensors 2>&1 | head -2"
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", line], cwd=folder, capture_output=True, timeout=300
    )
    assert result.returncode == 0, result.stderr  # pipefail: quant's own exit code
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 2 and lines[0].startswith("in.npy -> out.safetensors ")
    assert (folder / "out.safetensors").read_bytes() == (folder / "q.safetensors").read_bytes()


def test_a_binary_output_cut_short_on_stdout_is_an_error(folder):
    before = sorted(p.name for p in folder.iterdir())
    pipe = closed_pipe()
    try:
        result = run_into(
            ["compress", "in.npy", "-o", "-"], stdout=pipe, stderr=subprocess.PIPE, cwd=folder
        )
    finally:
        os.close(pipe)
    assert result.returncode == 1
    err = result.stderr.decode()
    assert err.startswith("Error: broken pipe in <stdout>: ") and err.count("\n") == 1, err
    assert sorted(p.name for p in folder.iterdir()) == before  # no file, no temp file


def test_a_binary_output_read_only_in_part_is_an_error(folder):
    """``quant compress in.npy -o - | head -c 100``: the output (1 MiB) does not fit in the
    pipe, so quant is still writing when head exits."""
    line = f"{shlex.join(QUANT)} compress in.npy -o - | head -c 100 > /dev/null"
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", line], cwd=folder, capture_output=True, timeout=300
    )
    assert result.returncode == 1
    assert result.stderr.decode().startswith("Error: broken pipe in <stdout>: ")


@pytest.mark.parametrize(
    "args",
    [["inspect", "in.npy"], ["inspect", "in.npy", "--json"], ["report", "in.npy"], ["--help"]],
    ids=" ".join,
)
def test_text_whose_reader_went_away_ends_quietly(folder, args):
    """``quant inspect in.npy | head -1``: quant's text was for the reader, who had enough."""
    pipe = closed_pipe()
    try:
        result = run_into(args, stdout=pipe, stderr=subprocess.PIPE, cwd=folder)
    finally:
        os.close(pipe)
    assert result.returncode == 0
    assert result.stderr == b""
