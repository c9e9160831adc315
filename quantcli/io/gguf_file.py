"""Reading GGUF files (llama.cpp's model format), version 2 and 3, little-endian.

Layout (llama.cpp ggml/src/gguf.cpp; all integers little-endian):

    b"GGUF", uint32 version, uint64 tensor count, uint64 key-value count
    key-value pairs     string key, uint32 value type, value
                        (string = uint64 byte length + UTF-8 bytes, no terminator;
                        array = uint32 item type + uint64 count + items, items may be arrays)
    tensor infos        string name (< 64 bytes), uint32 n_dims (<= 4), uint64 dims[n_dims]
                        in ggml order (row length first, the reverse of NumPy's), uint32 ggml
                        type, uint64 offset from the start of the data section
    padding             zeros up to a multiple of the alignment: ``general.alignment`` (a
                        uint32 power of two) or 32
    data section        each tensor at its offset, rows of whole blocks, then zeros up to the
                        alignment; tensors follow each other in the order of the infos

Every check is made on the header alone, before any tensor data is read. The checks are
llama.cpp's (which is what loads these files), so a file quant accepts is one llama.cpp
accepts, and ``GGUFWriter`` writes it back byte for byte.
"""

from __future__ import annotations

import enum
import json
import math
import mmap
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from quantcli.errors import FormatError, InputError
from quantcli.io.ggml_types import GGML_TYPES, REMOVED_TYPES, GGMLType
from quantcli.io.source import TensorInfo, TensorSource, buffer_array, map_array

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
ALIGNMENT_KEY = "general.alignment"
#: ggml's GGML_MAX_NAME: a name must be shorter, counting its terminating zero.
MAX_NAME_BYTES = 64
#: ggml's GGML_MAX_DIMS.
MAX_DIMS = 4
# llama.cpp's GGUF_MAX_STRING_LENGTH and GGUF_MAX_ARRAY_ELEMENTS.
MAX_STRING_BYTES = 1 << 30
MAX_ARRAY_ITEMS = 1 << 30
# Arrays of arrays: llama.cpp has none, gguf-py writes them; deeper is surely damage.
MAX_NESTING = 8
# ggml counts elements in int64_t and refuses a tensor of INT64_MAX elements or more.
_MAX_ELEMENTS = 2**63 - 1

BytesLike = bytes | bytearray | memoryview | mmap.mmap

_CORRUPT = "the file is corrupt or not a GGUF file, download or convert it again"
_CORRUPT_OR_CUT = "the file is incomplete or corrupt, download or convert it again"
_INCOMPLETE = "the file is incomplete, download or copy it again"
_FLOAT_TYPES = "F32, F16, BF16"


