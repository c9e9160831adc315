"""What quant does on a terminal: a progress bar on stderr only when stderr is one (and the
library's progress callbacks behind it), and never binary weights on a terminal stdout."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest

from quantcli.cli.render import progress_bar
from quantcli.core import QuantSpec
from quantcli.io import open_input
from quantcli.ops.compress import compress
from quantcli.ops.decompress import decompress
from quantcli.select import Selector

SAMPLE = Path(__file__).resolve().parent.parent / "sample_weights" / "transformer.safetensors"


def tensor_sizes(path) -> dict[str, int]:
    with open_input(str(path)) as source:
        return {i.name: int(np.prod(i.shape, dtype=np.int64)) for i in source.infos()}


def test_compress_and_decompress_report_every_tensor_once(tmp_path):
    sizes = tensor_sizes(SAMPLE)
    total = sum(sizes.values())
    seen = []
    out = tmp_path / "q.safetensors"
    compress(str(SAMPLE), str(out), Selector(QuantSpec()), progress=lambda *a: seen.append(a))
    assert [(name, n) for name, n, _ in seen] == list(sizes.items())
    assert {t for _, _, t in seen} == {total}

    seen.clear()
    decompress(str(out), str(tmp_path / "r.safetensors"), progress=lambda *a: seen.append(a))
    assert [(name, n) for name, n, _ in seen] == list(sizes.items())
    assert {t for _, _, t in seen} == {total}


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_only_on_a_terminal(monkeypatch):
    piped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", piped)
    with progress_bar("quantizing", enabled=True) as advance:
        advance("w", 10, 20)
    assert piped.getvalue() == ""

    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress_bar("quantizing", enabled=True) as advance:
        advance("w", 10, 20)
        advance("v", 10, 20)
    assert "quantizing" in terminal.getvalue()

    quiet = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    with progress_bar("quantizing", enabled=False) as advance:
        advance("w", 10, 20)
    assert quiet.getvalue() == ""


def test_binary_output_to_a_terminal_is_refused(tmp_path, monkeypatch):
    """`-o -` on a terminal would print a weight file on the screen: refused, nothing read."""
    from quantcli.errors import UsageError

    class Terminal(io.StringIO):
        buffer = io.BytesIO()

        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdout", Terminal())
    with pytest.raises(UsageError, match="binary output to a terminal"):
        compress(str(SAMPLE), "-", Selector(QuantSpec()))
    assert sys.stdout.buffer.getvalue() == b""
