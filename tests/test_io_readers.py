"""Readers of quantcli.io, checked against the safetensors library and NumPy as references.

Every reader must return exactly the stored bytes, as read-only arrays, and must refuse any
malformed input with a QuantError subclass whose message names the file.
"""

from __future__ import annotations

import io
import json
import os
import struct
import warnings
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import safetensors
import safetensors.numpy as st_numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantcli.errors import FormatError, InputError, QuantError, UnsafeInputError
from quantcli.io import detect
from quantcli.io.detect import open_input, sniff
from quantcli.io.dtypes import (
    SAFETENSORS_DTYPES,
    is_float,
    numpy_dtype,
    safetensors_dtype,
)
from quantcli.io.numpy_files import NpyReader, NpzReader
from quantcli.io.safetensors_file import SafetensorsReader, parse_header
from quantcli.io.sharded import ShardedReader
from quantcli.io.source import TensorInfo

# ---------------------------------------------------------------------------------------
# Test data

FLOAT_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F8_E5M2": ml_dtypes.float8_e5m2,
}
INT_DTYPES = {
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U64": np.uint64,
    "U32": np.uint32,
    "U16": np.uint16,
    "U8": np.uint8,
}
ALL_DTYPES = {**FLOAT_DTYPES, **INT_DTYPES, "BOOL": np.bool_, "C64": np.complex64}


def edge_values(dtype: type) -> np.ndarray:
    """0, -0, tiny, max, -max, inf, nan (floats) or min, -1, 0, 1, max (ints), as ``dtype``."""
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return np.array([False, True, True, False])
    if dt.kind == "c":
        return np.array([0, -0.0, 1 + 2j, np.inf, complex(np.nan, 1)], dtype=dt)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        values = [info.min, 0, 1, info.max] + ([-1] if dt.kind == "i" else [])
        return np.array(values, dtype=dt)
    info = ml_dtypes.finfo(dt)
    # float8_e4m3fn has no inf: the cast turns it into nan, which is fine for byte checks.
    values = np.array([0.0, -0.0, float(info.tiny), float(info.max), -float(info.max)])
    specials = np.array([np.inf, -np.inf, np.nan], dtype=np.float32).astype(dt)
    return np.concatenate([values.astype(dt), specials])


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtype, shape and bytes (so nan == nan and -0 != 0)."""
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()
    )


def sample_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    tensors = {f"edge.{name}": edge_values(dt) for name, dt in ALL_DTYPES.items()}
    tensors["matrix"] = rng.standard_normal((3, 5)).astype(np.float32)
    tensors["scalar"] = np.array(2.5, dtype=np.float16)
    tensors["empty"] = np.zeros((0, 7), dtype=np.float32)
    tensors["bf16.matrix"] = rng.standard_normal((4, 2)).astype(ml_dtypes.bfloat16)
    tensors["odd.u8"] = np.arange(3, dtype=np.uint8)  # leaves later tensors unaligned
    return tensors


def raw_safetensors(header: object, data: bytes = b"", header_len: int | None = None) -> bytes:
    """A safetensors file built by hand, to express faults the real writers never make."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    length = len(text) if header_len is None else header_len
    return struct.pack("<Q", length) + text + data


