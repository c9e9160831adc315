"""What the quant command sets up in its process before any work."""

from __future__ import annotations

import os
import subprocess
import sys


def test_the_cli_runs_blas_on_one_thread_unless_told_otherwise():
    """The error statistics' small dot products lose time to OpenBLAS's thread pool, so the
    CLI asks for one BLAS thread before NumPy loads; a user's own setting is kept."""
    code = "import os, quantcli.cli; print(os.environ['OPENBLAS_NUM_THREADS'])"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "1", out.stderr
    env["OPENBLAS_NUM_THREADS"] = "3"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "3", out.stderr
