"""Writers of quantcli.io: streaming safetensors, .npy/.npz, and atomic replacement.

The safetensors library and NumPy are the reference readers: whatever quant writes, they
must read back bit for bit.
"""

from __future__ import annotations

import errno
import io
import json
import os
import stat
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import safetensors
import safetensors.numpy as st_numpy

from quantcli.errors import FormatError, OutputError
from quantcli.io import safetensors_writer
from quantcli.io.atomic import AtomicGroup, atomic_write
from quantcli.io.numpy_files import NpzReader, write_npy, write_npz
from quantcli.io.safetensors_file import SafetensorsReader, parse_header
from quantcli.io.safetensors_writer import (
    SafetensorsWriter,
    build_header,
    reference_order,
    save_bytes,
)

# bfloat16 and float8 are not readable by safetensors.numpy, so they are checked through
# safetensors.deserialize, which returns raw bytes.
PLAIN_DTYPES = [
    np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8,
    np.uint64, np.uint32, np.uint16, np.uint8, np.bool_,
]  # fmt: skip
ML_DTYPES = [ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2]


def values(dtype: type, shape: tuple[int, ...] = (2, 3)) -> np.ndarray:
    """Distinct values (including negative zero and nan for floats) of ``dtype``."""
    size = int(np.prod(shape))
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return (np.arange(size) % 3 == 0).reshape(shape)
    if dt.kind in "iu":
        return (np.arange(size) * 37 % 251).astype(dt).reshape(shape)
    base = np.linspace(-3, 3, size).astype(np.float32)
    if size >= 2:
        base[0], base[-1] = -0.0, np.nan
    return base.astype(dt).reshape(shape)


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    return (
        np.dtype(a.dtype) == np.dtype(b.dtype)
        and a.shape == b.shape
        and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()
    )


def all_kinds() -> dict[str, np.ndarray]:
    tensors = {f"t.{np.dtype(dt).name}": values(dt) for dt in PLAIN_DTYPES + ML_DTYPES}
    tensors["scalar"] = np.array(1.5, np.float32)
    tensors["empty"] = np.zeros((0, 3), np.float16)
    tensors["odd"] = np.arange(3, dtype=np.uint8)
    return tensors


# ---------------------------------------------------------------------------------------
# SafetensorsWriter against the reference library


def test_output_equals_reference_bytes_in_reference_order():
    tensors = all_kinds()
    ordered = {info.name: tensors[info.name] for info in reference_order(
        (name, a.dtype, a.shape) for name, a in tensors.items()
    )}  # fmt: skip
    # One metadata key only: the reference keeps metadata in a hash map, in random order.
    for metadata in [None, {"é": 'quote " and\nnewline'}]:
        assert save_bytes(ordered, metadata) == st_numpy.save(tensors, metadata=metadata)


def test_reference_reads_our_files(tmp_path):
    tensors = all_kinds()  # plan order: not the reference's
    path = tmp_path / "ours.safetensors"
    path.write_bytes(save_bytes(tensors, {"k": "v"}))

    ml_names = {f"t.{np.dtype(dt).name}" for dt in ML_DTYPES}
    plain = {name: a for name, a in tensors.items() if name not in ml_names}
    with safetensors.safe_open(path, "numpy") as f:
        assert f.metadata() == {"k": "v"}
        for name, expected in plain.items():
            assert same_bytes(f.get_tensor(name), expected), name
    # load_file converts every tensor, and has no NumPy type for bfloat16/float8.
    plain_path = tmp_path / "plain.safetensors"
    plain_path.write_bytes(save_bytes(plain))
    loaded = st_numpy.load_file(plain_path)
    assert all(same_bytes(loaded[name], expected) for name, expected in plain.items())
    raw = dict(safetensors.deserialize(path.read_bytes()))
    for name, expected in tensors.items():
        assert bytes(raw[name]["data"]) == np.ascontiguousarray(expected).tobytes(), name
        assert raw[name]["shape"] == list(expected.shape)