class GGUFValueType(enum.IntEnum):
    """The type of a metadata value (llama.cpp's ``enum gguf_type``)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


#: NumPy dtype of every fixed-size value type (little-endian, as stored).
SCALAR_DTYPES: dict[GGUFValueType, np.dtype] = {
    GGUFValueType.UINT8: np.dtype("<u1"),
    GGUFValueType.INT8: np.dtype("<i1"),
    GGUFValueType.UINT16: np.dtype("<u2"),
    GGUFValueType.INT16: np.dtype("<i2"),
    GGUFValueType.UINT32: np.dtype("<u4"),
    GGUFValueType.INT32: np.dtype("<i4"),
    GGUFValueType.FLOAT32: np.dtype("<f4"),
    GGUFValueType.BOOL: np.dtype("<u1"),
    GGUFValueType.UINT64: np.dtype("<u8"),
    GGUFValueType.INT64: np.dtype("<i8"),
    GGUFValueType.FLOAT64: np.dtype("<f8"),
}


@dataclass(frozen=True, eq=False)
class GGUFValue:
    """One metadata value and its GGUF type, as ``GGUFWriter`` needs it to copy it exactly.

    ``value`` by ``type``: integer types an ``int``; BOOL a ``bool``; FLOAT32 / FLOAT64 a
    ``np.float32`` / ``np.float64`` (NumPy scalars keep every bit, NaN payloads included);
    STRING a ``str`` (bytes that are not UTF-8 are kept as surrogate escapes). ARRAY: the items,
    of type ``item_type``: a 1-D NumPy array for fixed-size items (``bool`` for BOOL), a list
    of ``str`` for STRING, a list of GGUFValue (each an ARRAY) for arrays of arrays.
    """

    type: GGUFValueType
    value: Any
    item_type: GGUFValueType | None = None

    def __len__(self) -> int:
        """The number of items of an array."""
        if self.type != GGUFValueType.ARRAY:
            raise TypeError(f"a {self.type.name} value has no length")
        return len(self.value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GGUFValue):
            return NotImplemented
        if (self.type, self.item_type) != (other.type, other.item_type):
            return False
        return self._stored() == other._stored()

    def _stored(self) -> object:
        """The value as it is stored: numbers as their bytes (so NaN equals the same NaN, and
        a list equals the array it is written as)."""
        kind = self.item_type if self.type == GGUFValueType.ARRAY else self.type
        dtype = SCALAR_DTYPES.get(kind) if kind is not None else None
        if dtype is None:
            return self.value
        try:
            return np.asarray(self.value).astype(dtype).tobytes()
        except (TypeError, ValueError, OverflowError):
            return self.value

    __hash__ = None  # type: ignore[assignment]  # values hold arrays and lists

    def text(self) -> str:
        """A short one-line rendering: scalars as they are, long arrays as a count."""
        if self.type == GGUFValueType.ARRAY:
            items = self.value
            kind = self.item_type.name.lower() if self.item_type is not None else "?"
            if self.item_type != GGUFValueType.ARRAY and len(items) <= 16:
                plain = items.tolist() if isinstance(items, np.ndarray) else list(items)
                shown = _printable(json.dumps(plain, ensure_ascii=False))
                if len(shown) <= 200:
                    return shown
            return f"[{len(items)} {kind} values]"
        if self.type == GGUFValueType.BOOL:
            return "true" if self.value else "false"
        if self.type == GGUFValueType.STRING:
            text = _printable(self.value)
            if len(text) <= 200 and text.isprintable():
                return text
            more = f" ... ({len(text)} characters)" if len(text) > 200 else ""
            return json.dumps(text[:200], ensure_ascii=False) + more
        return str(self.value)


def _printable(text: str) -> str:
    """``text`` with the bytes that were not UTF-8 (kept as surrogate escapes) shown as U+FFFD,
    so that it can be printed and written as UTF-8."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class GGUFTensor(NamedTuple):
    """One tensor info of a GGUF file.

    ``shape`` is in NumPy order (the reverse of GGUF's dims: the row is the last axis);
    ``offset`` counts from the start of the data section; ``nbytes`` excludes padding.
    """

    name: str
    ggml_type: GGMLType
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def dims(self) -> tuple[int, ...]:
        """The dimensions as GGUF stores them: row length first."""
        return tuple(reversed(self.shape))

    @property
    def rows(self) -> int:
        """Number of rows (1 for 0-d and 1-D tensors)."""
        return math.prod(self.shape[:-1])

    @property
    def row_bytes(self) -> int:
        return self.ggml_type.row_bytes(self.shape[-1] if self.shape else 1)


class RawBlocks(NamedTuple):
    """The stored bytes of one tensor: ``blocks`` is uint8 ``(rows, row_bytes)``, each row
    a whole number of ``ggml_type`` blocks; ``shape`` is the tensor's NumPy shape."""

    ggml_type: GGMLType
    shape: tuple[int, ...]
    blocks: np.ndarray


@dataclass
class GGUFHeader:
    """Everything before the data section, validated."""

    version: int
    #: key -> value, in file order (``general.alignment`` included when the file has it).
    fields: dict[str, GGUFValue]
    #: in file order (which is also data order)
    tensors: list[GGUFTensor]
    alignment: int
    #: absolute file offset of the data section
    data_offset: int
    file_size: int = field(default=0)