def f32_entry(begin: int, end: int, shape: list[int] | None = None) -> dict:
    return {
        "dtype": "F32",
        "shape": [(end - begin) // 4] if shape is None else shape,
        "data_offsets": [begin, end],
    }


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def read_all(source) -> dict[str, np.ndarray]:
    return {info.name: source.read(info.name) for info in source.infos()}


# ---------------------------------------------------------------------------------------
# dtypes


def test_dtype_table_round_trips_every_name():
    for name in SAFETENSORS_DTYPES:
        assert safetensors_dtype(numpy_dtype(name)) == name
    assert numpy_dtype("BF16") == np.dtype(ml_dtypes.bfloat16)
    assert numpy_dtype("F8_E4M3") == np.dtype(ml_dtypes.float8_e4m3fn)
    assert safetensors_dtype(np.dtype(">f4")) == "F32"  # byte order does not matter


def test_dtype_errors_and_float_kinds():
    with pytest.raises(FormatError, match="unknown dtype in w.safetensors: 'F4'"):
        numpy_dtype("F4", "w.safetensors")
    with pytest.raises(FormatError, match="complex128 has no safetensors equivalent"):
        safetensors_dtype(np.complex128)
    assert all(is_float(dt) for dt in FLOAT_DTYPES.values())
    assert not any(is_float(dt) for dt in [*INT_DTYPES.values(), np.bool_, np.complex64])
    assert not is_float(np.longdouble) or np.dtype(np.longdouble) == np.float64


# ---------------------------------------------------------------------------------------
# safetensors: files written by the reference library


def test_reads_reference_file_exactly(tmp_path):
    tensors = sample_tensors()
    path = tmp_path / "model.safetensors"
    st_numpy.save_file(tensors, path, metadata={"format": "pt"})
    with SafetensorsReader(path) as reader:
        assert reader.metadata == {"format": "pt"}
        assert {i.name for i in reader.infos()} == set(tensors)
        for name, expected in tensors.items():
            got = reader.read(name)
            assert type(got) is np.ndarray
            assert same_bytes(got, expected), name
            assert not got.flags.writeable
            with pytest.raises(ValueError):
                got[...] = 0 if got.ndim == 0 else got[...]
        assert reader.groups() == [("model.safetensors", reader.infos())]


def test_infos_are_in_file_order():
    tensors = {"b": np.ones(2, np.float32), "a": np.ones(3, np.int8), "c": np.ones(1, np.float64)}
    data = st_numpy.save(tensors)
    entries, _, data_offset = parse_header(data, len(data), "x")
    assert [e.begin for e in entries] == sorted(e.begin for e in entries)
    reader = SafetensorsReader.from_bytes(data)
    assert [i.name for i in reader.infos()] == [e.name for e in entries] == ["c", "b", "a"]
    assert data_offset % 8 == 0


def test_from_bytes_matches_file_reader(tmp_path):
    tensors = sample_tensors()
    data = st_numpy.save(tensors)
    path = write(tmp_path / "m.safetensors", data)
    with SafetensorsReader(path) as on_disk:
        from_bytes = SafetensorsReader.from_bytes(bytearray(data))
        assert from_bytes.label == "<stdin>"
        assert on_disk.infos() == from_bytes.infos()
        for info in on_disk.infos():
            a, b = on_disk.read(info.name), from_bytes.read(info.name)
            assert same_bytes(a, b) and not b.flags.writeable


def test_zero_d_and_zero_size_tensors(tmp_path):
    tensors = {
        "scalar": np.array(-3.5, np.float32),
        "empty": np.zeros((4, 0, 2), np.float16),
        "empty_first": np.zeros((0,), np.int64),
        "after": np.arange(3, dtype=np.int32),
    }
    path = write(tmp_path / "z.safetensors", st_numpy.save(tensors))
    with SafetensorsReader(path) as reader:
        infos = {i.name: i for i in reader.infos()}
        assert infos["scalar"] == TensorInfo("scalar", np.float32, ())
        assert infos["scalar"].nbytes == 4 and infos["empty"].nbytes == 0
        for name, expected in tensors.items():
            assert same_bytes(reader.read(name), expected)
        assert reader.read("scalar").shape == ()


def test_file_with_only_zero_size_tensors_and_no_tensors(tmp_path):
    only_empty = write(tmp_path / "e.safetensors", st_numpy.save({"e": np.zeros((0, 3))}))
    with SafetensorsReader(only_empty) as reader:
        assert reader.read("e").shape == (0, 3)
    nothing = write(tmp_path / "n.safetensors", st_numpy.save({}))
    with SafetensorsReader(nothing) as reader:
        assert reader.infos() == []


def test_arrays_outlive_the_reader(tmp_path):
    path = write(tmp_path / "m.safetensors", st_numpy.save({"w": np.arange(4.0)}))
    with SafetensorsReader(path) as reader:
        w = reader.read("w")
    assert w.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_unknown_tensor_name_is_an_input_error():
    reader = SafetensorsReader.from_bytes(st_numpy.save({"w": np.zeros(1)}), label="m.st")
    with pytest.raises(InputError, match="unknown tensor in m.st: there is no tensor named 'x'"):
        reader.read("x")


# ---------------------------------------------------------------------------------------
# safetensors: header faults

HEADER_FAULTS = {
    "shorter than 8 bytes": (b"\x10\x00\x00", "truncated header"),
    "header beyond file": (raw_safetensors(b"{}", header_len=1000), "truncated header"),
    "header over 100 MB": (raw_safetensors(b"{}", header_len=100_000_001), "100000000-byte limit"),
    "not utf-8": (raw_safetensors(b'{"\xff": 1}'), "not UTF-8"),
    "not json": (raw_safetensors(b"{not json"), "not valid JSON"),
    "json array": (raw_safetensors([1, 2]), "not an object"),
    "empty header": (raw_safetensors(b""), "not valid JSON"),
    "metadata not a dict": (raw_safetensors({"__metadata__": [1]}), "__metadata__ must map"),
    "metadata value not str": (raw_safetensors({"__metadata__": {"a": 1}}), "__metadata__"),
    "entry not an object": (raw_safetensors({"w": 5}), "not an object"),
    "missing dtype": (
        raw_safetensors({"w": {"shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
        "has no dtype",
    ),
    "missing shape": (
        raw_safetensors({"w": {"dtype": "F32", "data_offsets": [0, 4]}}, b"\0" * 4),
        "has no shape",
    ),
    "missing offsets": (raw_safetensors({"w": {"dtype": "F32", "shape": [1]}}), "data_offsets"),
    "dtype not a string": (
        raw_safetensors({"w": {"dtype": 7, "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
        "dtype 7 is not a string",
    ),
    "unknown dtype": (
        raw_safetensors({"w": {"dtype": "F4", "shape": [1], "data_offsets": [0, 1]}}, b"\0"),
        "unknown dtype",
    ),
    "shape not a list": (raw_safetensors({"w": f32_entry(0, 4, shape=4)}, b"\0" * 4), "shape 4"),
    "negative dim": (raw_safetensors({"w": f32_entry(0, 4, shape=[-1])}, b"\0" * 4), "-1"),
    "float dim": (raw_safetensors({"w": f32_entry(0, 4, shape=[1.0])}, b"\0" * 4), "1.0"),
    "bool dim": (raw_safetensors({"w": f32_entry(0, 4, shape=[True])}, b"\0" * 4), "True"),
    "too many dims": (raw_safetensors({"w": f32_entry(0, 4, shape=[1] * 65)}, b"\0" * 4), "65"),
    "impossible zero-size shape": (
        raw_safetensors({"w": f32_entry(0, 0, shape=[0, 2**62])}),
        "too large",
    ),
    "offsets not a pair": (
        raw_safetensors({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4]}}, b"\0" * 4),
        "not a pair",
    ),
    "offset is a string": (
        raw_safetensors({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, "4"]}}),
        "not a pair",
    ),
    "offset is a bool": (
        raw_safetensors({"w": {"dtype": "U8", "shape": [1], "data_offsets": [False, True]}}, b"\0"),
        "not a pair",
    ),
    "negative offset": (
        raw_safetensors({"w": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}}),
        "not a pair",
    ),
    "begin after end": (
        raw_safetensors({"w": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}}, b"\0" * 8),
        "ends before it begins",
    ),
    "out of bounds": (raw_safetensors({"w": f32_entry(0, 16)}, b"\0" * 8), "truncated data"),
    "overlap": (
        raw_safetensors({"a": f32_entry(0, 8), "b": f32_entry(4, 12)}, b"\0" * 12),
        "overlaps tensor 'a'",
    ),
    "hole": (
        raw_safetensors({"a": f32_entry(0, 4), "b": f32_entry(8, 12)}, b"\0" * 12),
        "belong to no tensor",
    ),
    "hole at start": (raw_safetensors({"a": f32_entry(4, 8)}, b"\0" * 8), "bytes 0..4"),
    "trailing bytes": (raw_safetensors({"a": f32_entry(0, 4)}, b"\0" * 8), "at the end"),
    "shape disagrees with offsets": (
        raw_safetensors({"w": f32_entry(0, 8, shape=[3])}, b"\0" * 8),
        "needs 12 bytes",
    ),
    "duplicate tensor name": (
        raw_safetensors(
            b'{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
            b'"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}',
            b"\0",
        ),
        "appears twice",
    ),
}


@pytest.mark.parametrize("fault", list(HEADER_FAULTS))
def test_header_faults_are_format_errors_naming_the_file(tmp_path, fault):
    data, why = HEADER_FAULTS[fault]
    path = write(tmp_path / "model.safetensors", data)
    with pytest.raises(FormatError) as caught:
        SafetensorsReader(path)
    message = str(caught.value)
    assert str(path) in message and why in message
    assert message.count(";") >= 1  # "<what> in <file>: <why>; <how to fix>"
    with pytest.raises(FormatError, match="in <stdin>"):
        SafetensorsReader.from_bytes(data)


def test_the_reference_agrees_that_faults_are_faults():
    # The reference reader refuses the same files, so quant is not stricter than the format.
    for fault, (data, _) in HEADER_FAULTS.items():
        if fault in {"duplicate tensor name", "impossible zero-size shape", "too many dims"}:
            continue  # the reference is more lenient here; quant cannot use such a tensor
        with pytest.raises(Exception):  # noqa: B017 - any refusal will do
            st_numpy.load(data)


def test_null_metadata_and_unknown_entry_keys_are_accepted():
    header = {"__metadata__": None, "w": {**f32_entry(0, 4), "extra": 1}}
    reader = SafetensorsReader.from_bytes(raw_safetensors(header, b"\0" * 4))
    assert reader.metadata == {} and reader.read("w").tolist() == [0.0]


def test_every_truncation_is_a_format_error(tmp_path):
    data = st_numpy.save({"a": np.arange(5, dtype=np.float32), "b": np.arange(3, dtype=np.int8)})
    path = tmp_path / "cut.safetensors"
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        with pytest.raises(FormatError, match="cut.safetensors"):
            SafetensorsReader(path)
        with pytest.raises(FormatError):
            SafetensorsReader.from_bytes(data[:cut])


def test_truncated_data_message():
    data = st_numpy.save({"w": np.zeros(1024, np.float32)})
    with pytest.raises(FormatError) as caught:
        SafetensorsReader.from_bytes(data[:-3072], label="model.safetensors")
    assert str(caught.value) == (
        "truncated data in model.safetensors: tensor 'w' needs bytes 0..4096 but the data "
        "section has 1024; the file is incomplete, download or copy it again"
    )


def test_file_shrinking_after_open_is_a_format_error(tmp_path):
    path = write(tmp_path / "m.safetensors", st_numpy.save({"w": np.zeros(4096, np.float32)}))
    with SafetensorsReader(path) as reader:
        with open(path, "r+b") as f:
            f.truncate(100)
        with pytest.raises(FormatError, match="truncated data"):
            reader.read("w")


# ---------------------------------------------------------------------------------------
# .npy


NPY_CASES = {
    "f32 matrix": np.arange(12, dtype=np.float32).reshape(3, 4),
    "fortran order": np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
    "big endian": np.arange(5, dtype=">f4"),
    "scalar": np.array(7, dtype=np.int16),
    "zero-size": np.zeros((2, 0), dtype=np.float16),
    "complex": np.array([1 + 2j, 3 - 4j], dtype=np.complex128),
    "bool": np.array([True, False]),
    "edges": edge_values(np.float32),
}


@pytest.mark.parametrize("case", list(NPY_CASES))
def test_npy_reader_matches_np_load(tmp_path, case):
    expected = NPY_CASES[case]
    path = tmp_path / "w.npy"
    np.save(path, expected)
    with NpyReader(path) as reader:
        [info] = reader.infos()
        assert info == TensorInfo("w", expected.dtype, expected.shape)
        got = reader.read("w")
        reference = np.load(path, allow_pickle=False)
        assert same_bytes(got, reference) and got.flags.f_contiguous == reference.flags.f_contiguous
        assert not got.flags.writeable and type(got) is np.ndarray
    from_bytes = NpyReader(path.read_bytes())
    assert from_bytes.infos()[0].name == "tensor" and from_bytes.label == "<stdin>"
    assert same_bytes(from_bytes.read("tensor"), expected)
    assert not from_bytes.read("tensor").flags.writeable


def test_npy_version_2_header(tmp_path):
    path = tmp_path / "v2.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array(f, np.arange(3.0), version=(2, 0))
    with NpyReader(path) as reader:
        assert reader.read("v2").tolist() == [0.0, 1.0, 2.0]


def test_npy_object_dtype_is_unsafe(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([1, "a", None], dtype=object), allow_pickle=True)
    with pytest.raises(UnsafeInputError) as caught:
        NpyReader(path)
    assert "obj.npy" in str(caught.value) and "dtype object" in str(caught.value)
    assert "never loads pickles" in str(caught.value)
    structured = tmp_path / "rec.npy"
    np.save(structured, np.zeros(2, dtype=[("a", "f4"), ("b", "O")]), allow_pickle=True)
    with pytest.raises(UnsafeInputError):
        open_input(structured)


def test_npy_non_numeric_dtype_is_refused(tmp_path):
    path = tmp_path / "s.npy"
    np.save(path, np.array(["a", "bc"]))
    with pytest.raises(FormatError, match="unsupported dtype in .*s.npy"):
        NpyReader(path)


def test_every_npy_truncation_is_a_format_error(tmp_path):
    buffer = io.BytesIO()
    np.save(buffer, np.arange(6, dtype=np.float32))
    data = buffer.getvalue()
    path = tmp_path / "cut.npy"
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        with pytest.raises(FormatError):
            NpyReader(path)
        with pytest.raises(FormatError):
            NpyReader(data[:cut])


@pytest.mark.parametrize(
    "header",
    [
        b"{'descr': '<f4', 'fortran_order': False}",
        b"{'descr': '<f4', 'fortran_order': 0, 'shape': (1,)}",
        b"{'descr': 'not a dtype', 'fortran_order': False, 'shape': (1,)}",
        b"{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}",
        b"{'descr': '<f4', 'fortran_order': False, 'shape': [1]}",
        b"__import__('os').system('true')",
        b"[" * 5000,
    ],
)
def test_bad_npy_headers(header):
    data = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * 4
    with pytest.raises(FormatError, match="bad header in x.npy"):
        NpyReader(data, label="x.npy")


def test_a_bad_escape_in_an_npy_header_is_an_error_not_a_warning():
    header = b"{'descr': '<f4\\s', 'fortran_order': False, 'shape': (1,), }"
    data = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * 4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(FormatError, match="bad header in x.npy"):
            NpyReader(data, label="x.npy")
    assert not caught, [str(w.message) for w in caught]


# ---------------------------------------------------------------------------------------
# .npz


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_reader_matches_np_load(tmp_path, save):
    arrays = {name: NPY_CASES[name] for name in ["f32 matrix", "fortran order", "scalar"]}
    arrays = {name.replace(" ", "_"): a for name, a in arrays.items()}
    arrays["nested/name"] = np.zeros((0, 3), np.int8)
    path = tmp_path / "w.npz"
    save(path, **arrays)
    with NpzReader(path) as reader, np.load(path, allow_pickle=False) as reference:
        assert [i.name for i in reader.infos()] == list(arrays)
        for name in arrays:
            got = reader.read(name)
            assert same_bytes(got, reference[name]) and not got.flags.writeable
    with NpzReader(path.read_bytes()) as from_bytes:
        assert same_bytes(from_bytes.read("scalar"), arrays["scalar"])


def test_npz_pickled_member_is_unsafe(tmp_path):
    path = tmp_path / "p.npz"
    np.savez(path, ok=np.zeros(2), bad=np.array([{"a": 1}], dtype=object))
    with pytest.raises(UnsafeInputError, match="p.npz.*'bad.npy'.*dtype object"):
        NpzReader(path)


def test_npz_faults(tmp_path):
    path = tmp_path / "w.npz"
    np.savez(path, a=np.arange(100, dtype=np.float32))
    data = path.read_bytes()
    for cut in range(0, len(data), 7):
        with pytest.raises(FormatError):
            NpzReader(data[:cut])
    # A flipped data byte is caught by the member's CRC when the tensor is read.
    np.savez(path, a=np.arange(100_000, dtype=np.float32))
    data = path.read_bytes()
    position = data.index(np.float32(90_000).tobytes())
    corrupt = data[:position] + b"\xff" + data[position + 1 :]
    reader = NpzReader(corrupt, label="c.npz")
    with pytest.raises(FormatError, match="bad archive in c.npz.*Bad CRC"):
        reader.read("a")

    other = io.BytesIO()
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(FormatError, match="not a .npy array"):
        NpzReader(other.getvalue())


# ---------------------------------------------------------------------------------------
# Sharded checkpoints


def make_sharded(folder: Path, weight_map: dict | None = None, index: object = None) -> Path:
    shard1 = {"layer.0.w": np.arange(4, dtype=np.float32), "layer.0.b": np.ones(2, np.float16)}
    shard2 = {"head.w": np.full((2, 2), 3, np.float32)}
    st_numpy.save_file(shard1, folder / "model-00001-of-00002.safetensors")
    st_numpy.save_file(shard2, folder / "model-00002-of-00002.safetensors")
    if weight_map is None:
        weight_map = {name: "model-00001-of-00002.safetensors" for name in shard1}
        weight_map |= {name: "model-00002-of-00002.safetensors" for name in shard2}
    if index is None:
        index = {"metadata": {"total_size": 36, "format": "pt"}, "weight_map": weight_map}
    path = folder / "model.safetensors.index.json"
    path.write_text(json.dumps(index))
    return path


def test_sharded_reader(tmp_path):
    index = make_sharded(tmp_path)
    with ShardedReader(index) as reader:
        assert reader.metadata == {"total_size": "36", "format": "pt"}
        assert reader.index_path == str(index)
        assert [i.name for i in reader.infos()] == ["layer.0.w", "layer.0.b", "head.w"]
        groups = reader.groups()
        assert [g[0] for g in groups] == [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        ]
        assert [i.name for i in groups[1][1]] == ["head.w"]
        assert reader.read("head.w").tolist() == [[3.0, 3.0], [3.0, 3.0]]
    with open_input(tmp_path) as from_folder:
        assert isinstance(from_folder, ShardedReader)


@pytest.mark.parametrize(
    "shard", ["../model-00001-of-00002.safetensors", "/etc/passwd", "a/../../x", "..\\x", "C:x"]
)
def test_shard_paths_outside_the_folder_are_refused(tmp_path, shard):
    index = make_sharded(tmp_path, weight_map={"layer.0.w": shard})
    with pytest.raises(UnsafeInputError, match="unsafe shard path in .*index.json"):
        ShardedReader(index)


def test_sharded_faults(tmp_path):
    index = make_sharded(tmp_path, weight_map={"layer.0.w": "missing.safetensors"})
    with pytest.raises(InputError, match="missing shard .*'missing.safetensors'"):
        ShardedReader(index)

    good = {name: "model-00001-of-00002.safetensors" for name in ["layer.0.w", "layer.0.b"]}
    make_sharded(tmp_path, weight_map={**good, "ghost": "model-00001-of-00002.safetensors"})
    with pytest.raises(FormatError, match="'ghost' is mapped to shard"):
        ShardedReader(index)

    make_sharded(tmp_path, weight_map={"layer.0.w": "model-00001-of-00002.safetensors"})
    with pytest.raises(FormatError, match="'layer.0.b' is in shard .* is not in the index"):
        ShardedReader(index)

    for bad_index in [[1], {"weight_map": {}}, {"weight_map": {"a": 3}}, {"metadata": 1}]:
        make_sharded(tmp_path, index=bad_index)
        with pytest.raises(FormatError, match="bad index in"):
            ShardedReader(index)
    index.write_bytes(b"\xff{")
    with pytest.raises(FormatError):
        ShardedReader(index)


# ---------------------------------------------------------------------------------------
# open_input: detection


class FakeStdin:
    def __init__(self, data: bytes, tty: bool = False) -> None:
        self.buffer = io.BytesIO(data)
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "reader", "names"),
    [
        (npy_bytes(np.arange(3.0)), NpyReader, ["tensor"]),
        (npz_bytes(a=np.arange(3.0)), NpzReader, ["a"]),
        (st_numpy.save({"w": np.arange(3.0)}), SafetensorsReader, ["w"]),
    ],
)
def test_stdin_is_detected_from_bytes(monkeypatch, data, reader, names):
    monkeypatch.setattr("sys.stdin", FakeStdin(data))
    with open_input("-") as source:
        assert isinstance(source, reader) and source.label == "<stdin>"
        assert [i.name for i in source.infos()] == names
        assert source.read(names[0]).tolist() == [0.0, 1.0, 2.0]


