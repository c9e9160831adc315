"""Running real quant processes in tests: start one, catch it mid-write, collect its result.

A child is caught mid-write without guessing durations: the folder is polled until the
child's hidden temp file exists, then the child is frozen with SIGSTOP and checked to be
still writing (temp file there, output not). Whatever the test does next (send a signal, let
another process create the output) happens while the child is certainly mid-write; SIGCONT
lets it go on.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

QUANT = [sys.executable, "-m", "quantcli"]
# x 1024 float32 = 64 MiB: on the project machine writing the output takes about 0.6 s, so
# the child is still writing when the test has seen its temp file and frozen it
BIG_ROWS = 16384


def make_big_npy(path: Path) -> Path:
    np.save(path, np.random.default_rng(0).standard_normal((BIG_ROWS, 1024), dtype=np.float32))
    return path


def make_checkpoint(folder: Path, rows: int, seed: int = 1) -> Path:
    """A sharded checkpoint in ``folder``: two shards of ``rows`` x 1024 float32 each."""
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    weight_map = {}
    for i in (1, 2):
        shard = f"model-0000{i}-of-00002.safetensors"
        name = f"layer{i}.weight"
        save_file({name: rng.standard_normal((rows, 1024), dtype=np.float32)}, folder / shard)
        weight_map[name] = shard
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def temp_files(folder: Path) -> list[Path]:
    """quant's hidden temp files and temp folders anywhere under ``folder``."""
    return list(folder.rglob(".*.tmp"))


def start(args: list, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [*QUANT, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs
    )


def run(args: list, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*QUANT, *map(str, args)], capture_output=True, timeout=300, **kwargs)


def freeze_mid_write(proc: subprocess.Popen, folder: Path, output: Path) -> None:
    """Wait until ``proc`` has a temp file under ``folder``, stop it, check it is mid-write."""
    deadline = time.monotonic() + 120
    while not temp_files(folder):
        assert proc.poll() is None, ("quant ended before writing", proc.communicate())
        assert time.monotonic() < deadline, "no temp file appeared in 120 s"
        time.sleep(0.002)  # polling the folder, not waiting for a guessed duration
    proc.send_signal(signal.SIGSTOP)
    assert temp_files(folder) and not output.exists(), (
        "quant finished writing before it could be stopped: make the input larger"
    )


def finish(proc: subprocess.Popen) -> tuple[str, str]:
    """Let ``proc`` run to its end; its stdout and stderr."""
    try:
        proc.send_signal(signal.SIGCONT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return out.decode(), err.decode()