def padded(size: int, alignment: int) -> int:
    """``size`` rounded up to a multiple of ``alignment``."""
    return -(-size // alignment) * alignment


class _Cursor:
    """Reads little-endian fields from a buffer, refusing to read past its end."""

    def __init__(self, buffer: BytesLike, label: str) -> None:
        self.buffer = buffer
        self.size = len(buffer)
        self.pos = 0
        self.label = label

    def remaining(self) -> int:
        return self.size - self.pos

    def need(self, size: int, what: str) -> None:
        if size > self.remaining():
            raise FormatError(
                f"truncated header in {self.label}: {what} needs {size} bytes at offset "
                f"{self.pos} but the file has {self.remaining()} left; {_INCOMPLETE}"
            )

    def unpack(self, fmt: str, what: str) -> int:
        size = struct.calcsize(fmt)
        self.need(size, what)
        (value,) = struct.unpack_from(fmt, self.buffer, self.pos)
        self.pos += size
        return value

    def u32(self, what: str) -> int:
        return self.unpack("<I", what)

    def u64(self, what: str) -> int:
        return self.unpack("<Q", what)

    def raw(self, size: int, what: str) -> bytes:
        self.need(size, what)
        data = bytes(self.buffer[self.pos : self.pos + size])
        self.pos += size
        return data

    def string_bytes(self, what: str) -> bytes:
        length = self.u64(f"the length of {what}")
        if length > MAX_STRING_BYTES:
            raise FormatError(
                f"bad header in {self.label}: {what} at offset {self.pos - 8} is {length} bytes "
                f"long, more than the {MAX_STRING_BYTES} GGUF allows; {_CORRUPT}"
            )
        return self.raw(length, what)

    def name(self, what: str) -> str:
        """A key or tensor name: strict UTF-8."""
        start = self.pos
        data = self.string_bytes(what)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FormatError(
                f"bad header in {self.label}: {what} at offset {start} is not UTF-8 text "
                f"({exc.reason}); {_CORRUPT}"
            ) from None

    def array(self, dtype: np.dtype, count: int) -> np.ndarray:
        # a copy: the header buffer (a memory map) is closed once it is parsed
        array = np.frombuffer(self.buffer, dtype=dtype, count=count, offset=self.pos).copy()
        self.pos += count * dtype.itemsize
        array.flags.writeable = False
        return array


def _value_type(raw: int, cursor: _Cursor, where: str) -> GGUFValueType:
    try:
        return GGUFValueType(raw)
    except ValueError:
        raise FormatError(
            f"bad header in {cursor.label}: {where} has value type {raw}, which GGUF does not "
            f"define (0 to 12); {_CORRUPT}"
        ) from None


def _read_value(cursor: _Cursor, vtype: GGUFValueType, where: str, depth: int = 0) -> GGUFValue:
    if vtype == GGUFValueType.STRING:
        return GGUFValue(vtype, _read_text(cursor, where))
    if vtype != GGUFValueType.ARRAY:
        array = _read_fixed(cursor, vtype, 1, where)
        return GGUFValue(vtype, _scalar(vtype, array))
    if depth >= MAX_NESTING:
        raise FormatError(
            f"bad header in {cursor.label}: {where} nests arrays more than {MAX_NESTING} deep; "
            f"{_CORRUPT}"
        )
    item_type = _value_type(cursor.u32(f"the item type of {where}"), cursor, where)
    count = cursor.u64(f"the item count of {where}")
    # every item takes at least one byte (strings 8, arrays 12): a count the rest of the
    # file cannot hold is refused before anything is allocated for it
    smallest = {GGUFValueType.STRING: 8, GGUFValueType.ARRAY: 12}.get(item_type)
    smallest = smallest or SCALAR_DTYPES[item_type].itemsize
    if count > MAX_ARRAY_ITEMS or count * smallest > cursor.remaining():
        raise FormatError(
            f"bad header in {cursor.label}: {where} claims {count} items of type "
            f"{item_type.name} at offset {cursor.pos - 12}, more than the "
            f"{cursor.remaining()} bytes left in the file hold; {_CORRUPT_OR_CUT}"
        )
    if item_type == GGUFValueType.STRING:
        items: Any = _read_texts(cursor, count, where)
    elif item_type == GGUFValueType.ARRAY:
        items = [_read_value(cursor, item_type, where, depth + 1) for _ in range(count)]
    else:
        items = _read_fixed(cursor, item_type, count, where)
        if item_type == GGUFValueType.BOOL:
            items = items.view(np.bool_)
    return GGUFValue(GGUFValueType.ARRAY, items, item_type)


_LENGTH = struct.Struct("<Q")


def _read_texts(cursor: _Cursor, count: int, where: str) -> list[str]:
    """``count`` strings, as ``_read_text`` reads them: a vocabulary holds tens of thousands,
    so the loop checks bounds inline and leaves an item it cannot read (truncated, too long)
    to ``_read_text``, which raises the error naming it."""
    buffer, size, pos = cursor.buffer, cursor.size, cursor.pos
    unpack = _LENGTH.unpack_from
    out = []
    append = out.append
    for _ in range(count):
        if pos + 8 <= size:
            (length,) = unpack(buffer, pos)
            end = pos + 8 + length
            if length <= MAX_STRING_BYTES and end <= size:
                append(bytes(buffer[pos + 8 : end]).decode("utf-8", "surrogateescape"))
                pos = end
                continue
        cursor.pos = pos
        append(_read_text(cursor, where))  # raises
        pos = cursor.pos
    cursor.pos = pos
    return out


def _read_text(cursor: _Cursor, where: str) -> str:
    # surrogateescape: a vocabulary entry that is not valid UTF-8 survives a copy unchanged
    return cursor.string_bytes(f"a string of {where}").decode("utf-8", "surrogateescape")


def _read_fixed(cursor: _Cursor, vtype: GGUFValueType, count: int, where: str) -> np.ndarray:
    dtype = SCALAR_DTYPES[vtype]
    cursor.need(count * dtype.itemsize, where)
    start = cursor.pos
    array = cursor.array(dtype, count)
    if vtype == GGUFValueType.BOOL and count and int(array.max()) > 1:
        bad = int(np.argmax(array > 1))
        raise FormatError(
            f"bad header in {cursor.label}: {where} holds {int(array[bad])} at offset "
            f"{start + bad} where a bool (0 or 1) belongs; {_CORRUPT}"
        )
    return array


def _scalar(vtype: GGUFValueType, array: np.ndarray) -> Any:
    if vtype == GGUFValueType.BOOL:
        return bool(array[0])
    if vtype in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64):
        return array[0]  # a NumPy scalar, in native byte order like every NumPy scalar
    return int(array[0])