def test_stdin_faults(monkeypatch):
    monkeypatch.setattr("sys.stdin", FakeStdin(b""))
    with pytest.raises(FormatError, match="empty input in <stdin>"):
        open_input("-")
    monkeypatch.setattr("sys.stdin", FakeStdin(b"hello world, not weights"))
    with pytest.raises(FormatError, match="unknown format in <stdin>"):
        open_input("-")
    monkeypatch.setattr("sys.stdin", FakeStdin(b"", tty=True))
    with pytest.raises(InputError, match="stdin is a terminal"):
        open_input("-")


def test_files_are_detected_by_content_not_extension(tmp_path):
    cases = {
        "really_npy.safetensors": (npy_bytes(np.zeros(2)), NpyReader),
        "really_npz.npy": (npz_bytes(a=np.zeros(2)), NpzReader),
        "really_safetensors.npz": (st_numpy.save({"w": np.zeros(2)}), SafetensorsReader),
        "no_extension": (st_numpy.save({"w": np.zeros(2)}), SafetensorsReader),
        "empty.npz": (npz_bytes(), NpzReader),
    }
    for name, (data, reader) in cases.items():
        with open_input(write(tmp_path / name, data)) as source:
            assert isinstance(source, reader), name
    with open_input(write(tmp_path / "w.npy", npy_bytes(np.zeros(2)))) as source:
        assert source.infos()[0].name == "w"


