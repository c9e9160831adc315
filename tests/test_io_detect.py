"""What open_input says about other tools' files, and how it reads standard input.

PyTorch checkpoints (pickles, and the zip archives torch.save writes), llama.cpp's files from
before GGUF and folders holding only such files are named for what they are, with what to do;
a pickle is never loaded. Standard input is copied to a temporary file and memory-mapped, so a
command never holds two copies of its input: measured on a real child process.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from cli_runner import cli

from quantcli.errors import FormatError, UnsafeInputError
from quantcli.io.detect import open_input
from quantcli.io.gguf_file import GGUFReader
from quantcli.io.gguf_writer import save_gguf_bytes
from quantcli.io.safetensors_writer import SafetensorsWriter

ENV = {"COLUMNS": "100", "NO_COLOR": "1"}
# torch.save's first pickled object, and the protocol it pickles with
TORCH_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C


run, _ = cli(100)


def error_line(result, code: int = 1) -> str:
    """The one ``Error:`` line of a failed command (nothing on stdout)."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def legacy_torch_bytes() -> bytes:
    """The start of a file torch.save wrote without its zip format: pickles, protocol 2."""
    return pickle.dumps(TORCH_MAGIC_NUMBER, protocol=2) + pickle.dumps({"w": [1.0]}, protocol=2)