def parse_header(buffer: BytesLike, label: str) -> GGUFHeader:
    """Read and validate the header of the complete GGUF file held by ``buffer``.

    ``buffer`` is the whole file (bytes, or a memory map of it); ``label`` names it in
    messages. Raises FormatError for anything malformed; reads no tensor data.
    """
    cursor = _Cursor(buffer, label)
    _check_magic_and_version(cursor)
    version = cursor.u32("the version")
    n_tensors = cursor.u64("the tensor count")
    n_kv = cursor.u64("the key-value count")
    # a key-value pair takes at least 13 bytes, a tensor info 24: refuse counts the file
    # cannot hold before looping over them
    if n_kv * 13 > cursor.remaining() or n_tensors * 24 > cursor.remaining():
        which = "key-value" if n_kv * 13 > cursor.remaining() else "tensor"
        count = n_kv if which == "key-value" else n_tensors
        raise FormatError(
            f"bad header in {label}: the {which} count is {count}, more than the "
            f"{cursor.remaining()} bytes after it can hold; {_CORRUPT_OR_CUT}"
        )

    fields: dict[str, GGUFValue] = {}
    for i in range(n_kv):
        start = cursor.pos
        key = cursor.name(f"key {i}")
        if not key:
            raise FormatError(f"bad header in {label}: key {i} is empty; {_CORRUPT}")
        if key in fields:
            raise FormatError(
                f"bad header in {label}: the key {key!r} appears twice (offset {start}); {_CORRUPT}"
            )
        where = f"key {key!r}"
        vtype = _value_type(cursor.u32(f"the type of {where}"), cursor, where)
        fields[key] = _read_value(cursor, vtype, where)
    alignment = _alignment(fields.get(ALIGNMENT_KEY), label)

    tensors = [_read_tensor_info(cursor, i) for i in range(n_tensors)]
    names: set[str] = set()
    for tensor in tensors:
        if tensor.name in names:
            raise FormatError(
                f"bad header in {label}: two tensors are named {tensor.name!r}; {_CORRUPT}"
            )
        names.add(tensor.name)

    header_end = cursor.pos
    data_offset = padded(header_end, alignment)
    _check_layout(tensors, alignment, data_offset, cursor.size, label)
    return GGUFHeader(version, fields, tensors, alignment, data_offset, cursor.size)