def test_sniff():
    assert sniff(b"\x93NUMPY\x01\x00", 100) == "npy"
    assert sniff(b"PK\x05\x06", 22) == "npz"
    assert sniff(struct.pack("<Q", 10) + b"{", 18) == "safetensors"
    assert sniff(struct.pack("<Q", 10) + b"{", 17) is None  # header longer than the file
    assert sniff(b"hello, world", 12) is None


def test_path_faults(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="no such file in .*nope.safetensors.*check the path"):
        open_input(tmp_path / "nope.safetensors")
    with pytest.raises(FormatError, match="empty file in"):
        open_input(write(tmp_path / "empty.safetensors", b""))
    text = write(tmp_path / "notes.safetensors", b"these are not weights\n")
    with pytest.raises(FormatError, match="notes.safetensors"):
        open_input(text)
    with pytest.raises(FormatError, match="unknown format in .*notes.npy"):
        open_input(write(tmp_path / "notes.npy", b"these are not weights\n"))
    empty_folder = tmp_path / "empty_folder"
    empty_folder.mkdir()
    with pytest.raises(InputError, match="folder without a checkpoint"):
        open_input(empty_folder)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    locked = write(tmp_path / "locked.safetensors", st_numpy.save({"w": np.zeros(1)}))
    monkeypatch.setattr(detect, "open", refuse, raising=False)
    with pytest.raises(InputError, match="Permission denied"):
        open_input(locked)


