"""Writing GGUF files (version 3, little-endian) one tensor at a time.

Every tensor's byte size follows from its ggml type and shape, so the whole header (metadata,
tensor infos with their offsets, padding) is written first; then each tensor's bytes in plan
order, each followed by zeros up to the alignment, as llama.cpp's and gguf-py's writers lay
them out. Nothing is ever seeked: the file object may be a pipe. The layout is the one
``gguf_file`` accepts, so reading a file and writing its fields, tensor infos and bytes back
gives the same bytes (``write_copy``).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable, Mapping
from typing import BinaryIO

import numpy as np

from quantcli.io.ggml_types import GGMLType, ggml_type, ggml_type_of_dtype
from quantcli.io.gguf_file import (
    ALIGNMENT_KEY,
    DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    GGUF_VERSIONS,
    MAX_DIMS,
    MAX_NAME_BYTES,
    SCALAR_DTYPES,
    GGUFReader,
    GGUFTensor,
    GGUFValue,
    GGUFValueType,
    padded,
)
from quantcli.io.safetensors_writer import write_array_bytes

#: (name, ggml type (GGMLType, id or name), NumPy shape) of one planned tensor; a
#: GGUFTensor (as ``GGUFReader.tensors()`` lists them) works as well, its offset ignored.
PlannedGGUFTensor = GGUFTensor | tuple[str, GGMLType | int | str, Iterable[int]]

_INT_RANGES = {
    vtype: (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
    for vtype, dtype in SCALAR_DTYPES.items()
    if dtype.kind in "iu" and vtype != GGUFValueType.BOOL
}


def _planned(item: PlannedGGUFTensor) -> tuple[str, GGMLType, tuple[int, ...]]:
    if isinstance(item, GGUFTensor):
        return item.name, item.ggml_type, item.shape
    name, kind, shape = item
    try:
        kind = ggml_type(kind)
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"tensor {name!r}: unknown ggml type {kind!r}") from None
    return name, kind, tuple(int(d) for d in shape)


def _string(text: str) -> bytes:
    # surrogateescape: bytes a reader kept as escapes go back exactly as they were
    data = text.encode("utf-8", "surrogateescape")
    return struct.pack("<Q", len(data)) + data


def _items(value: GGUFValue, where: str) -> bytes:
    """The encoded items of an array value (after its item type and count)."""
    item_type, items = value.item_type, value.value
    if item_type is None:
        raise ValueError(f"{where}: an ARRAY value needs its item_type")
    if item_type == GGUFValueType.STRING:
        if not all(isinstance(s, str) for s in items):
            raise ValueError(f"{where}: a STRING array holds only str")
        return b"".join(_string(s) for s in items)
    if item_type == GGUFValueType.ARRAY:
        out = []
        for item in items:
            if not isinstance(item, GGUFValue) or item.type != GGUFValueType.ARRAY:
                raise ValueError(f"{where}: an array of arrays holds only ARRAY GGUFValues")
            out.append(encode_value(item, where, with_type=False))
        return b"".join(out)
    return _fixed(item_type, items, where).tobytes()


def _fixed(vtype: GGUFValueType, values: object, where: str) -> np.ndarray:
    """``values`` (a scalar or a sequence) as a little-endian array of ``vtype``, refusing any
    value the type cannot hold exactly (an int out of range, a bool that is not 0 or 1)."""
    dtype = SCALAR_DTYPES[vtype]
    array = np.asarray(values)
    if array.size == 0:
        return np.empty(0, dtype)
    kind = array.dtype.kind
    if vtype == GGUFValueType.BOOL:
        if kind not in "biu" or not np.isin(array, (0, 1)).all():
            raise ValueError(f"{where}: BOOL values must be True/False (or 0/1)")
    elif vtype in _INT_RANGES:
        low, high = _INT_RANGES[vtype]
        if kind not in "biu" or int(array.min()) < low or int(array.max()) > high:
            raise ValueError(f"{where}: {vtype.name} values must be integers in [{low}, {high}]")
    elif kind not in "biuf":
        raise ValueError(f"{where}: {vtype.name} values must be numbers")
    return array.astype(dtype).reshape(-1)


def encode_value(value: GGUFValue, where: str = "value", with_type: bool = True) -> bytes:
    """The bytes of one metadata value: its uint32 type (unless ``with_type`` is False, as for
    the items of an array), then the value. ValueError if the value does not fit its type."""
    try:
        vtype = GGUFValueType(value.type)
    except ValueError:
        raise ValueError(f"{where}: unknown GGUF value type {value.type!r}") from None
    head = struct.pack("<I", vtype) if with_type else b""
    if vtype == GGUFValueType.STRING:
        if not isinstance(value.value, str):
            raise ValueError(f"{where}: a STRING value must be a str")
        return head + _string(value.value)
    if vtype == GGUFValueType.ARRAY:
        try:
            item_type = GGUFValueType(value.item_type)
        except (ValueError, TypeError):
            raise ValueError(f"{where}: unknown item type {value.item_type!r}") from None
        count = len(value.value)
        return head + struct.pack("<IQ", item_type, count) + _items(value, where)
    if isinstance(value.value, (list, tuple, np.ndarray)) and np.ndim(value.value) != 0:
        raise ValueError(f"{where}: a {vtype.name} value is one number, not a sequence")
    return head + _fixed(vtype, value.value, where).tobytes()


def build_header(
    fields: Mapping[str, GGUFValue],
    tensors: Iterable[PlannedGGUFTensor],
    alignment: int | None = None,
    version: int = 3,
) -> bytes:
    """Everything before the data section of a GGUF file, padding included.

    ``fields`` in the order to write them; ``tensors`` in data order (their offsets are
    computed here). ``alignment`` defaults to the ``general.alignment`` field, else 32, and
    must agree with that field when both are given. ValueError for anything the format
    cannot hold (a name of 64 bytes or more, a row that is not whole blocks, ...).
    """
    alignment = _alignment(fields, alignment)
    if version not in GGUF_VERSIONS:
        raise ValueError(f"GGUF version {version} is not one of {GGUF_VERSIONS}")
    plan = [_planned(t) for t in tensors]
    out = bytearray(GGUF_MAGIC)
    out += struct.pack("<IQQ", version, len(plan), len(fields))
    for key, value in fields.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"metadata key {key!r} must be a non-empty str")
        if not isinstance(value, GGUFValue):
            raise ValueError(f"metadata {key!r} must be a GGUFValue, not {type(value).__name__}")
        out += _string(key) + encode_value(value, f"metadata {key!r}")
    offset = 0
    seen: set[str] = set()
    for name, kind, shape in plan:
        _check_tensor(name, kind, shape, seen)
        out += _string(name) + struct.pack("<I", len(shape))
        out += struct.pack(f"<{len(shape)}Q", *reversed(shape))
        out += struct.pack("<IQ", kind.id, offset)
        offset += padded(kind.nbytes(shape), alignment)
    out += bytes(padded(len(out), alignment) - len(out))
    return bytes(out)


def _alignment(fields: Mapping[str, GGUFValue], alignment: int | None) -> int:
    value = fields.get(ALIGNMENT_KEY)
    if value is not None:
        if value.type != GGUFValueType.UINT32:
            raise ValueError(f"{ALIGNMENT_KEY} must be a UINT32 value, not {value.type.name}")
        if alignment is not None and alignment != value.value:
            raise ValueError(f"alignment {alignment} disagrees with {ALIGNMENT_KEY} {value.value}")
        alignment = int(value.value)
    elif alignment is None:
        alignment = DEFAULT_ALIGNMENT
    elif alignment != DEFAULT_ALIGNMENT:
        # readers would look for the data at the default alignment
        raise ValueError(f"alignment {alignment} needs a {ALIGNMENT_KEY} field saying so")
    if alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"alignment {alignment} is not a power of two")
    return alignment


def _check_tensor(name: str, kind: GGMLType, shape: tuple[int, ...], seen: set[str]) -> None:
    if not isinstance(name, str) or len(name.encode("utf-8")) >= MAX_NAME_BYTES:
        raise ValueError(f"tensor name {name!r} must be a str shorter than {MAX_NAME_BYTES} bytes")
    if name in seen:
        raise ValueError(f"tensor {name!r} is planned twice")
    seen.add(name)
    if len(shape) > MAX_DIMS or any(d <= 0 for d in shape):
        raise ValueError(f"tensor {name!r}: shape {shape} must be at most {MAX_DIMS} positive dims")
    row = shape[-1] if shape else 1
    if row % kind.block_size:
        raise ValueError(
            f"tensor {name!r}: row length {row} is not a multiple of the {kind.name} block "
            f"size ({kind.block_size})"
        )


class GGUFWriter:
    """Write a GGUF file tensor by tensor, in a fixed plan order.

    The header is written on construction; then call ``write(name, data)`` once per planned
    tensor, in plan order, and ``close()`` to check that all were written::

        fields = {"general.architecture": GGUFValue(GGUFValueType.STRING, "llama")}
        with GGUFWriter(f, fields, [("w", "F32", (2, 3))]) as writer:
            writer.write("w", w)

    ``data`` is either an array of the tensor's dtype and shape (plain types: F32, F16, BF16,
    F64, I8..I64; any byte order and memory layout), or its stored bytes as uint8 of any shape
    (any type, quantized ones included: ``GGUFReader.read_blocks(name).blocks``). ``close``
    leaves ``fileobj`` open. A mismatch with the plan is a bug in the caller: ValueError.
    """

    def __init__(
        self,
        fileobj: BinaryIO,
        fields: Mapping[str, GGUFValue],
        tensors: Iterable[PlannedGGUFTensor],
        alignment: int | None = None,
        version: int = 3,
    ) -> None:
        self._plan = [_planned(t) for t in tensors]
        header = build_header(fields, self._plan, alignment, version)
        self.alignment = _alignment(fields, alignment)
        self.header_size = len(header)
        #: Size in bytes of the complete file.
        self.total_size = self.header_size + sum(
            padded(kind.nbytes(shape), self.alignment) for _, kind, shape in self._plan
        )
        self._file = fileobj
        self._next = 0
        self._file.write(header)

    def write(self, name: str, data: np.ndarray) -> None:
        """Write the next planned tensor and its padding."""
        if self._next >= len(self._plan):
            raise ValueError(f"tensor {name!r} is not planned: all tensors are written")
        planned, kind, shape = self._plan[self._next]
        if name != planned:
            raise ValueError(f"expected tensor {planned!r} next, got {name!r}")
        data = np.asarray(data)
        nbytes = kind.nbytes(shape)
        if data.dtype == np.uint8:  # stored bytes: no ggml type is uint8
            if data.nbytes != nbytes:
                raise ValueError(
                    f"tensor {name!r} ({kind.name} {shape}) takes {nbytes} bytes, got {data.nbytes}"
                )
        elif ggml_type_of_dtype(data.dtype) != kind or data.shape != shape:
            raise ValueError(
                f"tensor {name!r} is planned as {kind.name} {shape}, got {data.dtype} {data.shape}"
            )
        write_array_bytes(self._file, data)
        self._file.write(bytes(padded(nbytes, self.alignment) - nbytes))
        self._next += 1

    def close(self) -> None:
        """Check that every planned tensor was written (the file object stays open)."""
        missing = [name for name, _, _ in self._plan[self._next :]]
        if missing:
            raise ValueError(f"tensors planned but not written: {', '.join(missing)}")

    def __enter__(self) -> GGUFWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        # After an error the plan is incomplete anyway; do not hide the real exception.
        if exc_type is None:
            self.close()


def write_copy(reader: GGUFReader, fileobj: BinaryIO) -> None:
    """Write the file ``reader`` reads, as it is: same metadata, tensors and bytes."""
    with GGUFWriter(
        fileobj, reader.fields, reader.tensors(), reader.alignment, reader.version
    ) as writer:
        for tensor in reader.tensors():
            writer.write(tensor.name, reader.read_blocks(tensor.name).blocks)


def save_gguf_bytes(
    fields: Mapping[str, GGUFValue],
    tensors: Mapping[str, np.ndarray],
    alignment: int | None = None,
) -> bytes:
    """A complete GGUF file holding ``tensors`` (arrays of plain ggml dtypes), as bytes."""
    buffer = io.BytesIO()
    plan = []
    for name, array in tensors.items():
        kind = ggml_type_of_dtype(np.asarray(array).dtype)
        if kind is None:
            raise ValueError(f"tensor {name!r}: dtype {np.asarray(array).dtype} has no ggml type")
        plan.append((name, kind, np.shape(array)))
    with GGUFWriter(buffer, fields, plan, alignment) as writer:
        for name, array in tensors.items():
            writer.write(name, array)
    return buffer.getvalue()