def _check_magic_and_version(cursor: _Cursor) -> None:
    label = cursor.label
    magic = bytes(cursor.buffer[0:4])
    if not GGUF_MAGIC.startswith(magic):  # a shorter start is a truncated file, below
        raise FormatError(
            f"bad magic in {label}: the file starts with {magic!r}, not b'GGUF'; {_CORRUPT}"
        )
    if cursor.size < 8:
        raise FormatError(
            f"truncated header in {label}: the file has {cursor.size} bytes but a GGUF file "
            f"starts with 24 bytes of magic, version and counts; {_INCOMPLETE}"
        )
    cursor.pos = 4
    (version,) = struct.unpack_from("<I", cursor.buffer, 4)
    if version & 0xFFFF == 0 and version >> 24 in GGUF_VERSIONS:
        raise FormatError(
            f"big-endian GGUF in {label}: the file is big-endian (its version, "
            f"{version >> 24}, is stored most significant byte first) and quant reads "
            "little-endian GGUF files; convert a copy with gguf-convert-endian COPY little "
            "(from the gguf Python package; it converts the file in place)"
        )
    if version not in GGUF_VERSIONS:
        fix = (
            "convert the model again with a current llama.cpp (convert_hf_to_gguf.py)"
            if version < min(GGUF_VERSIONS)
            else "upgrade quant, or convert the model to GGUF version 3"
        )
        raise FormatError(
            f"unsupported GGUF version in {label}: version {version}, quant reads versions "
            f"{' and '.join(map(str, GGUF_VERSIONS))}; {fix}"
        )


def _alignment(value: GGUFValue | None, label: str) -> int:
    if value is None:
        return DEFAULT_ALIGNMENT
    if value.type != GGUFValueType.UINT32:
        raise FormatError(
            f"bad header in {label}: {ALIGNMENT_KEY} is a {value.type.name} value but GGUF "
            f"requires a UINT32; {_CORRUPT}"
        )
    alignment = value.value
    if alignment == 0 or alignment & (alignment - 1):
        raise FormatError(
            f"bad header in {label}: {ALIGNMENT_KEY} is {alignment}, not a power of two; {_CORRUPT}"
        )
    return alignment