def test_data_is_laid_out_as_the_reference_does_whatever_the_plan_order():
    """The header lists tensors in plan order; the data section is the reference writer's
    (sorted by dtype size, then name), so every tensor is aligned to its element size."""
    tensors = all_kinds()
    ours = save_bytes(tensors)
    theirs = st_numpy.save(tensors)
    ours_start = 8 + int.from_bytes(ours[:8], "little")
    theirs_start = 8 + int.from_bytes(theirs[:8], "little")
    assert ours[ours_start:] == theirs[theirs_start:]
    entries, _, data_offset = parse_header(ours, len(ours), "x")
    assert [e.name for e in entries] == list(tensors)
    for e in entries:
        assert (data_offset + e.begin) % max(1, e.dtype.itemsize) == 0, e.name


def test_our_reader_reads_our_files_and_lists_them_in_plan_order():
    tensors = all_kinds()
    data = save_bytes(tensors)
    entries, metadata, _ = parse_header(data, len(data), "x")
    assert [e.name for e in entries] == list(tensors) and metadata == {}
    reader = SafetensorsReader.from_bytes(data)
    for name, expected in tensors.items():
        assert same_bytes(reader.read(name), expected), name


def test_header_is_padded_to_eight_bytes():
    for n in range(1, 12):
        header = build_header([("x" * n, np.float32, (1,))])
        (length,) = struct.unpack("<Q", header[:8])
        assert length == len(header) - 8 and length % 8 == 0
        assert json.loads(header[8:])["x" * n]["data_offsets"] == [0, 4]


def test_layouts_and_byte_orders_are_written_as_c_order_little_endian(monkeypatch):
    base = np.arange(60, dtype=np.float32).reshape(6, 10)
    tensors = {
        "transposed": base.T,
        "strided": base[::2, ::3],
        "big_endian": base.astype(">f4"),
        "fortran": np.asfortranarray(base),
        "bool_view": (base > 30)[:, ::2],
    }
    # Small chunks exercise the row-block path for non-contiguous arrays.
    monkeypatch.setattr(safetensors_writer, "_CHUNK_BYTES", 16)
    plan = [(n, a.dtype, a.shape) for n, a in tensors.items()]
    buffer = io.BytesIO()
    with SafetensorsWriter(buffer, plan) as writer:
        for name, array in tensors.items():
            writer.write(name, array)
    loaded = st_numpy.load(buffer.getvalue())
    for name, array in tensors.items():
        assert np.array_equal(loaded[name], array)
        assert loaded[name].dtype == array.dtype.newbyteorder("=")


