"""Bad input and failures, through the CLI: clear errors, nothing lost, nothing executed.

One test (at least) per row of the failure catalogue. Each runs ``quant`` with CliRunner and
checks what a user would see and what would be left on their disk:

- the exit code (2 usage, 1 bad input, 130 interrupted);
- stderr is exactly one line, ``Error: <what> in <file or tensor>: <why>; <how to fix>``,
  naming the file or tensor, and never a traceback (unless --debug / QUANT_DEBUG=1);
- every file in the test's folder is byte-identical afterwards (so the input is unchanged)
  and no file appeared (no output, no ``.*.tmp`` temp file).
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import typer.testing
from typer.testing import CliRunner

import quantcli.ops.compress as ops_compress
from quantcli.cli import app
from quantcli.io import SafetensorsReader, save_bytes
from quantcli.io.safetensors_writer import SafetensorsWriter

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_debug_from_the_environment(monkeypatch):
    monkeypatch.delenv("QUANT_DEBUG", raising=False)


# ---------------------------------------------------------------------------------------
# Helpers


def quant(*args: object, input: bytes | None = None, env: dict | None = None):
    return runner.invoke(app, [str(a) for a in args], input=input, env=env)


def snapshot(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``folder`` (hidden ones too)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def temp_files(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob(".*.tmp")]


def assert_one_error_line(result, code: int, *names: str) -> str:
    """The result failed with ``code`` and one ``Error:`` line naming each of ``names``."""
    assert result.exit_code == code, (result.exit_code, result.stderr, result.exception)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("Error: "), line
    assert " in " in line and ": " in line[len("Error: ") :], line
    for name in names:
        assert name in line, (name, line)
    assert result.stdout == "", result.stdout
    return line


def assert_fails_cleanly(folder: Path, args: list, code: int, *names: str, **kw) -> str:
    """Run ``quant *args``; it must fail with one line and leave ``folder`` exactly as it was."""
    before = snapshot(folder)
    result = quant(*args, **kw)
    line = assert_one_error_line(result, code, *names)
    assert temp_files(folder) == []
    assert snapshot(folder) == before, "a file was changed, added or left behind"
    return line


def raw_safetensors(header: object, data: bytes = b"", header_len: int | None = None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(text) if header_len is None else header_len
    return struct.pack("<Q", n) + text + data


def f32(begin: int, end: int, shape: list | None = None, dtype: str = "F32") -> dict:
    return {
        "dtype": dtype,
        "shape": shape if shape is not None else [(end - begin) // 4],
        "data_offsets": [begin, end],
    }


def weights(seed: int = 0, shape=(64, 48)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.fixture
def work(tmp_path) -> Path:
    """A folder with model.safetensors: two 64x48 float32 weights and a bias."""
    w = weights()
    tensors = {"a.weight": w, "b.weight": w * 2, "a.bias": w[0].copy()}
    (tmp_path / "model.safetensors").write_bytes(save_bytes(tensors, {"format": "pt"}))
    return tmp_path


def load(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    with SafetensorsReader(path) as source:
        tensors = {i.name: np.array(source.read(i.name)) for i in source.infos()}
        return tensors, dict(source.metadata)


# ---------------------------------------------------------------------------------------
# Paths


@pytest.mark.parametrize("command", ["compress", "decompress", "inspect"])
def test_missing_path(tmp_path, command):
    line = assert_fails_cleanly(
        tmp_path, [command, tmp_path / "nope.safetensors"], 1, "nope.safetensors"
    )
    assert "no such file" in line


def test_folder_without_a_checkpoint(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "README.md").write_text("not weights")
    line = assert_fails_cleanly(tmp_path, ["compress", folder], 1, str(folder))
    assert "without a checkpoint" in line


def test_empty_file(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    line = assert_fails_cleanly(tmp_path, ["compress", path], 1, str(path))
    assert "empty" in line


def test_text_file_named_safetensors(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_text("<html>404 Not Found</html>\n" * 10)
    line = assert_fails_cleanly(tmp_path, ["compress", path], 1, str(path))
    assert "bad header" in line


def test_unknown_format(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_text("just some text, no weights\n")
    line = assert_fails_cleanly(tmp_path, ["inspect", path], 1, str(path))
    assert "unknown format" in line


def test_a_newline_in_a_path_cannot_split_the_error_line(tmp_path):
    line = assert_fails_cleanly(tmp_path, ["compress", tmp_path / "a\nb.safetensors"], 1)
    assert "a\\nb.safetensors" in line


# ---------------------------------------------------------------------------------------
# Damaged safetensors files


@pytest.mark.parametrize("where", ["header", "data"])
def test_truncated_safetensors(work, where):
    raw = (work / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    cut = 8 + n // 2 if where == "header" else len(raw) - 100
    path = work / "cut.safetensors"
    path.write_bytes(raw[:cut])
    line = assert_fails_cleanly(work, ["compress", path], 1, str(path))
    assert f"truncated {where}" in line


BIG = 100_000_000  # the safetensors header size limit

HEADER_FAULTS = {
    # id: (file bytes, words of the message)
    "header length beyond the file": (
        raw_safetensors({"w": f32(0, 16)}, bytes(16), header_len=5000),
        "truncated header",
    ),
    "bad JSON": (raw_safetensors(b'{"w": {"dtype": "F32",', bytes(16)), "not valid JSON"),
    "header not UTF-8": (raw_safetensors(b'{"\xff\xfe": 1}'), "not UTF-8"),
    "header a JSON list": (raw_safetensors([1, 2]), "not an object"),
    "unknown dtype": (raw_safetensors({"w": f32(0, 16, [4], "F4")}, bytes(16)), "'F4'"),
    "offsets out of bounds": (raw_safetensors({"w": f32(0, 64)}, bytes(16)), "truncated data"),
    "overlapping ranges": (
        raw_safetensors({"w": f32(0, 16), "v": f32(8, 24)}, bytes(24)),
        "overlaps",
    ),
    "unordered range (end before begin)": (
        raw_safetensors({"w": f32(16, 0, [4])}, bytes(16)),
        "ends before it begins",
    ),
    "shape times dtype size is not the range": (
        raw_safetensors({"w": f32(0, 16, [5])}, bytes(16)),
        "needs 20 bytes",
    ),
    "a hole between tensors": (
        raw_safetensors({"w": f32(0, 8), "v": f32(12, 16)}, bytes(16)),
        "belong to no tensor",
    ),
    "bytes after the last tensor": (
        raw_safetensors({"w": f32(0, 8)}, bytes(16)),
        "belong to no tensor",
    ),
    "negative dimension": (raw_safetensors({"w": f32(0, 16, [-4])}, bytes(16)), "dimension"),
    "offsets not integers": (
        raw_safetensors(
            {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, "16"]}}, bytes(16)
        ),
        "data_offsets",
    ),
    "duplicate tensor": (
        raw_safetensors(
            b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, '
            b'"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}',
            bytes(16),
        ),
        "appears twice",
    ),
    "metadata not strings": (
        raw_safetensors({"__metadata__": {"a": 1}, "w": f32(0, 16)}, bytes(16)),
        "__metadata__",
    ),
    "header length above 100 MB": (struct.pack("<Q", BIG + 8) + b"{", "limit"),
}


@pytest.mark.parametrize("fault", list(HEADER_FAULTS), ids=list(HEADER_FAULTS))
def test_safetensors_header_faults(tmp_path, fault):
    content, words = HEADER_FAULTS[fault]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    if fault == "header length above 100 MB":
        # a real (sparse) file of that size: refused by the limit, not as truncated, and
        # without reading the 100 MB
        with open(path, "r+b") as f:
            f.truncate(8 + BIG + 8)
    line = assert_fails_cleanly(tmp_path, ["compress", path], 1, str(path))
    assert words in line, line


def test_header_faults_in_inspect_too(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(HEADER_FAULTS["overlapping ranges"][0])
    assert "overlaps" in assert_fails_cleanly(tmp_path, ["inspect", path], 1, str(path))


# ---------------------------------------------------------------------------------------
# No code execution from data


def test_npy_with_object_dtype(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"x": 1}, print], dtype=object), allow_pickle=True)
    line = assert_fails_cleanly(tmp_path, ["compress", path], 1, str(path))
    assert "pickle" in line and "object" in line


def test_npz_with_a_pickled_member(tmp_path):
    path = tmp_path / "mixed.npz"
    np.savez(path, ok=weights(), evil=np.array([os.system], dtype=object))
    line = assert_fails_cleanly(tmp_path, ["compress", path], 1, str(path), "evil.npy")
    assert "pickle" in line


def test_loading_never_unpickles(tmp_path, monkeypatch):
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("pickle was used")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    path = tmp_path / "obj.npy"
    np.save(path, np.array([1, "a"], dtype=object), allow_pickle=True)
    assert_fails_cleanly(tmp_path, ["inspect", path], 1, str(path))


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd"])
def test_sharded_index_pointing_outside_its_folder(tmp_path, shard):
    (tmp_path / "outside.safetensors").write_bytes(save_bytes({"w": weights()}))
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "model-00001.safetensors").write_bytes(save_bytes({"v": weights(1)}))
    index = {"weight_map": {"v": "model-00001.safetensors", "w": shard}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    for target in (folder, folder / "model.safetensors.index.json"):
        line = assert_fails_cleanly(
            tmp_path, ["compress", target], 1, "model.safetensors.index.json", shard
        )
        assert "outside" in line


def test_inputs_are_opened_and_mapped_read_only(work, monkeypatch):
    input_path = work / "model.safetensors"
    modes = []
    real_open, real_memmap = builtins.open, np.memmap

    def spy_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.abspath(file) == str(input_path):
            modes.append(mode)
        return real_open(file, mode, *args, **kwargs)

    def spy_memmap(filename, *args, **kwargs):
        modes.append("memmap:" + kwargs.get("mode", "r+"))
        return real_memmap(filename, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(np, "memmap", spy_memmap)
    result = quant("compress", input_path, "-o", work / "q.safetensors", "-q")
    assert result.exit_code == 0, result.stderr
    assert modes and set(modes) <= {"rb", "memmap:r"}, modes


# ---------------------------------------------------------------------------------------
# Tensors quant cannot quantize


def test_complex_valued_tensor(tmp_path):
    path = tmp_path / "c.npy"
    np.save(path, (weights() + 1j * weights(1)).astype(np.complex64))
    line = assert_fails_cleanly(tmp_path, ["compress", path], 1, str(path), "tensor c")
    assert "complex64" in line


def test_complex_tensor_among_others_is_kept_unchanged(tmp_path):
    c = (weights() + 1j).astype(np.complex64)
    (tmp_path / "m.safetensors").write_bytes(save_bytes({"w": weights(), "c": c}))
    out = tmp_path / "q.safetensors"
    result = quant("compress", tmp_path / "m.safetensors", "-o", out, "--json", "-q")
    assert result.exit_code == 0, result.stderr
    rows = {t["tensor"]: t for t in json.loads(result.stdout)["tensors"]}
    assert rows["c"]["quantized"] is False and rows["w"]["quantized"] is True
    np.testing.assert_array_equal(load(out)[0]["c"], c)


@pytest.mark.parametrize(
    "bad, words", [(np.nan, "1 NaN, 0 inf"), (np.inf, "0 NaN, 1 inf"), (-np.inf, "0 NaN, 1 inf")]
)
@pytest.mark.parametrize("scheme", ["absmax", "zeropoint"])
def test_non_finite_weights(work, bad, words, scheme):
    w = weights()
    w[3, 4] = bad
    path = work / "nan.safetensors"
    path.write_bytes(save_bytes({"good.weight": weights(1), "bad.weight": w}))
    line = assert_fails_cleanly(work, ["compress", path, "--scheme", scheme], 1, "bad.weight")
    assert f"1 non-finite values ({words})" in line and "--nonfinite keep" in line


def test_non_finite_with_percentile_calibration(work):
    w = weights()
    w[0, :3] = [np.nan, np.inf, np.nan]
    path = work / "nan.safetensors"
    path.write_bytes(save_bytes({"bad.weight": w}))
    line = assert_fails_cleanly(
        work, ["compress", path, "--calibration", "percentile"], 1, "bad.weight"
    )
    assert "3 non-finite values (2 NaN, 1 inf)" in line


def test_nonfinite_keep_keeps_that_tensor_and_quantizes_the_rest(work):
    w = weights()
    w[3, 4], w[5, 6] = np.nan, np.inf
    path = work / "nan.safetensors"
    path.write_bytes(save_bytes({"good.weight": weights(1), "bad.weight": w}))
    out = work / "q.safetensors"
    result = quant("compress", path, "-o", out, "--nonfinite", "keep", "--json", "-q")
    assert result.exit_code == 0, result.stderr
    rows = {t["tensor"]: t for t in json.loads(result.stdout)["tensors"]}
    assert rows["bad.weight"]["quantized"] is False
    assert rows["bad.weight"]["reason"] == "kept: 2 non-finite values"
    assert rows["good.weight"]["quantized"] is True
    tensors, meta = load(out)
    assert list(json.loads(meta["quant.tensors"])) == ["good.weight"]
    assert tensors["bad.weight"].tobytes() == w.tobytes()  # kept byte for byte
    assert "bad.weight.scale" not in tensors and tensors["good.weight"].dtype == np.int8


def test_scales_that_overflow_the_scale_dtype_are_refused_before_writing(tmp_path):
    path = tmp_path / "big.npy"
    np.save(path, weights() * 1e7)  # absmax scale ~ 4e7 / 127: beyond float16's 65504
    line = assert_fails_cleanly(
        tmp_path, ["compress", path, "--scale-dtype", "float16"], 2, "tensor big"
    )
    assert "--scale-dtype float32" in line


# ---------------------------------------------------------------------------------------
# Outputs


def test_output_equal_to_the_input(work):
    path = work / "model.safetensors"
    for output in (path, os.path.join(str(work), ".", "model.safetensors")):
        line = assert_fails_cleanly(
            work, ["compress", path, "-o", output, "--force"], 2, "model.safetensors"
        )
        assert "output is the input" in line


def test_output_exists_without_force(work):
    existing = work / "q.safetensors"
    existing.write_bytes(b"precious")
    line = assert_fails_cleanly(
        work, ["compress", work / "model.safetensors", "-o", existing], 2, str(existing)
    )
    assert "--force" in line


def test_output_folder_does_not_exist(work):
    out = work / "missing" / "q.safetensors"
    line = assert_fails_cleanly(
        work, ["compress", work / "model.safetensors", "-o", out], 1, str(out)
    )
    assert "does not exist" in line


def test_unwritable_output_folder_by_access_check(work, monkeypatch):
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    out = work / "q.safetensors"
    line = assert_fails_cleanly(
        work, ["compress", work / "model.safetensors", "-o", out], 1, str(out)
    )
    assert "permission" in line


def test_unwritable_output_folder_when_creating_the_temp_file(work, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    out = work / "q.safetensors"
    line = assert_fails_cleanly(
        work, ["compress", work / "model.safetensors", "-o", out], 1, str(out)
    )
    assert "not writable" in line


def fail_on_second_write(monkeypatch, exc: BaseException) -> None:
    """Make the 2nd tensor written by any SafetensorsWriter raise ``exc``."""
    real = SafetensorsWriter.write
    calls = []

    def write(self, name, array):
        calls.append(name)
        if len(calls) == 2:
            raise exc
        return real(self, name, array)

    monkeypatch.setattr(SafetensorsWriter, "write", write)


DISK_FULL = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_disk_full_part_way(work, monkeypatch, command):
    source = work / "model.safetensors"
    if command == "decompress":
        assert quant("compress", source, "-o", work / "q.safetensors", "-q").exit_code == 0
        source = work / "q.safetensors"
    fail_on_second_write(monkeypatch, DISK_FULL)
    out = work / "out.safetensors"
    line = assert_fails_cleanly(work, [command, source, "-o", out], 1, str(out))
    assert "No space left on device" in line


def test_disk_full_part_way_replacing_with_force_keeps_the_old_file(work, monkeypatch):
    out = work / "out.safetensors"
    out.write_bytes(b"the previous output")
    fail_on_second_write(monkeypatch, DISK_FULL)
    assert_fails_cleanly(
        work, ["compress", work / "model.safetensors", "-o", out, "--force"], 1, str(out)
    )


@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_ctrl_c_part_way(work, monkeypatch, command):
    source = work / "model.safetensors"
    if command == "decompress":
        assert quant("compress", source, "-o", work / "q.safetensors", "-q").exit_code == 0
        source = work / "q.safetensors"
    fail_on_second_write(monkeypatch, KeyboardInterrupt())
    line = assert_fails_cleanly(work, [command, source, "-o", work / "out.safetensors"], 130)
    assert "interrupted" in line


def sharded_checkpoint(folder: Path) -> Path:
    folder.mkdir()
    shards = {
        "model-00001-of-00002.safetensors": {"a.weight": weights(0), "a.bias": weights(0)[0]},
        "model-00002-of-00002.safetensors": {"b.weight": weights(1), "c.weight": weights(2)},
    }
    weight_map = {}
    for name, tensors in shards.items():
        (folder / name).write_bytes(save_bytes(tensors, {"format": "pt"}))
        weight_map.update(dict.fromkeys(tensors, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


@pytest.mark.parametrize("exc, code", [(DISK_FULL, 1), (KeyboardInterrupt(), 130)])
@pytest.mark.parametrize("existing", [False, True])
def test_sharded_output_failing_part_way(tmp_path, monkeypatch, exc, code, existing):
    ckpt = sharded_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "out"
    if existing:  # an existing, empty output folder stays; a new one is removed
        out.mkdir()
    fail_on_second_write(monkeypatch, exc)
    assert_fails_cleanly(tmp_path, ["compress", ckpt, "-o", out], code)
    assert out.exists() == existing
    if existing:
        assert list(out.iterdir()) == []


def test_sharded_output_is_written_index_last(tmp_path, monkeypatch):
    ckpt = sharded_checkpoint(tmp_path / "ckpt")
    renamed = []
    real = os.replace

    def spy(src, dst, *args, **kwargs):
        renamed.append(Path(dst).name)
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", spy)
    result = quant("compress", ckpt, "-o", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.stderr
    assert renamed[-1] == "model.safetensors.index.json" and len(renamed) == 3


# ---------------------------------------------------------------------------------------
# Options out of range: usage errors, exit code 2


@pytest.mark.parametrize(
    "args, words",
    [
        (["--bits", "9"], "--bits"),
        (["--bits", "1"], "--bits"),
        (["--bits", "eight"], "--bits"),
        (["--group-size", "0"], "--group-size"),
        (["--granularity", "group", "--group-size", "-5"], "--group-size"),
        (["--axis", "2"], "axis 2"),
        (["--axis", "-3"], "axis -3"),
        (["--calibration", "percentile", "--percentile", "50"], "'--percentile': 50 is"),
        (["--calibration", "percentile", "--percentile", "100.5"], "--percentile"),
        (["--calibration", "percentile", "--percentile", "nan"], "--percentile"),
        (["--percentile", "101"], "--percentile"),  # checked even without percentile
        (["--scheme", "magic"], "--scheme"),
        (["--no-such-option"], "--no-such-option"),
    ],
)
def test_options_out_of_range(work, args, words):
    line = assert_fails_cleanly(work, ["compress", work / "model.safetensors", *args], 2, words)
    assert "Error: " in line


def test_report_percentile_out_of_range_names_the_option(work):
    line = assert_fails_cleanly(
        work, ["report", work / "model.safetensors", "--percentile", "42"], 2, "--percentile"
    )
    assert "(50, 100]" in line


def test_missing_argument_is_a_usage_error(tmp_path):
    assert "INPUT" in assert_fails_cleanly(tmp_path, ["compress"], 2)


def test_group_size_not_dividing_the_rows_works_with_a_ragged_last_group(tmp_path):
    w = weights(shape=(7, 13))
    np.save(tmp_path / "w.npy", w)
    q, r = tmp_path / "q.safetensors", tmp_path / "r.npy"
    args = ["--granularity", "group", "--group-size", "5", "--bits", "4", "--scheme", "zeropoint"]
    result = quant("compress", tmp_path / "w.npy", "-o", q, *args, "-q")
    assert result.exit_code == 0, result.stderr
    assert load(q)[0]["w.scale"].shape == (7, 3)  # 5 + 5 + 3
    assert quant("decompress", q, "-o", r, "-q").exit_code == 0
    restored = np.load(r)
    assert restored.shape == w.shape
    step = (w.max() - w.min()) / 15
    assert np.abs(restored - w).max() <= step


# ---------------------------------------------------------------------------------------
# Damaged quantized files: refused by decompress and inspect


def damaged_copy(folder: Path, scheme: str, edit) -> Path:
    """A valid quantized file of model.safetensors, with ``edit(tensors, metadata)`` applied."""
    q = folder / f"{scheme}.safetensors"
    if not q.exists():
        result = quant("compress", folder / "model.safetensors", "-o", q, "--scheme", scheme, "-q")
        assert result.exit_code == 0, result.stderr
    tensors, meta = load(q)
    edit(tensors, meta)
    path = folder / "damaged.safetensors"
    path.write_bytes(save_bytes(tensors, meta))
    return path


def wrong_scale_shape(t, m):
    t["a.weight.scale"] = t["a.weight.scale"].reshape(8, 8)


def missing_zero_point(t, m):
    del t["a.weight.zero_point"]


def code_out_of_range(t, m):
    t["a.weight"][0, 0] = -128


def zero_point_out_of_range(t, m):
    specs = json.loads(m["quant.tensors"])
    specs["a.weight"]["bits"] = 4  # a uint8 zero point of 200 does not fit 4 bits
    m["quant.tensors"] = json.dumps(specs)


def unknown_version(t, m):
    m["quant.format_version"] = "999"


def tensors_not_json(t, m):
    m["quant.tensors"] = "{a.weight: absmax"


def axis_out_of_range(t, m):
    specs = json.loads(m["quant.tensors"])
    specs["a.weight"]["axis"] = 7
    m["quant.tensors"] = json.dumps(specs)


def spec_without_bits(t, m):
    specs = json.loads(m["quant.tensors"])
    specs["a.weight"]["bits"] = "eight"
    m["quant.tensors"] = json.dumps(specs)


def integer_original_dtype(t, m):
    specs = json.loads(m["quant.tensors"])
    specs["a.weight"]["dtype"] = "I8"  # a quantized tensor is always a float one
    m["quant.tensors"] = json.dumps(specs)


def nan_scale(t, m):
    t["a.weight.scale"][0] = np.nan


QUANTIZED_FAULTS = {
    "wrong scale shape": ("absmax", wrong_scale_shape, "a.weight.scale"),
    "missing zero_point": ("zeropoint", missing_zero_point, "a.weight.zero_point"),
    "code out of range": ("absmax", code_out_of_range, "code out of range"),
    "bits changed": ("zeropoint", zero_point_out_of_range, "a.weight"),
    "format_version 999": ("absmax", unknown_version, "version '999'"),
    "quant.tensors not JSON": ("absmax", tensors_not_json, "quant.tensors"),
    "axis out of range": ("absmax", axis_out_of_range, "axis 7"),
    "bits not a number": ("absmax", spec_without_bits, "bits"),
    "original dtype not float": ("absmax", integer_original_dtype, "not a float dtype"),
}


@pytest.mark.parametrize("command", ["decompress", "inspect"])
@pytest.mark.parametrize("fault", list(QUANTIZED_FAULTS), ids=list(QUANTIZED_FAULTS))
def test_damaged_quantized_file(work, command, fault):
    scheme, edit, words = QUANTIZED_FAULTS[fault]
    path = damaged_copy(work, scheme, edit)
    args = [command, path] + (
        ["-o", work / "restored.safetensors"] if command == "decompress" else []
    )
    line = assert_fails_cleanly(work, args, 1, str(path), words)
    assert "re-run quant compress" in line or "upgrade quant" in line


def hostile_name(t, m):
    specs = json.loads(m["quant.tensors"])
    specs["a.weight\n\x1b[31mok"] = specs.pop("a.weight")
    m["quant.tensors"] = json.dumps(specs)


@pytest.mark.parametrize("command", ["decompress", "inspect"])
def test_a_newline_or_escape_in_a_tensor_name_cannot_split_or_color_the_error_line(work, command):
    path = damaged_copy(work, "absmax", hostile_name)
    args = [command, path] + (["-o", work / "r.safetensors"] if command == "decompress" else [])
    line = assert_fails_cleanly(work, args, 1, str(path), "a.weight\\n\\x1b[31mok")
    assert "\x1b" not in line


def test_invalid_scale_refused_by_decompress(work):
    path = damaged_copy(work, "absmax", nan_scale)
    args = ["decompress", path, "-o", work / "restored.safetensors"]
    assert "invalid scales" in assert_fails_cleanly(work, args, 1, str(path), "a.weight")


def test_not_a_quantized_file(work):
    args = ["decompress", work / "model.safetensors", "-o", work / "r.safetensors"]
    assert "not a quantized file" in assert_fails_cleanly(work, args, 1, "model.safetensors")


# ---------------------------------------------------------------------------------------
# stdin


def test_garbage_on_stdin(tmp_path):
    line = assert_fails_cleanly(tmp_path, ["inspect", "-"], 1, "<stdin>", input=b"hello\n" * 9)
    assert "unknown format" in line


def test_truncated_file_on_stdin(work):
    raw = (work / "model.safetensors").read_bytes()
    args = ["compress", "-", "-o", work / "q.safetensors"]
    assert_fails_cleanly(work, args, 1, "<stdin>", input=raw[:-10])


class EndlessZeros(io.RawIOBase):
    """Like /dev/zero on stdin, but fails the test instead of eating memory forever."""

    def __init__(self) -> None:
        self.served = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        assert self.served < 1 << 20, "quant kept reading an endless input"
        buffer[:] = bytes(len(buffer))
        self.served += len(buffer)
        return len(buffer)


def test_endless_garbage_on_stdin_is_refused_from_its_first_bytes(tmp_path, monkeypatch):
    # CliRunner takes only bytes as input; give its stdin an endless stream instead
    endless = io.BufferedReader(EndlessZeros())
    monkeypatch.setattr(typer.testing, "make_input_stream", lambda input, charset: endless)
    line = assert_fails_cleanly(tmp_path, ["inspect", "-"], 1, "<stdin>")
    assert "unknown format" in line


def test_nan_on_stdin_to_stdout_writes_nothing(tmp_path):
    w = weights()
    w[-1, -1] = np.nan
    data = save_bytes({"ok.weight": weights(1), "z.weight": w})
    result = quant("compress", "-", "-o", "-", input=data)
    assert_one_error_line(result, 1, "z.weight")
    assert result.stdout_bytes == b""


# ---------------------------------------------------------------------------------------
# --debug and QUANT_DEBUG: the traceback, for bug reports


def nan_file(folder: Path) -> Path:
    w = weights()
    w[0, 0] = np.nan
    path = folder / "nan.safetensors"
    path.write_bytes(save_bytes({"bad.weight": w}))
    return path


@pytest.mark.parametrize("how", ["--debug", "QUANT_DEBUG=1"])
def test_debug_shows_the_traceback(tmp_path, how):
    path = nan_file(tmp_path)
    before = snapshot(tmp_path)
    if how == "--debug":
        result = quant("--debug", "compress", path)
    else:
        result = quant("compress", path, env={"QUANT_DEBUG": "1"})
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "NonFiniteError" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("Error: 1 non-finite values")
    assert snapshot(tmp_path) == before


def test_without_debug_no_warning_or_traceback_reaches_the_user(tmp_path):
    # NumPy warns on the NaN before quant's check reports it: one line all the same
    assert_fails_cleanly(tmp_path, ["compress", nan_file(tmp_path)], 1, "bad.weight")


def test_quant_debug_0_is_off(tmp_path):
    result = quant("compress", nan_file(tmp_path), env={"QUANT_DEBUG": "0"})
    assert_one_error_line(result, 1, "bad.weight")


def test_a_bug_is_one_line_asking_for_a_report_and_a_traceback_with_debug(work, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(ops_compress, "compress", broken)
    line = assert_fails_cleanly(work, ["compress", work / "model.safetensors"], 1)
    assert "internal error ZeroDivisionError" in line and "--debug" in line
    result = quant("--debug", "compress", work / "model.safetensors")
    assert result.exit_code == 1 and "Traceback" in result.stderr


def test_an_os_error_outside_the_library_checks_is_one_line(work, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(ops_compress, "compress", disk_full)
    line = assert_fails_cleanly(work, ["compress", work / "model.safetensors"], 1)
    assert "I/O error" in line