def _read_tensor_info(cursor: _Cursor, index: int) -> GGUFTensor:
    label = cursor.label
    name = cursor.name(f"the name of tensor {index}")
    where = f"{label} (tensor {name!r})"
    if len(name.encode("utf-8")) >= MAX_NAME_BYTES:
        raise FormatError(
            f"bad header in {where}: the name is {len(name.encode('utf-8'))} bytes long, but "
            f"GGUF names are shorter than {MAX_NAME_BYTES} bytes; {_CORRUPT}"
        )
    n_dims = cursor.u32(f"the dimension count of tensor {name!r}")
    if n_dims > MAX_DIMS:
        raise FormatError(
            f"bad header in {where}: {n_dims} dimensions, GGUF allows at most {MAX_DIMS}; "
            f"{_CORRUPT}"
        )
    dims = [cursor.u64(f"the dimensions of tensor {name!r}") for _ in range(n_dims)]
    type_id = cursor.u32(f"the type of tensor {name!r}")
    offset = cursor.u64(f"the offset of tensor {name!r}")
    if 0 in dims:
        raise FormatError(
            f"bad header in {where}: dimensions {dims} include 0, so the tensor holds no "
            f"element; {_CORRUPT}"
        )
    if math.prod(dims) > _MAX_ELEMENTS:
        raise FormatError(
            f"bad header in {where}: dimensions {dims} make {math.prod(dims)} elements, more "
            f"than ggml can count; {_CORRUPT}"
        )
    ggml = GGML_TYPES.get(type_id)
    if ggml is None:
        removed = REMOVED_TYPES.get(type_id)
        if removed:
            why = f"ggml type {type_id} ({removed}) was removed from ggml and GGUF files"
            fix = "convert the model again with a current llama.cpp"
        else:
            why = f"ggml type {type_id} is none that quant knows (ids 0 to {max(GGML_TYPES)})"
            fix = "if a newer llama.cpp made the file, upgrade quant; else the file is corrupt"
        raise FormatError(f"unknown tensor type in {where}: {why}; {fix}")
    row = dims[0] if dims else 1
    if row % ggml.block_size:
        raise FormatError(
            f"bad header in {where}: rows of {row} elements are not a whole number of "
            f"{ggml.name} blocks of {ggml.block_size}; {_CORRUPT}"
        )
    shape = tuple(reversed(dims))
    return GGUFTensor(name, ggml, shape, offset, ggml.nbytes(shape))


def _check_layout(
    tensors: list[GGUFTensor],
    alignment: int,
    data_offset: int,
    file_size: int,
    label: str,
) -> None:
    """Tensors follow each other in info order, each at an aligned offset right after the
    previous one's padded end (llama.cpp refuses anything else), all inside the file."""
    expected = 0
    for tensor in tensors:
        where = f"{label} (tensor {tensor.name!r})"
        if tensor.offset % alignment:
            raise FormatError(
                f"bad header in {where}: data offset {tensor.offset} is not a multiple of the "
                f"alignment {alignment}; {_CORRUPT}"
            )
        if tensor.offset != expected:
            raise FormatError(
                f"bad header in {where}: data offset {tensor.offset}, but GGUF lays tensors out "
                f"one after the other in header order, so it belongs at {expected}; {_CORRUPT}"
            )
        end = data_offset + tensor.offset + tensor.nbytes
        if end > file_size:
            raise FormatError(
                f"truncated data in {where}: the tensor needs bytes "
                f"{data_offset + tensor.offset}..{end} but the file has {file_size}; "
                f"{_INCOMPLETE}"
            )
        expected = tensor.offset + padded(tensor.nbytes, alignment)
    # The last tensor's padding (or, without tensors, the header's) may be missing: llama.cpp
    # loads such files. Bytes beyond it are damage (two files joined, a bad copy).
    if file_size > data_offset + expected:
        raise FormatError(
            f"bad data section in {label}: the file has {file_size - data_offset - expected} "
            f"bytes after the last tensor's data and padding (which end at byte "
            f"{data_offset + expected}), which belong to no tensor; {_CORRUPT}"
        )