def torch_zip_bytes() -> bytes:
    """The layout torch.save (zip format, the default since PyTorch 1.6) writes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("pytorch_model/data.pkl", pickle.dumps({"w": 1}, protocol=2))
        archive.writestr("pytorch_model/byteorder", "little")
        archive.writestr("pytorch_model/data/0", bytes(16))
        archive.writestr("pytorch_model/version", "3\n")
    return buffer.getvalue()


CONVERT = 'python -c "import torch; from safetensors.torch import save_file; save_file(torch.load('


@pytest.fixture(autouse=True)
def _pickles_are_never_loaded(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was loaded")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights"])
def test_a_pickle_is_named_with_its_conversion(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    Path(name).write_bytes(legacy_torch_bytes())
    line = error_line(run("inspect", name))
    assert line.startswith(f"Error: pickle file in {name}: it is a Python pickle")
    assert "never loads pickles" in line and "runs" in line and "if you trust the file" in line
    stem = os.path.splitext(name)[0]
    assert f"{CONVERT}'{name}'), '{stem}.safetensors')\"" in line
    assert "unknown format" not in line and "numpy" not in line


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_every_binary_pickle_protocol_is_recognised(tmp_path, protocol):
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=protocol))
    with pytest.raises(UnsafeInputError, match="pickle file in"):
        open_input(path)


def test_a_torch_zip_is_not_called_a_broken_npz(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(torch_zip_bytes())
    line = error_line(run("compress", path, "-o", tmp_path / "q.safetensors"))
    assert f"PyTorch checkpoint in {path}: it is a torch.save zip archive" in line
    assert "data.pkl" in line and "never loads pickles" in line
    assert f"{CONVERT}'{path}'), '{tmp_path / 'pytorch_model.safetensors'}')\"" in line
    assert "savez" not in line and "bad archive" not in line
    assert not (tmp_path / "q.safetensors").exists()
    # an .npz that merely holds a member called data.pkl.npy is still an .npz
    npz = tmp_path / "w.npz"
    np.savez(npz, **{"w": np.zeros(2), "data.pkl": np.ones(1)})
    with open_input(npz) as source:
        assert [i.name for i in source.infos()] == ["w", "data.pkl"]


def test_a_path_that_needs_quoting_gets_a_generic_command(tmp_path):
    path = tmp_path / "it's here.bin"
    path.write_bytes(legacy_torch_bytes())
    line = error_line(run("inspect", path))
    assert f"{CONVERT}'model.bin'), 'model.safetensors')\"" in line


def test_a_folder_with_only_pytorch_checkpoints_names_them(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(torch_zip_bytes())
    line = error_line(run("inspect", folder))
    assert f"PyTorch checkpoint in {folder}: the folder holds pytorch_model.bin" in line
    assert "no .safetensors" in line and "convert it to safetensors" in line
    assert CONVERT + f"'{folder / 'pytorch_model.bin'}')" in line
    # sharded: every shard is named (the first few), each to convert
    (folder / "pytorch_model.bin").unlink()
    for i in (1, 2):
        (folder / f"pytorch_model-0000{i}-of-00002.bin").write_bytes(torch_zip_bytes())
    line = error_line(run("inspect", folder))
    assert "pytorch_model-00001-of-00002.bin, pytorch_model-00002-of-00002.bin" in line
    assert "convert each file" in line


def test_a_folder_with_gguf_files(tmp_path):
    data = save_gguf_bytes({}, {"w": np.ones((2, 3), np.float32)})
    (tmp_path / "model-f16.gguf").write_bytes(data)
    with open_input(tmp_path) as source:
        assert isinstance(source, GGUFReader) and source.label.endswith("model-f16.gguf")
    (tmp_path / "model-q8_0.gguf").write_bytes(data)
    line = error_line(run("inspect", tmp_path))
    assert "2 .gguf files (model-f16.gguf, model-q8_0.gguf)" in line
    assert "pass the .gguf file you mean" in line


def test_old_llama_cpp_files(tmp_path):
    path = tmp_path / "ggml-model-q4_0.bin"
    path.write_bytes(b"tjgg" + struct.pack("<I", 3) + bytes(100))
    line = error_line(run("inspect", path))
    assert "old llama.cpp model in" in line and "GGJT" in line and "before GGUF" in line


def test_stdin(tmp_path):
    line = error_line(
        run("compress", "-", "-o", tmp_path / "q.safetensors", input=legacy_torch_bytes())
    )
    assert "pickle file in <stdin>" in line
    assert f"{CONVERT}'model.bin'), 'model.safetensors')\"" in line
    line = error_line(run("inspect", "-", input=torch_zip_bytes()))
    assert "PyTorch checkpoint in <stdin>" in line
    assert "unknown format in <stdin>" in error_line(run("inspect", "-", input=b"hello world!"))


def test_unknown_content_is_still_unknown(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is no weight file\n")
    with pytest.raises(FormatError, match="unknown format in .*which is no .npy, .npz"):
        open_input(path)


# ---------------------------------------------------------------------------------------
# Standard input: one copy of the input at most, measured on a child process


def peak_rss(args: list[str], stdin: Path, folder: Path) -> tuple[int, int, str]:
    """(peak RSS in bytes, exit code, stderr) of ``python -m quantcli ARGS < stdin``."""
    err = folder / "stderr.txt"
    with open(stdin, "rb") as feed, open(err, "wb") as errors:
        child = subprocess.Popen(
            [sys.executable, "-m", "quantcli", *args],
            stdin=feed,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            env={**os.environ, **ENV},
        )
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage
        child.returncode = os.waitstatus_to_exitcode(status)
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return usage.ru_maxrss * scale, child.returncode, err.read_text()


def write_safetensors(path: Path, count: int, rows: int, cols: int) -> int:
    """``count`` float32 tensors of (rows, cols), written one at a time; the file size."""
    rng = np.random.default_rng(0)
    plan = [(f"layer{i}.weight", np.float32, (rows, cols)) for i in range(count)]
    with open(path, "wb") as f, SafetensorsWriter(f, plan) as writer:
        for name, _, shape in plan:
            writer.write(name, rng.standard_normal(shape, dtype=np.float32))
    return path.stat().st_size


@pytest.mark.skipif(not hasattr(os, "wait4"), reason="needs os.wait4 (POSIX)")
def test_stdin_is_not_held_twice(tmp_path):
    small, big = tmp_path / "small.safetensors", tmp_path / "big.safetensors"
    write_safetensors(small, 8, 16, 256)
    size = write_safetensors(big, 8, 2500, 2500)  # 200 MB
    out = tmp_path / "out.safetensors"
    args = ["compress", "-", "-o", str(out), "--force"]
    baseline, code, stderr = peak_rss(args, small, tmp_path)
    assert code == 0, stderr
    peak, code, stderr = peak_rss(args, big, tmp_path)
    assert code == 0, stderr
    assert out.stat().st_size > size // 4  # int8 codes of every weight, and the scales
    # Reading the whole input into memory and copying it once more (as before) peaks at
    # baseline + 2 x size. Now the input is a memory-mapped temporary file: one tensor at a
    # time is resident, plus the tensor being quantized.
    assert peak - baseline < size // 2, (peak, baseline, size)