def test_folder_with_one_or_many_safetensors(tmp_path):
    write(tmp_path / "a.safetensors", st_numpy.save({"w": np.zeros(1)}))
    with open_input(tmp_path) as source:
        assert isinstance(source, SafetensorsReader)
    write(tmp_path / "b.safetensors", st_numpy.save({"w": np.zeros(1)}))
    with pytest.raises(InputError, match="ambiguous checkpoint .* 2 .safetensors files"):
        open_input(tmp_path)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user")
def test_unreadable_file_is_an_input_error(tmp_path):
    path = write(tmp_path / "m.safetensors", st_numpy.save({"w": np.zeros(1)}))
    path.chmod(0)
    with pytest.raises(InputError):
        open_input(path)


# ---------------------------------------------------------------------------------------
# Any bytes at all: only QuantError may come out


SEEDS = [
    st_numpy.save({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.int8)}),
    npy_bytes(np.arange(6, dtype=np.float32)),
    npz_bytes(a=np.arange(4, dtype=np.float32), b=np.ones(2, np.int8)),
]


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.sampled_from(SEEDS),
    edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4),
    keep=st.none() | st.integers(0, 400),
)
def test_mutated_inputs_raise_only_quant_errors(monkeypatch, seed, edits, keep):
    data = bytearray(seed)
    for position, value in edits:
        if position < len(data):
            data[position] = value
    monkeypatch.setattr("sys.stdin", FakeStdin(bytes(data[:keep])))
    try:
        with open_input("-") as source:
            for info in source.infos():
                array = source.read(info.name)
                assert array.shape == info.shape and array.dtype == info.dtype
    except QuantError:
        pass


def test_reference_reader_agrees_on_what_we_accept():
    # Header entries parsed by quant and by the reference library agree.
    data = st_numpy.save(sample_tensors())
    entries, metadata, data_offset = parse_header(data, len(data), "x")
    reference = dict(safetensors.deserialize(data))
    for entry in entries:
        assert reference[entry.name]["shape"] == list(entry.shape)
        stored = data[data_offset + entry.begin : data_offset + entry.end]
        assert bytes(reference[entry.name]["data"]) == stored