class GGUFReader(TensorSource):
    """A GGUF file, read one tensor at a time through read-only memory maps.

    ``GGUFReader(path)`` for a file on disk, ``GGUFReader.from_bytes(data)`` for one in
    memory. The header is validated on construction.

    Tensors are listed in file order with NumPy shapes (GGUF's dims reversed). F32, F16,
    BF16, F64 and I8..I64 tensors are read as arrays of their dtype, with no copy. Quantized
    tensors (Q4_K, Q8_0, ...) are listed as their stored bytes, uint8 of shape
    ``shape[:-1] + (row bytes,)``; ``read_blocks`` returns those bytes with their ggml type,
    ``read_float32`` decodes them (``DecodedGGUF`` is the file seen that way), and ``read``
    refuses them: a quantized tensor is not a weight to quantize again.

    ``fields`` holds the typed metadata (to copy it exactly), ``metadata`` the same as one line
    of text per key (long arrays, such as a tokenizer's vocabulary, shown as a count).
    """

    def __init__(self, path: str | os.PathLike, label: str | None = None) -> None:
        self.label = label if label is not None else os.fspath(path)
        self._buffer: memoryview | None = None
        try:
            self._file: BinaryIO | None = open(path, "rb")  # closed in close()
        except OSError as exc:
            raise InputError(
                f"unreadable file in {self.label}: {exc.strerror or exc}; check the path and its "
                "permissions"
            ) from exc
        try:
            header = self._parse_file()
        except BaseException:
            self._file.close()
            raise
        self._init_header(header)

    def _parse_file(self) -> GGUFHeader:
        assert self._file is not None
        try:
            size = os.fstat(self._file.fileno()).st_size
            if size < 8:  # mmap cannot map an empty file; the check says what is wrong
                return parse_header(self._file.read(), self.label)
            with mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                return parse_header(mapped, self.label)
        except OSError as exc:
            raise InputError(
                f"read error in {self.label}: {exc.strerror or exc}; check that the file is "
                "readable"
            ) from exc

    @classmethod
    def from_bytes(cls, data: BytesLike, label: str = "<stdin>") -> GGUFReader:
        """A reader over a complete GGUF file held in memory (no copy is made)."""
        reader = cls.__new__(cls)
        reader.label = label
        reader._file = None
        reader._buffer = memoryview(data).toreadonly()
        reader._init_header(parse_header(reader._buffer, label))
        return reader

    def _init_header(self, header: GGUFHeader) -> None:
        self.header = header
        #: 2 or 3
        self.version = header.version
        #: the data alignment in bytes (``general.alignment``, else 32)
        self.alignment = header.alignment
        #: typed metadata, key -> GGUFValue, in file order
        self.fields: dict[str, GGUFValue] = header.fields
        self.metadata = {key: value.text() for key, value in header.fields.items()}
        self._tensors = {t.name: t for t in header.tensors}
        self._infos = [_info(t) for t in header.tensors]

    def infos(self) -> list[TensorInfo]:
        return list(self._infos)

    def tensors(self) -> list[GGUFTensor]:
        """Every tensor info, in file order (the order a copy must keep)."""
        return list(self._tensors.values())

    def tensor(self, name: str) -> GGUFTensor:
        """The tensor info of ``name``; InputError if there is none."""
        tensor = self._tensors.get(name)
        if tensor is None:
            raise self._unknown_tensor(name)
        return tensor

    def read(self, name: str) -> np.ndarray:
        tensor = self.tensor(name)
        if tensor.ggml_type.quantized:
            raise FormatError(
                f"already quantized tensor in {self.label} (tensor {name!r}): it is stored as "
                f"{tensor.ggml_type.name} blocks, and quant quantizes {_FLOAT_TYPES} weights; "
                "quantize the model's F16 or F32 GGUF (llama.cpp's convert_hf_to_gguf.py "
                "--outtype f16 makes one), or restore this one with quant decompress"
            )
        return self._array(tensor, tensor.ggml_type.dtype, tensor.shape)

    def read_float32(self, name: str) -> np.ndarray:
        """Tensor ``name`` as float32 of its NumPy shape: quantized blocks decoded with
        quant's ggml codecs (what llama.cpp's dequantizers give), float types converted.

        FormatError for a ggml type quant has no decoder for, or an integer tensor.
        """
        tensor = self.tensor(name)
        kind = tensor.ggml_type
        if not kind.quantized:
            if kind.dtype.kind != "f" and kind.name != "BF16":
                raise FormatError(
                    f"integer tensor in {self.label} (tensor {name!r}): it is {kind.name}, "
                    "not a weight quant can restore as floats; leave it out with --exclude"
                )
            return np.asarray(self.read(name), np.float32)
        codec = ggml_codec(kind, name, self.label)
        blocks = self.read_blocks(name).blocks
        row = tensor.shape[-1] if tensor.shape else 1
        return codec.decode(blocks, row, name).reshape(tensor.shape)

    def read_blocks(self, name: str) -> RawBlocks:
        """The stored bytes of tensor ``name`` (of any type), read-only and not copied."""
        tensor = self.tensor(name)
        blocks = self._array(tensor, np.dtype(np.uint8), (tensor.rows, tensor.row_bytes))
        return RawBlocks(tensor.ggml_type, tensor.shape, blocks)

    def _array(self, tensor: GGUFTensor, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        offset = self.header.data_offset + tensor.offset
        if self._buffer is not None:
            return buffer_array(self._buffer, offset, dtype, shape)
        if self._file is None:
            raise ValueError(f"{self.label} is closed")
        return map_array(self._file, offset, dtype, shape, f"{self.label} (tensor {tensor.name!r})")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def ggml_codec(kind: GGMLType, name: str, label: str):
    """quant's codec for ggml type ``kind`` (``quantcli.core.ggml.GGML_TYPES``); FormatError
    naming the tensor when quant has none."""
    from quantcli.core.ggml import GGML_TYPES as CODECS

    codec = CODECS.get(kind.name)
    if codec is None:
        raise FormatError(
            f"unsupported tensor type in {label} (tensor {name!r}): quant has no decoder for "
            f"{kind.name} blocks (it decodes {', '.join(CODECS)}); use a file quantized with "
            "one of those types, or the model's F16 GGUF"
        )
    return codec


class DecodedGGUF(TensorSource):
    """A GGUF file as float tensors: every quantized tensor listed as float32 of its NumPy
    shape and read decoded (``GGUFReader.read_float32``); other tensors as they are stored.
    The reader stays owned by the caller (``close`` does not close it)."""

    def __init__(self, reader: GGUFReader) -> None:
        self.reader = reader
        self.label = reader.label
        self.metadata = reader.metadata
        self._infos = [
            TensorInfo(t.name, np.dtype(np.float32), t.shape) if t.ggml_type.quantized else _info(t)
            for t in reader.tensors()
        ]

    def infos(self) -> list[TensorInfo]:
        return list(self._infos)

    def read(self, name: str) -> np.ndarray:
        tensor = self.reader.tensor(name)
        if tensor.ggml_type.quantized:
            return self.reader.read_float32(name)
        return self.reader.read(name)


def _info(tensor: GGUFTensor) -> TensorInfo:
    if tensor.ggml_type.quantized:
        shape = tensor.shape[:-1] + (tensor.row_bytes,)
        return TensorInfo(tensor.name, np.dtype(np.uint8), shape)
    return TensorInfo(tensor.name, tensor.ggml_type.dtype, tensor.shape)


def field_values(fields: Mapping[str, GGUFValue]) -> dict[str, Any]:
    """key -> plain Python value (lists for arrays, floats for floats), for comparisons."""

    def plain(value: GGUFValue) -> Any:
        if value.type == GGUFValueType.ARRAY:
            items = value.value
            if isinstance(items, np.ndarray):
                return items.tolist()
            return [plain(i) if isinstance(i, GGUFValue) else i for i in items]
        if isinstance(value.value, np.floating):
            return float(value.value)
        return value.value

    return {key: plain(value) for key, value in fields.items()}
