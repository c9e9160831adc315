"""File names that are not valid UTF-8 (legal on Linux: any bytes but / and NUL).

Through the real ``quant`` in a subprocess, given such a name as raw bytes on its command line:
every message and table shows the bad bytes escaped (``w\\xff.npy``), JSON output stays
strictly valid (no lone surrogates), and a default output goes beside the input under the
same raw bytes. The tests run with a strict UTF-8 stdout, which is what Python gives in a
UTF-8 locale such as en_US.UTF-8; those that print tables also in the environment the tests
run in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from processes import make_checkpoint
from safetensors.numpy import load

pytestmark = pytest.mark.skipif(
    sys.platform == "darwin" or os.name != "posix", reason="file names are raw bytes on Linux"
)

NAME = b"w\xff.npy"
SHOWN = "w\\xff.npy"  # how quant prints it


def environment(strict: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONIOENCODING"}
    env["COLUMNS"] = "200"
    if strict:
        env["PYTHONIOENCODING"] = "utf-8"  # stdout strict, as in en_US.UTF-8
    return env


@pytest.fixture
def env() -> dict[str, str]:
    """A UTF-8 locale's streams: the strictest, where stdout fails on a bad byte."""
    return environment(strict=True)


@pytest.fixture(params=["default", "utf-8 locale"])
def any_env(request) -> dict[str, str]:
    """Also the environment the tests run in (here C.UTF-8, whose stdout would write the raw
    bytes: quant must escape them there too)."""
    return environment(strict=request.param == "utf-8 locale")


@pytest.fixture
def folder(tmp_path) -> Path:
    with open(os.path.join(os.fsencode(tmp_path), NAME), "wb") as f:
        np.save(f, np.linspace(-1, 1, 64 * 64, dtype=np.float32).reshape(64, 64))
    return tmp_path


def quant(folder: Path, env: dict, *args: str | bytes) -> subprocess.CompletedProcess:
    """Run quant in ``folder``; arguments may be bytes (passed to the process unchanged)."""
    command = [sys.executable.encode(), b"-m", b"quantcli", *(os.fsencode(a) for a in args)]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, timeout=120)


def names(folder: Path) -> list[bytes]:
    return sorted(os.listdir(os.fsencode(folder)))


def text(stream: bytes) -> str:
    return stream.decode("utf-8")  # strict: quant must write valid UTF-8


def strict_json(stream: bytes):
    """Parse JSON as a strict reader would: no lone surrogate anywhere in its strings."""
    data = json.loads(text(stream))

    def check(value):
        if isinstance(value, str):
            value.encode("utf-8")  # a lone surrogate (\udcff) fails here
        elif isinstance(value, dict):
            for key, item in value.items():
                check(key)
                check(item)
        elif isinstance(value, list):
            for item in value:
                check(item)

    check(data)
    return data


def test_compress_writes_beside_it_under_the_same_bytes(folder, any_env):
    result = quant(folder, any_env, "compress", NAME)
    assert result.returncode == 0, result.stderr
    assert names(folder) == [b"w\xff.absmax-int8.safetensors", NAME]
    assert text(result.stderr).startswith(f"{SHOWN} -> w\\xff.absmax-int8.safetensors ")
    assert "w\\xff " in text(result.stderr)  # the tensor's row
    # the tensor is named after the file; a safetensors name is UTF-8, so escaped
    with open(os.path.join(os.fsencode(folder), b"w\xff.absmax-int8.safetensors"), "rb") as f:
        assert sorted(load(f.read())) == ["w\\xff", "w\\xff.scale"]


def test_json_output_stays_valid(folder, env):
    result = quant(folder, env, "compress", NAME, "-o", b"q\xfe.safetensors", "--json", "-q")
    assert result.returncode == 0, result.stderr
    data = strict_json(result.stdout)
    assert data["input"] == SHOWN and data["output"] == "q\\xfe.safetensors"
    assert [t["tensor"] for t in data["tensors"]] == ["w\\xff"]
    assert names(folder) == [b"q\xfe.safetensors", NAME]

    result = quant(folder, env, "inspect", b"q\xfe.safetensors", "--json")
    assert result.returncode == 0, result.stderr
    assert strict_json(result.stdout)["file"] == "q\\xfe.safetensors"

    result = quant(folder, env, "report", NAME, "--format", "json")
    assert result.returncode == 0, result.stderr
    assert strict_json(result.stdout)["input"] == SHOWN


def test_tables_on_stdout_and_stderr(folder, any_env):
    result = quant(folder, any_env, "inspect", NAME)
    assert result.returncode == 0, result.stderr
    assert text(result.stdout).startswith(f"{SHOWN}: npy\n")
    result = quant(folder, any_env, "report", NAME)
    assert result.returncode == 0, result.stderr
    assert f"{SHOWN}: 1 tensor quantized" in text(result.stdout + result.stderr)


def test_decompress_restores_beside_it_under_the_same_bytes(folder, env):
    assert quant(folder, env, "compress", NAME, "-o", b"q\xfe.safetensors", "-q").returncode == 0
    result = quant(folder, env, "decompress", b"q\xfe.safetensors")
    assert result.returncode == 0, result.stderr
    assert "to q\\xfe.restored.npy" in text(result.stderr)
    restored = np.load(os.path.join(os.fsencode(folder), b"q\xfe.restored.npy"))
    assert (
        restored.shape == (64, 64)
        and np.abs(restored - np.linspace(-1, 1, 4096).reshape(64, 64)).max() < 0.01
    )


def test_an_error_names_the_file_escaped_on_one_line(folder, env):
    result = quant(folder, env, "compress", b"nope\xfe.npy")
    assert result.returncode == 1
    assert text(result.stderr).startswith("Error: no such file in nope\\xfe.npy: ")
    assert text(result.stderr).count("\n") == 1 and result.stdout == b""
    result = quant(folder, env, "compress", NAME, "-o", NAME)
    assert result.returncode == 2
    assert text(result.stderr).startswith(f"Error: output is the input in {SHOWN}: ")


def test_a_sharded_output_folder_under_raw_bytes(tmp_path, env):
    make_checkpoint(tmp_path / "ckpt", 8)
    result = quant(tmp_path, env, "compress", "ckpt", "-o", b"out\xfd", "-q")
    assert result.returncode == 0, result.stderr
    assert names(tmp_path) == [b"ckpt", b"out\xfd"]
    assert len(os.listdir(os.path.join(os.fsencode(tmp_path), b"out\xfd"))) == 3
    result = quant(tmp_path, env, "compress", "ckpt", "-o", b"out\xfd", "-q")
    assert result.returncode == 2
    assert "output exists in out\\xfd/model-00001-of-00002.safetensors: " in text(result.stderr)


def test_printable_text():
    from quantcli.cli.app import one_line, printable

    assert printable("w.npy") == "w.npy"
    assert printable(os.fsdecode(b"w\xff\xfe.npy")) == "w\\xff\\xfe.npy"
    assert printable("a\ud800b") == "a\\ud800b"  # a lone surrogate from a JSON \ud800 escape
    assert printable("snow\u2603") == "snow\u2603"  # valid text is left alone
    assert one_line(os.fsdecode(b"bad\xff\nname")) == "bad\\xff\\nname"