class WriteOnly:
    """A pipe-like sink: write() only, no seek or tell."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass


def test_streams_to_a_non_seekable_sink_and_reports_sizes():
    tensors = {"a": np.ones((3, 3), np.float32), "b": np.zeros(5, np.int8)}
    sink = WriteOnly()
    writer = SafetensorsWriter(sink, [(n, a.dtype, a.shape) for n, a in tensors.items()])
    header_only = b"".join(sink.chunks)
    assert len(header_only) == writer.header_size
    writer.write("a", tensors["a"])
    writer.write("b", tensors["b"])
    writer.close()
    data = b"".join(sink.chunks)
    assert len(data) == writer.total_size == writer.header_size + 36 + 5
    assert data == save_bytes(tensors)


def test_writes_from_a_memory_mapped_reader(tmp_path):
    source = tmp_path / "in.safetensors"
    tensors = all_kinds()
    st_numpy.save_file({k: v for k, v in tensors.items()}, source)
    with SafetensorsReader(source) as reader, atomic_write(tmp_path / "out.safetensors") as f:
        with SafetensorsWriter(f, reader.infos(), reader.metadata) as writer:
            for info in reader.infos():
                writer.write(info.name, reader.read(info.name))
    with SafetensorsReader(tmp_path / "out.safetensors") as copy:
        for name, expected in tensors.items():
            assert same_bytes(copy.read(name), expected)


def test_plan_mismatches_are_value_errors():
    plan = [("a", np.float32, (2,)), ("b", np.int8, ())]
    writer = SafetensorsWriter(io.BytesIO(), plan)
    with pytest.raises(ValueError, match="expected tensor 'a' next, got 'b'"):
        writer.write("b", np.int8(1))
    with pytest.raises(ValueError, match="planned as float32, got float64"):
        writer.write("a", np.zeros(2))
    with pytest.raises(ValueError, match="shape"):
        writer.write("a", np.zeros(3, np.float32))
    writer.write("a", np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="not written: b"):
        writer.close()
    writer.write("b", np.array(1, np.int8))
    writer.close()
    with pytest.raises(ValueError, match="not planned"):
        writer.write("c", np.zeros(1))

    with pytest.raises(ValueError, match="planned twice"):
        build_header([("a", np.float32, (1,)), ("a", np.float32, (1,))])
    with pytest.raises(ValueError, match="invalid tensor name"):
        build_header([("__metadata__", np.float32, (1,))])
    with pytest.raises(ValueError, match="metadata must map str to str"):
        build_header([], {"a": 1})
    with pytest.raises(FormatError, match="complex128 has no safetensors equivalent"):
        build_header([("c", np.complex128, (1,))])


def test_context_manager_does_not_mask_the_real_error():
    with pytest.raises(RuntimeError, match="boom"):
        with SafetensorsWriter(io.BytesIO(), [("a", np.float32, (1,))]):
            raise RuntimeError("boom")


# ---------------------------------------------------------------------------------------
# .npy / .npz


@pytest.mark.parametrize(
    "array",
    [
        values(np.float32),
        values(np.float64).T,
        np.array(2.0, np.float16),
        np.zeros((0, 4), np.float32),
        np.arange(4, dtype=">i4"),
        np.array([1 + 1j], np.complex64),
    ],
    ids=["f32", "f64-transposed", "scalar", "empty", "big-endian", "complex"],
)
def test_write_npy_round_trips(array):
    buffer = io.BytesIO()
    write_npy(buffer, array)
    assert same_bytes(np.load(io.BytesIO(buffer.getvalue()), allow_pickle=False), array)


def test_write_npy_refuses_types_npy_cannot_hold():
    for array in [values(ml_dtypes.bfloat16), np.array([None], dtype=object), np.array(["a"])]:
        with pytest.raises(OutputError, match="unsupported dtype in w.npy"):
            write_npy(io.BytesIO(), array, label="w.npy")


def test_write_npz_round_trips_deterministically_and_streams():
    tensors = {"a": values(np.float32), "b/c": np.array(3, np.int64), "e": np.zeros((0,))}
    first, second = io.BytesIO(), io.BytesIO()
    write_npz(first, tensors)
    write_npz(second, ((name, array) for name, array in tensors.items()))
    assert first.getvalue() == second.getvalue()
    with np.load(io.BytesIO(first.getvalue()), allow_pickle=False) as loaded:
        assert sorted(loaded.files) == sorted(tensors)
        for name, expected in tensors.items():
            assert same_bytes(loaded[name], expected)
    with NpzReader(first.getvalue()) as reader:
        assert [i.name for i in reader.infos()] == list(tensors)

    sink = WriteOnly()  # zipfile falls back to data descriptors on a non-seekable stream
    write_npz(sink, tensors)
    with np.load(io.BytesIO(b"".join(sink.chunks))) as loaded:
        assert same_bytes(loaded["a"], tensors["a"])

    with pytest.raises(OutputError, match=r"out.npz \(tensor 'x'\)"):
        write_npz(io.BytesIO(), {"x": values(ml_dtypes.bfloat16)}, label="out.npz")


# ---------------------------------------------------------------------------------------
# atomic_write / AtomicGroup


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_replaces_on_success(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with atomic_write(target) as f:
        f.write(b"new")
        assert target.read_bytes() == b"old"  # not visible until the block ends
        assert len(leftovers(tmp_path)) == 1
    assert target.read_bytes() == b"new" and leftovers(tmp_path) == []


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_atomic_write_failure_keeps_destination_and_removes_temp(tmp_path, error):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(type(error)):
        with atomic_write(target) as f:
            f.write(b"half")
            raise error
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []
    fresh = tmp_path / "fresh.bin"
    with pytest.raises(type(error)):
        with atomic_write(fresh):
            raise error
    assert not fresh.exists() and leftovers(tmp_path) == []


def test_atomic_write_turns_write_errors_into_output_errors(tmp_path):
    target = tmp_path / "out.safetensors"
    with pytest.raises(OutputError, match="write failed in .*out.safetensors: No space left"):
        with atomic_write(target):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert not target.exists() and leftovers(tmp_path) == []


def test_atomic_write_destination_faults(tmp_path, monkeypatch):
    with pytest.raises(OutputError, match="missing folder in .*nope"):
        with atomic_write(tmp_path / "nope" / "out.bin"):
            pass
    with pytest.raises(OutputError, match="output is a folder"):
        with atomic_write(tmp_path):
            pass

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", refuse)
    with pytest.raises(OutputError, match="is not writable"):
        with atomic_write(tmp_path / "out.bin"):
            pass


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_atomic_write_gives_normal_permissions(tmp_path):
    with atomic_write(tmp_path / "new.bin") as f:
        f.write(b"x")
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "new.bin").stat().st_mode) == 0o666 & ~umask
    existing = tmp_path / "existing.bin"
    existing.write_bytes(b"")
    existing.chmod(0o640)
    with atomic_write(existing) as f:
        f.write(b"y")
    assert stat.S_IMODE(existing.stat().st_mode) == 0o640


def test_replacing_a_memory_mapped_input_keeps_its_arrays_intact(tmp_path):
    path = tmp_path / "m.safetensors"
    st_numpy.save_file({"w": np.arange(1000, dtype=np.float32)}, path)
    with SafetensorsReader(path) as reader:
        w = reader.read("w")
        with atomic_write(path) as f:
            f.write(save_bytes({"w": np.zeros(1000, np.float32)}))
        assert w[999] == 999  # still the old file's data
    with SafetensorsReader(path) as reader:
        assert reader.read("w")[999] == 0


def test_atomic_group_commits_all_or_nothing(tmp_path):
    shard, index = tmp_path / "model-00001.safetensors", tmp_path / "model.index.json"
    index.write_text("old index")
    with pytest.raises(KeyboardInterrupt):
        with AtomicGroup() as group:
            with group.open(shard) as f:
                f.write(b"shard")
            with group.open(index) as f:
                raise KeyboardInterrupt
    assert not shard.exists() and index.read_text() == "old index"
    assert leftovers(tmp_path) == []

    renamed: list[str] = []
    real_replace = os.replace

    def spy(src, dst):
        renamed.append(os.path.basename(dst))
        real_replace(src, dst)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("os.replace", spy)
        with AtomicGroup() as group:
            with group.open(shard) as f:
                f.write(b"shard")
            assert not shard.exists()
            with group.open(index) as f:
                f.write(b"new index")
    assert renamed == [shard.name, index.name]  # index last
    assert shard.read_bytes() == b"shard" and index.read_text() == "new index"
    assert leftovers(tmp_path) == []


def test_atomic_group_refuses_misuse(tmp_path):
    with pytest.raises(ValueError, match="opened twice"):
        with AtomicGroup() as group:
            with group.open(tmp_path / "a") as f:
                f.write(b"1")
            with group.open(tmp_path / "a"):
                pass
    assert leftovers(tmp_path) == [] and not (tmp_path / "a").exists()
