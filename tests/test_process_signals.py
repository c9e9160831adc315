"""Signals that end a real quant process part way through writing its output.

SIGTERM (timeout, Slurm, Kubernetes, docker stop), SIGHUP (a dropped ssh session) and SIGINT
(Ctrl-C) must leave the output folder as it was: no hidden ``.*.tmp`` file, no output, no
half-built output folder; stderr holds one line and the exit code is 128 + the signal.

Each test runs ``python -m quantcli`` in a child process on an input large enough that writing
takes a while, freezes it mid-write (tests/processes.py), sends the signal and lets the child
go on: the signal is certain to arrive mid-write.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from processes import BIG_ROWS, finish, freeze_mid_write, make_big_npy, make_checkpoint, start

from quantcli.cli.app import Terminated
from quantcli.io.atomic import AtomicGroup, atomic_write

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")


@pytest.fixture(scope="module")
def big_npy(tmp_path_factory) -> Path:
    return make_big_npy(tmp_path_factory.mktemp("input") / "big.npy")


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"), BIG_ROWS // 2)


@pytest.mark.parametrize(
    "signum, code, words",
    [
        pytest.param(signal.SIGTERM, 143, "terminated (SIGTERM) in quant compress", id="TERM"),
        pytest.param(signal.SIGHUP, 129, "terminated (SIGHUP) in quant compress", id="HUP"),
        pytest.param(signal.SIGINT, 130, "interrupted in quant compress", id="INT"),
    ],
)
def test_a_signal_mid_write_leaves_nothing(tmp_path, big_npy, signum, code, words):
    output = tmp_path / "out.safetensors"
    proc = start(["compress", big_npy, "-o", output])
    freeze_mid_write(proc, tmp_path, output)
    proc.send_signal(signum)
    out, err = finish(proc)
    assert proc.returncode == code, (proc.returncode, err)
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"Error: {words}: "), err
    assert "no output was written and no temp file is left" in err
    assert list(tmp_path.iterdir()) == []  # no output, no temp file


def test_sigterm_mid_write_of_a_sharded_output_leaves_no_folder(tmp_path, big_checkpoint):
    output = tmp_path / "out"
    proc = start(["compress", big_checkpoint, "-o", output])
    freeze_mid_write(proc, tmp_path, output / "model.safetensors.index.json")
    proc.send_signal(signal.SIGTERM)
    out, err = finish(proc)
    assert proc.returncode == 143, (proc.returncode, err)
    assert (
        err.startswith("Error: terminated (SIGTERM) in quant compress: ") and err.count("\n") == 1
    )
    assert list(tmp_path.iterdir()) == []  # no half-built folder, no temp file


def test_an_ignored_sighup_stays_ignored(tmp_path, big_npy):
    """Under ``nohup`` SIGHUP is ignored before quant starts: quant must not undo that."""
    output = tmp_path / "out.safetensors"

    def ignore_sighup():
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    proc = start(["compress", big_npy, "-o", output, "-q"], preexec_fn=ignore_sighup)
    freeze_mid_write(proc, tmp_path, output)
    proc.send_signal(signal.SIGHUP)
    out, err = finish(proc)
    assert proc.returncode == 0, err
    assert [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]


def test_only_the_quant_command_installs_signal_handlers():
    """Importing the library (or the CLI module, as a host program might) leaves the signal
    handlers alone; the ``quant`` entry point sets them."""
    code = (
        "import signal, quantcli.ops, quantcli.cli\n"
        "print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "
        "signal.getsignal(signal.SIGHUP) is signal.SIG_DFL)\n"
        "from quantcli.cli.app import install_signal_handlers\n"
        "install_signal_handlers()\n"
        "print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "
        "signal.getsignal(signal.SIGHUP) is signal.SIG_DFL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.split("\n")[:2] == ["True True", "False False"], proc.stderr


# A signal becomes an exception wherever the main thread is: between any two steps of making
# or renaming a temp file too.


def test_an_exception_inside_mkstemp_leaves_no_temp_file(tmp_path, monkeypatch):
    real = tempfile.mkstemp

    def interrupted_on_return(*args, **kwargs):
        real(*args, **kwargs)  # the file exists, its name is lost
        raise Terminated(signal.SIGTERM)

    monkeypatch.setattr(tempfile, "mkstemp", interrupted_on_return)
    with pytest.raises(Terminated):
        with atomic_write(tmp_path / "out.bin") as f:
            f.write(b"never")
    assert list(tmp_path.iterdir()) == []


def test_an_exception_between_two_renames_leaves_no_temp_file(tmp_path, monkeypatch):
    real, calls = os.replace, []

    def interrupted_second_time(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise Terminated(signal.SIGTERM)
        real(src, dst)

    monkeypatch.setattr(os, "replace", interrupted_second_time)
    with pytest.raises(Terminated):
        with AtomicGroup() as group:
            for name in ("a", "b", "c"):
                with group.open(tmp_path / name) as f:
                    f.write(name.encode())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # renamed before the signal
