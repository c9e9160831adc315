"""GGUF files: quant's reader and writer, checked against llama.cpp's own Python package.

Files written by ``gguf.GGUFWriter`` must read the same through quant (metadata with its
types, tensors bit for bit); files written by quant must read the same through
``gguf.GGUFReader``; reading a file and writing it back must give the same bytes. Damaged
files are built byte by byte below, with a small encoder that does not come from quant, and
each must be refused with a one-line FormatError naming the file (and the tensor).
"""

from __future__ import annotations

import io
import math
import struct
import tracemalloc
from pathlib import Path

import gguf
import ml_dtypes
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as VT

from quantcli.errors import FormatError, InputError
from quantcli.io.detect import open_input, sniff
from quantcli.io.ggml_types import GGML_TYPES, REMOVED_TYPES, ggml_type, ggml_type_of_dtype
from quantcli.io.gguf_file import GGUFReader, GGUFValue, GGUFValueType, field_values
from quantcli.io.gguf_writer import GGUFWriter, build_header, save_gguf_bytes, write_copy

# ---------------------------------------------------------------------------------------
# Files made with llama.cpp's gguf package


def rng() -> np.random.Generator:
    return np.random.default_rng(11)


def write_with_gguf(path: Path, build, alignment: int | None = None, arch: str = "llama") -> Path:
    """A file written by gguf.GGUFWriter; ``build(writer)`` adds keys and tensors."""
    writer = gguf.GGUFWriter(str(path), arch)
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    build(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def every_value_type(writer: gguf.GGUFWriter) -> None:
    writer.add_uint8("u8", 255)
    writer.add_int8("i8", -128)
    writer.add_uint16("u16", 65535)
    writer.add_int16("i16", -32768)
    writer.add_uint32("u32", 2**32 - 1)
    writer.add_int32("i32", -(2**31))
    writer.add_uint64("u64", 2**64 - 1)
    writer.add_int64("i64", -(2**63))
    writer.add_float32("f32", 0.1)
    writer.add_float64("f64", -1e300)
    writer.add_bool("yes", True)
    writer.add_bool("no", False)
    writer.add_string("text", "héllo wörld, 日本語")
    writer.add_string("raw", b"\xff\xfe not utf-8")  # kept as it is, like llama.cpp
    writer.add_array("tokens", [f"tok{i}" for i in range(300)] + ["", "é", "\n"])
    writer.add_array("scores", [float(i) / 3 for i in range(50)])
    writer.add_key_value("ids", list(range(-5, 20)), VT.ARRAY, sub_type=VT.INT64)
    writer.add_key_value("u8s", [0, 1, 255], VT.ARRAY, sub_type=VT.UINT8)
    writer.add_array("flags", [True, False, True])
    writer.add_array("nested", [[1, 2, 3], [4], [5, 6]])
    writer.add_array("nested_strings", [["a", "b"], ["c"]])


def float_tensors(writer: gguf.GGUFWriter) -> dict[str, np.ndarray]:
    """F32, F16, BF16, F64 and integer tensors of 1 to 4 dimensions (and what they hold)."""
    r = rng()
    tensors = {
        "token_embd.weight": r.standard_normal((10, 64)).astype(np.float16),
        "blk.0.attn_q.weight": r.standard_normal((64, 64)).astype(np.float32),
        "blk.0.ffn_up.weight": r.standard_normal((96, 64)).astype(ml_dtypes.bfloat16),
        "blk.0.attn_norm.weight": r.standard_normal(64).astype(np.float32),
        "conv.weight": r.standard_normal((2, 3, 4, 5)).astype(np.float32),
        "rope.freqs": r.standard_normal((3, 7, 5)).astype(np.float64),
        "positions": np.arange(-3, 9, dtype=np.int32),
        "bytes8": np.arange(-4, 4, dtype=np.int8).reshape(2, 4),
        "big": np.array([2**62, -(2**63)], dtype=np.int64),
        "shorts": np.array([[-7, 300]], dtype=np.int16),
    }
    for name, array in tensors.items():
        if array.dtype == ml_dtypes.bfloat16:  # gguf-py takes BF16 as its bits
            writer.add_tensor(name, array.view(np.uint16), raw_dtype=Q.BF16)
        else:
            writer.add_tensor(name, array)
    return tensors


def quantized_tensors(writer: gguf.GGUFWriter) -> dict[str, tuple[Q, np.ndarray]]:
    """Q8_0 and Q4_0 made by gguf's reference quantizer, and K-quant blocks of random bytes
    (the container does not look inside blocks): name -> (type, stored bytes)."""
    r = rng()
    x = r.standard_normal((4, 256)).astype(np.float32)
    tensors = {
        "q8": (Q.Q8_0, gguf.quants.quantize(x, Q.Q8_0)),
        "q4": (Q.Q4_0, gguf.quants.quantize(x, Q.Q4_0)),
        "q4k": (Q.Q4_K, r.integers(0, 256, (3, 2 * 144), dtype=np.uint8)),
        "q6k": (Q.Q6_K, r.integers(0, 256, (2, 210), dtype=np.uint8)),
        "mxfp4": (Q.MXFP4, r.integers(0, 256, (2, 3 * 17), dtype=np.uint8)),
    }
    for name, (kind, blocks) in tensors.items():
        writer.add_tensor(name, blocks, raw_dtype=kind)
    return tensors


@pytest.fixture
def model(tmp_path) -> tuple[Path, dict, dict]:
    """A file with every value type, float and quantized tensors: (path, floats, quantized)."""
    made: dict = {}

    def build(writer):
        every_value_type(writer)
        made["floats"] = float_tensors(writer)
        made["quantized"] = quantized_tensors(writer)

    path = write_with_gguf(tmp_path / "model.gguf", build)
    return path, made["floats"], made["quantized"]


def reference_fields(path: Path) -> dict:
    """key -> (types, contents) as gguf.GGUFReader sees them."""
    reader = gguf.GGUFReader(str(path))
    out = {}
    for name, f in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        try:
            out[name] = (list(f.types), f.contents())
        except UnicodeDecodeError:  # gguf decodes strictly; its bytes are in the last part
            out[name] = (list(f.types), f.parts[-1].tobytes())
    return out


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# ---------------------------------------------------------------------------------------
# The ggml type table


def test_type_table_matches_gguf():
    reference = {int(t): (t.name, *gguf.constants.GGML_QUANT_SIZES[t]) for t in Q}
    ours = {i: (t.name, t.block_size, t.block_bytes) for i, t in GGML_TYPES.items()}
    assert ours == reference
    assert not set(REMOVED_TYPES) & set(GGML_TYPES)
    assert ggml_type("Q4_K") is ggml_type(12) is GGML_TYPES[12]
    assert ggml_type_of_dtype(np.dtype(">f4")).name == "F32"
    assert ggml_type_of_dtype(ml_dtypes.bfloat16).name == "BF16"
    assert ggml_type_of_dtype(np.uint8) is None  # ggml has no unsigned byte type
    # bytes of a tensor: rows of whole blocks (Q4_K: 256 elements in 144 bytes)
    assert ggml_type("Q4_K").nbytes((3, 512)) == 3 * 2 * 144
    assert ggml_type("F16").nbytes(()) == 2


# ---------------------------------------------------------------------------------------
# Reading what gguf.GGUFWriter wrote


def test_reads_gguf_written_file(model):
    path, floats, quantized = model
    with GGUFReader(path) as reader:
        assert reader.version == 3 and reader.alignment == 32
        reference = reference_fields(path)
        assert list(reader.fields) == list(reference)
        for key, value in reader.fields.items():
            types, contents = reference[key]
            assert value.type == types[0], key
            if value.type == GGUFValueType.ARRAY:
                assert value.item_type == types[1], key
        values = field_values(reader.fields)
        for key, (types, contents) in reference.items():
            if key == "raw" or VT.ARRAY in types[1:]:
                continue  # compared below: gguf decodes strictly, and flattens nested arrays
            if VT.FLOAT32 in types:
                contents = np.float32(contents).tolist()
            assert values[key] == contents, key
        assert values["raw"].encode("utf-8", "surrogateescape") == b"\xff\xfe not utf-8"
        assert values["nested"] == [[1, 2, 3], [4], [5, 6]]
        assert values["nested_strings"] == [["a", "b"], ["c"]]
        assert values["u64"] == 2**64 - 1 and values["i64"] == -(2**63)
        assert reader.fields["f32"].value.dtype == np.float32

        names = [i.name for i in reader.infos()]
        assert names == [*floats, *quantized]  # file order
        for name, expected in floats.items():
            info = reader.info(name)
            assert (info.dtype, info.shape) == (expected.dtype, expected.shape), name
            got = reader.read(name)
            assert type(got) is np.ndarray and not got.flags.writeable
            assert same_bytes(got, expected), name
            # the stored bytes are the same bytes, as rows
            blocks = reader.read_blocks(name)
            assert blocks.ggml_type is ggml_type_of_dtype(expected.dtype)
            assert blocks.blocks.tobytes() == expected.tobytes()
        theirs = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
        for name, (kind, stored) in quantized.items():
            info = reader.info(name)
            assert info.dtype == np.uint8 and info.shape == stored.shape
            raw = reader.read_blocks(name)
            assert raw.ggml_type.id == kind and raw.ggml_type.name == kind.name
            assert raw.shape == tuple(int(d) for d in reversed(theirs[name].shape))
            assert same_bytes(raw.blocks, stored) and not raw.blocks.flags.writeable
            assert same_bytes(raw.blocks, theirs[name].data)
            with pytest.raises(FormatError) as caught:
                reader.read(name)
            message = str(caught.value)
            assert str(path) in message and repr(name) in message and kind.name in message
            assert "\n" not in message and message.count(";") == 1


def test_reads_are_memory_maps_of_the_file(model):
    path, floats, _ = model
    with GGUFReader(path) as reader:
        array = reader.read("blk.0.attn_q.weight")
        offset = reader.header.data_offset + reader.tensor("blk.0.attn_q.weight").offset
        before = float(array[0, 0])
        # a write to the file shows through the array: no copy was made
        with open(path, "r+b") as f:
            f.seek(offset)
            f.write(np.float32(before + 1).tobytes())
        assert float(array[0, 0]) == before + 1


def test_custom_alignment_and_versions(tmp_path):
    data = rng().standard_normal((3, 5)).astype(np.float32)
    path = write_with_gguf(tmp_path / "a.gguf", lambda w: w.add_tensor("w", data), alignment=64)
    with GGUFReader(path) as reader:
        assert reader.alignment == 64 and reader.header.data_offset % 64 == 0
        assert same_bytes(reader.read("w"), data)
        assert reader.fields["general.alignment"] == GGUFValue(GGUFValueType.UINT32, 64)
    # version 2 has the same layout
    v2 = bytearray(path.read_bytes())
    v2[4:8] = struct.pack("<I", 2)
    reader = GGUFReader.from_bytes(bytes(v2), label="v2.gguf")
    assert reader.version == 2 and same_bytes(reader.read("w"), data)


def test_file_without_tensors(tmp_path):
    path = write_with_gguf(tmp_path / "vocab.gguf", lambda w: w.add_array("t", ["a", "b"]))
    with GGUFReader(path) as reader:
        assert reader.infos() == [] and field_values(reader.fields)["t"] == ["a", "b"]
    with open_input(path) as source:
        assert isinstance(source, GGUFReader)


def test_metadata_text_is_short(model):
    path, _, _ = model
    with GGUFReader(path) as reader:
        meta = reader.metadata
    assert meta["general.architecture"] == "llama"
    assert meta["u64"] == str(2**64 - 1) and meta["yes"] == "true" and meta["f32"] == "0.1"
    assert meta["tokens"] == "[303 string values]"
    assert meta["u8s"] == "[0, 1, 255]" and meta["flags"] == "[true, false, true]"
    assert meta["nested"] == "[3 array values]"
    assert meta["raw"] == "\ufffd\ufffd not utf-8"
    assert all(isinstance(v, str) and v.isprintable() for v in meta.values())


def test_unknown_tensor_and_closed_reader(model):
    path, _, _ = model
    reader = GGUFReader(path)
    with pytest.raises(InputError, match="no tensor named 'nope'"):
        reader.read("nope")
    array = reader.read("positions")
    reader.close()
    assert array.tolist() == list(range(-3, 9))  # arrays outlive the reader


# ---------------------------------------------------------------------------------------
# Writing, and reading back with gguf.GGUFReader


def sample_fields() -> dict[str, GGUFValue]:
    V = GGUFValueType
    return {
        "general.architecture": GGUFValue(V.STRING, "llama"),
        "general.alignment": GGUFValue(V.UINT32, 64),
        "u8": GGUFValue(V.UINT8, 200),
        "i16": GGUFValue(V.INT16, -300),
        "u64": GGUFValue(V.UINT64, 2**64 - 1),
        "f32": GGUFValue(V.FLOAT32, np.float32(1.5)),
        "f64": GGUFValue(V.FLOAT64, np.float64(-2.25)),
        "flag": GGUFValue(V.BOOL, True),
        "tokens": GGUFValue(V.ARRAY, ["<s>", "</s>", "héllo"], V.STRING),
        "scores": GGUFValue(V.ARRAY, np.array([0.5, -1, 3], np.float32), V.FLOAT32),
        "types": GGUFValue(V.ARRAY, [1, 2, 3, 6], V.INT32),
        "bits": GGUFValue(V.ARRAY, np.array([True, False]), V.BOOL),
        "empty": GGUFValue(V.ARRAY, [], V.UINT32),
        "nested": GGUFValue(
            V.ARRAY,
            [GGUFValue(V.ARRAY, [1, 2], V.UINT16), GGUFValue(V.ARRAY, ["x"], V.STRING)],
            V.ARRAY,
        ),
    }


def test_writer_output_reads_the_same_in_gguf(tmp_path):
    r = rng()
    floats = {
        "w": r.standard_normal((8, 32)).astype(np.float32),
        "h": r.standard_normal((3, 2, 5)).astype(np.float16),
        "b": r.standard_normal(7).astype(ml_dtypes.bfloat16),
        "ids": np.arange(6, dtype=np.int64),
    }
    q8 = gguf.quants.quantize(r.standard_normal((2, 64)).astype(np.float32), Q.Q8_0)
    plan = [(name, ggml_type_of_dtype(a.dtype), a.shape) for name, a in floats.items()]
    plan.append(("q8", "Q8_0", (2, 64)))
    buffer = io.BytesIO()
    with GGUFWriter(buffer, sample_fields(), plan) as writer:
        for name, array in floats.items():
            writer.write(name, array)
        writer.write("q8", q8)
    path = tmp_path / "ours.gguf"
    path.write_bytes(buffer.getvalue())
    assert len(buffer.getvalue()) == writer.total_size

    theirs = gguf.GGUFReader(str(path))
    assert theirs.alignment == 64 and theirs.data_offset % 64 == 0
    fields = reference_fields(path)
    assert fields["general.architecture"] == ([VT.STRING], "llama")
    assert fields["u8"] == ([VT.UINT8], 200) and fields["i16"] == ([VT.INT16], -300)
    assert fields["u64"] == ([VT.UINT64], 2**64 - 1)
    assert fields["f32"] == ([VT.FLOAT32], 1.5) and fields["f64"] == ([VT.FLOAT64], -2.25)
    assert fields["flag"] == ([VT.BOOL], True)
    assert fields["tokens"] == ([VT.ARRAY, VT.STRING], ["<s>", "</s>", "héllo"])
    assert fields["scores"] == ([VT.ARRAY, VT.FLOAT32], [0.5, -1.0, 3.0])
    assert fields["types"] == ([VT.ARRAY, VT.INT32], [1, 2, 3, 6])
    assert fields["bits"] == ([VT.ARRAY, VT.BOOL], [True, False])
    assert fields["empty"] == ([VT.ARRAY], [])
    assert fields["nested"][0][:2] == [VT.ARRAY, VT.ARRAY]
    tensors = {t.name: t for t in theirs.tensors}
    assert list(tensors) == [*floats, "q8"]
    for name, array in floats.items():
        t = tensors[name]
        expected = array.view(np.uint16) if array.dtype == ml_dtypes.bfloat16 else array
        assert list(reversed(t.shape.tolist())) == list(array.shape), name
        assert t.data.tobytes() == expected.tobytes(), name
    assert tensors["q8"].tensor_type == Q.Q8_0 and same_bytes(tensors["q8"].data, q8)
    # and quant reads back exactly what it wrote
    with GGUFReader(path) as reader:
        assert reader.fields == sample_fields()


def test_writer_matches_gguf_writer_byte_for_byte(model, tmp_path):
    # the same content written by gguf.GGUFWriter and by quant: the same bytes
    path, _, _ = model
    with GGUFReader(path) as reader:
        buffer = io.BytesIO()
        write_copy(reader, buffer)
    assert buffer.getvalue() == path.read_bytes()


@pytest.mark.parametrize("alignment", [None, 8, 64, 4096])
def test_round_trip_is_byte_identical(tmp_path, alignment):
    def build(writer):
        every_value_type(writer)
        float_tensors(writer)
        quantized_tensors(writer)

    path = write_with_gguf(tmp_path / "a.gguf", build, alignment=alignment)
    original = path.read_bytes()
    with open_input(path) as reader:
        copy = io.BytesIO()
        write_copy(reader, copy)
    assert copy.getvalue() == original
    # and from the copy again (a writer's output is a reader's input)
    again = io.BytesIO()
    write_copy(GGUFReader.from_bytes(copy.getvalue()), again)
    assert again.getvalue() == original


def test_round_trip_keeps_every_bit_of_values():
    V = GGUFValueType
    snan = np.frombuffer(b"\x01\x00\x80\x7f", "<f4")[0]  # a signalling NaN with a payload
    fields = {
        "nan": GGUFValue(V.FLOAT32, snan),
        "neg_zero": GGUFValue(V.FLOAT64, np.float64(-0.0)),
        "nans": GGUFValue(V.ARRAY, np.frombuffer(b"\x01\x00\xc0\xff" * 3, "<f4"), V.FLOAT32),
        "bad_utf8": GGUFValue(
            V.ARRAY, ["ok", b"\xc3(".decode("utf-8", "surrogateescape")], V.STRING
        ),
        "v2_copy": GGUFValue(V.STRING, "x"),
    }
    data = save_gguf_bytes(fields, {"w": np.full((2, 3), np.nan, np.float32)})
    reader = GGUFReader.from_bytes(data)
    assert reader.fields == fields
    assert reader.fields["nan"].value.tobytes() == b"\x01\x00\x80\x7f"
    copy = io.BytesIO()
    write_copy(reader, copy)
    assert copy.getvalue() == data
    # version 2 is written back as version 2
    v2 = data[:4] + struct.pack("<I", 2) + data[8:]
    copy = io.BytesIO()
    write_copy(GGUFReader.from_bytes(v2), copy)
    assert copy.getvalue() == v2


def test_file_without_trailing_padding_is_read(tmp_path):
    # llama.cpp loads a file whose last tensor is not padded; the copy adds the padding
    data = save_gguf_bytes({}, {"w": np.ones(3, np.float32)})
    short = data[: -(32 - 12)]
    reader = GGUFReader.from_bytes(short, label="short.gguf")
    assert reader.read("w").tolist() == [1.0, 1.0, 1.0]
    copy = io.BytesIO()
    write_copy(reader, copy)
    assert copy.getvalue() == data


@pytest.mark.parametrize(
    ("fields", "plan", "alignment", "fragment"),
    [
        ({}, [("x" * 64, "F32", (2,))], None, "shorter than 64 bytes"),
        ({}, [("w", "F32", (2,)), ("w", "F32", (2,))], None, "planned twice"),
        ({}, [("w", "Q8_0", (2, 33))], None, "not a multiple of the Q8_0 block size"),
        ({}, [("w", "F32", (0, 3))], None, "positive"),
        ({}, [("w", "F32", (1, 1, 1, 1, 1))], None, "at most 4"),
        ({}, [("w", "Q9_9", (2,))], None, "unknown ggml type"),
        ({}, [], 64, "needs a general.alignment field"),
        ({"general.alignment": GGUFValue(GGUFValueType.UINT32, 48)}, [], None, "power of two"),
        ({"general.alignment": GGUFValue(GGUFValueType.UINT32, 64)}, [], 32, "disagrees"),
        ({"general.alignment": GGUFValue(GGUFValueType.INT32, 64)}, [], None, "UINT32"),
        ({"k": GGUFValue(GGUFValueType.UINT8, 256)}, [], None, "integers in [0, 255]"),
        ({"k": GGUFValue(GGUFValueType.INT8, 1.5)}, [], None, "integers"),
        ({"k": GGUFValue(GGUFValueType.BOOL, 2)}, [], None, "True/False"),
        ({"k": GGUFValue(GGUFValueType.STRING, b"x")}, [], None, "must be a str"),
        ({"k": GGUFValue(GGUFValueType.UINT32, [1, 2])}, [], None, "not a sequence"),
        ({"k": GGUFValue(GGUFValueType.ARRAY, [1])}, [], None, "unknown item type"),
        ({"k": GGUFValue(GGUFValueType.ARRAY, [[1]], GGUFValueType.ARRAY)}, [], None, "ARRAY"),
        ({"k": 3}, [], None, "must be a GGUFValue"),
        ({"": GGUFValue(GGUFValueType.UINT8, 1)}, [], None, "non-empty"),
    ],
)
def test_writer_refuses_what_the_format_cannot_hold(fields, plan, alignment, fragment):
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        build_header(fields, plan, alignment)


def test_writer_checks_the_plan():
    buffer = io.BytesIO()
    writer = GGUFWriter(buffer, {}, [("a", "F32", (2, 2)), ("b", "Q8_0", (1, 32))])
    with pytest.raises(ValueError, match="expected tensor 'a' next"):
        writer.write("b", np.zeros(34, np.uint8))
    with pytest.raises(ValueError, match="planned as F32"):
        writer.write("a", np.zeros((2, 2), np.float16))
    writer.write("a", np.zeros((2, 2), ">f4"))  # any byte order: written little-endian
    with pytest.raises(ValueError, match="takes 34 bytes"):
        writer.write("b", np.zeros(33, np.uint8))
    with pytest.raises(ValueError, match="planned but not written: b"):
        writer.close()
    writer.write("b", np.zeros((1, 34), np.uint8))
    writer.close()
    assert len(buffer.getvalue()) == writer.total_size


# ---------------------------------------------------------------------------------------
# Damaged files, built byte by byte (independently of quant's writer)


def gstr(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + struct.pack("<I", vtype) + payload


def tensor_info(name: str | bytes, dims: list[int], type_id: int, offset: int) -> bytes:
    out = gstr(name) + struct.pack("<I", len(dims))
    out += b"".join(struct.pack("<Q", d) for d in dims)
    return out + struct.pack("<IQ", type_id, offset)


def craft(
    kvs: list[bytes] = (),
    infos: list[bytes] = (),
    data: bytes = b"",
    version: int = 3,
    counts: tuple[int, int] | None = None,
    alignment: int = 32,
) -> bytes:
    n_tensors, n_kv = counts if counts is not None else (len(infos), len(kvs))
    head = b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv) + b"".join(kvs)
    head += b"".join(infos)
    head += bytes(-len(head) % alignment)
    return head + data


W_DATA = np.arange(8, dtype=np.float32).tobytes()  # a [2, 4] F32 tensor: dims [4, 2]


def one_tensor(**changes) -> bytes:
    """A valid file holding one F32 tensor "w" of NumPy shape (2, 4), with ``changes``."""
    info = dict(name="w", dims=[4, 2], type_id=0, offset=0)
    info.update({k: v for k, v in changes.items() if k in info})
    rest = {k: v for k, v in changes.items() if k not in info}
    rest.setdefault("data", W_DATA)
    return craft(infos=[tensor_info(**info)], **rest)


def test_crafted_file_is_valid_for_both_readers(tmp_path):
    data = one_tensor()
    reader = GGUFReader.from_bytes(data)
    assert reader.read("w").tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    path = tmp_path / "ok.gguf"
    path.write_bytes(data)
    assert gguf.GGUFReader(str(path)).tensors[0].data.tolist() == reader.read("w").tolist()


ALIGN = kv("general.alignment", 4, struct.pack("<I", 64))
FAULTS = {
    "bad magic": (b"GGUG" + one_tensor()[4:], "bad magic", None),
    "version 1": (one_tensor(version=1), "unsupported GGUF version", None),
    "version 4": (one_tensor(version=4), "version 4", None),
    "version 0": (one_tensor(version=0), "unsupported GGUF version", None),
    "big-endian": (
        one_tensor()[:4] + struct.pack(">I", 3) + one_tensor()[8:],
        "big-endian GGUF",
        None,
    ),
    "unknown type": (one_tensor(type_id=99), "ggml type 99 is none that quant knows", "w"),
    "removed type": (one_tensor(type_id=31), "Q4_0_4_4", "w"),
    "name of 64 bytes": (one_tensor(name="n" * 64), "64 bytes long", "n" * 64),
    "name not UTF-8": (one_tensor(name=b"\xff"), "not UTF-8", None),
    "duplicate names": (
        craft(
            infos=[tensor_info("w", [4, 2], 0, 0), tensor_info("w", [4, 2], 0, 32)],
            data=W_DATA + W_DATA,
        ),
        "two tensors are named 'w'",
        None,
    ),
    "duplicate keys": (
        craft(kvs=[kv("k", 0, b"\x01"), kv("k", 0, b"\x02")]),
        "the key 'k' appears twice",
        None,
    ),
    "empty key": (craft(kvs=[kv("", 0, b"\x01")]), "key 0 is empty", None),
    "data outside the file": (one_tensor(data=W_DATA[:-1]), "truncated data", "w"),
    "offset outside the file": (one_tensor(offset=2**63), "not a multiple|belongs at", "w"),
    "offset not aligned": (one_tensor(offset=4), "not a multiple of the alignment 32", "w"),
    "offset with a gap": (one_tensor(offset=32, data=bytes(32) + W_DATA), "belongs at 0", "w"),
    "dimension 0": (one_tensor(dims=[4, 0]), "include 0", "w"),
    "5 dimensions": (one_tensor(dims=[4, 2, 1, 1, 1]), "at most 4", "w"),
    "too many elements": (one_tensor(dims=[2**32, 2**32]), "more than ggml can count", "w"),
    "too many bytes": (one_tensor(dims=[2**31, 2**31]), "truncated data", "w"),
    "rows not whole blocks": (one_tensor(type_id=8, dims=[33, 1]), "Q8_0 blocks of 32", "w"),
    "absurd tensor count": (one_tensor(counts=(2**63, 0)), "tensor count is", None),
    "absurd key count": (one_tensor(counts=(1, 2**64 - 1)), "key-value count is", None),
    "absurd string length": (
        craft(kvs=[struct.pack("<Q", 2**40) + b"k"]),
        "more than the 1073741824 GGUF allows",
        None,
    ),
    "string longer than the file": (
        craft(kvs=[struct.pack("<Q", 10**6) + b"k"]),
        "truncated header",
        None,
    ),
    "absurd array count": (
        craft(kvs=[kv("a", 9, struct.pack("<IQ", 6, 2**62))]),
        "claims 4611686018427387904 items",
        None,
    ),
    "array of strings longer than the file": (
        craft(kvs=[kv("a", 9, struct.pack("<IQ", 8, 10**6))]),
        "claims 1000000 items",
        None,
    ),
    "unknown value type": (craft(kvs=[kv("k", 13, b"")]), "value type 13", None),
    "bool of 2": (craft(kvs=[kv("k", 7, b"\x02")]), "bool (0 or 1)", None),
    "arrays nested too deep": (
        craft(kvs=[kv("k", 9, struct.pack("<IQ", 9, 1) * 9 + struct.pack("<IQ", 0, 0))]),
        "more than 8 deep",
        None,
    ),
    "alignment not a power of two": (
        craft(kvs=[kv("general.alignment", 4, struct.pack("<I", 48))]),
        "not a power of two",
        None,
    ),
    "alignment of the wrong type": (
        craft(kvs=[kv("general.alignment", 10, struct.pack("<Q", 32))]),
        "requires a UINT32",
        None,
    ),
    "data not at the custom alignment": (
        craft(kvs=[ALIGN], infos=[tensor_info("w", [4, 2], 0, 32)], data=bytes(32) + W_DATA),
        "not a multiple of the alignment 64",
        "w",
    ),
    "bytes after the data": (
        one_tensor(data=W_DATA + bytes(24) + b"x"),
        "belong to no tensor",
        None,
    ),
    "empty file": (b"", "truncated header", None),
    "magic only": (b"GGUF", "truncated header", None),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_faults_are_one_line_format_errors(tmp_path, fault):
    data, fragment, tensor = FAULTS[fault]
    path = tmp_path / "model.gguf"
    path.write_bytes(data)
    with pytest.raises(FormatError) as caught:
        GGUFReader(path)
    message = str(caught.value)
    assert str(path) in message
    assert any(part in message for part in fragment.split("|")), message
    if tensor is not None:
        assert f"(tensor {tensor!r})" in message
    assert "\n" not in message and "; " in message  # <what> in <file>: <why>; <how to fix>
    with pytest.raises(FormatError, match="in <stdin>"):
        GGUFReader.from_bytes(data)
    # open_input reaches the same error (by content, or by the .gguf name)
    with pytest.raises(FormatError):
        open_input(path)


def test_gguf_package_refuses_the_same_faults(tmp_path):
    # quant is not stricter than llama.cpp's own Python reader on these
    for fault in ("bad magic", "version 1", "duplicate names", "unknown type"):
        path = tmp_path / "f.gguf"
        path.write_bytes(FAULTS[fault][0])
        with pytest.raises((ValueError, KeyError)):
            gguf.GGUFReader(str(path))


def test_every_truncation_is_a_format_error():
    data = save_gguf_bytes(sample_fields(), {"w": np.ones((2, 3), np.float32)})
    end = len(data) - 64 + 24  # the tensor (24 bytes) without its padding is the shortest file
    for cut in range(end):
        with pytest.raises(FormatError, match="truncated|bad magic|incomplete"):
            GGUFReader.from_bytes(data[:cut], label="cut.gguf")
    GGUFReader.from_bytes(data[:end], label="cut.gguf")


def test_hostile_counts_allocate_nothing():
    # counts and lengths near 2**64 are refused from the bytes that follow them, not by
    # trying to allocate what they claim
    cases = [
        one_tensor(counts=(2**64 - 1, 2**64 - 1)),
        craft(kvs=[kv("a", 9, struct.pack("<IQ", 12, 2**60))]),
        craft(kvs=[kv("a", 9, struct.pack("<IQ", 9, 2**60))]),
        craft(kvs=[kv("s", 8, struct.pack("<Q", 2**64 - 1))]),
        one_tensor(dims=[2**63 - 1, 1]),
    ]
    for data in cases:
        tracemalloc.start()
        try:
            with pytest.raises(FormatError):
                GGUFReader.from_bytes(data)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20, peak


def test_detection_by_magic(tmp_path):
    data = one_tensor()
    assert sniff(data[:9], len(data)) == "gguf"
    renamed = tmp_path / "weights.bin"
    renamed.write_bytes(data)
    with open_input(renamed) as source:
        assert isinstance(source, GGUFReader) and source.label == str(renamed)
    # a damaged file named .gguf gets the GGUF reader's precise message
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(b"GGML" + data[4:])
    with pytest.raises(FormatError, match="bad magic in .*damaged.gguf"):
        open_input(damaged)


def test_element_count_check_matches_ggml():
    # ggml refuses a tensor of INT64_MAX elements or more; one below is only too big for the file
    with pytest.raises(FormatError, match="truncated data"):
        GGUFReader.from_bytes(one_tensor(dims=[2**62, 1]))
    assert math.prod([2**32, 2**32]) > 2**63 - 1
