"""Reading .safetensors files: header validation and a memory-mapping reader.

Layout (https://github.com/huggingface/safetensors, "Format"):

    bytes 0..8        N, the header length, unsigned 64-bit little-endian
    bytes 8..8+N      UTF-8 JSON object: {"__metadata__": {str: str}, (optional)
                                          name: {"dtype": "F32", "shape": [2, 3],
                                                 "data_offsets": [begin, end]}, ...}
                      padded with spaces
    bytes 8+N..       the data section; tensor bytes are at data_offsets relative to its
                      start, little-endian, C order

Every check is done on the header alone, before any tensor data is read, so a damaged or
hostile file is refused with a message instead of producing garbage or a crash.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import BinaryIO, NamedTuple

import numpy as np

from quantcli.errors import FormatError, InputError
from quantcli.io.dtypes import numpy_dtype
from quantcli.io.source import TensorInfo, TensorSource, buffer_array, checked_shape, map_array

#: The reference implementation refuses headers larger than this (safetensors MAX_HEADER_SIZE).
MAX_HEADER_SIZE = 100_000_000

BytesLike = bytes | bytearray | memoryview

_CORRUPT = "the file is corrupt or not a safetensors file, export it again"
_INCOMPLETE = "the file is incomplete, download or copy it again"


class HeaderEntry(NamedTuple):
    """One tensor of a safetensors header; ``begin``/``end`` are relative to the data section."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


def parse_header(
    head: BytesLike | BinaryIO, file_size: int, label: str
) -> tuple[list[HeaderEntry], dict[str, str], int]:
    """Read and validate a safetensors header.

    ``head`` is either the file's first bytes (at least the whole header; the complete
    file is fine) or a binary file positioned anywhere (it is read from offset 0).
    ``file_size`` is the size of the complete file in bytes; ``label`` names it in messages.

    Returns ``(entries, metadata, data_offset)``: the tensors in the order the header lists
    them (the writer's order; the data may be laid out differently, e.g. sorted by dtype for
    alignment), the ``__metadata__`` dict ({} if absent) and the absolute file offset at
    which the data section starts (8 + N).

    Raises FormatError naming ``label`` if anything is wrong; reads no tensor data.
    """
    if file_size < 8:
        raise FormatError(
            f"truncated header in {label}: the file has {file_size} bytes but a safetensors "
            f"file starts with an 8-byte header length; {_INCOMPLETE}"
        )
    first8 = _read_at(head, 0, 8, label)
    (header_len,) = struct.unpack("<Q", first8)
    if header_len > MAX_HEADER_SIZE:
        raise FormatError(
            f"bad header in {label}: the header length field says {header_len} bytes, more "
            f"than the {MAX_HEADER_SIZE}-byte limit of the safetensors format; {_CORRUPT}"
        )
    if 8 + header_len > file_size:
        raise FormatError(
            f"truncated header in {label}: the header needs bytes 8..{8 + header_len} but "
            f"the file has {file_size}; {_INCOMPLETE}"
        )
    raw = _read_at(head, 8, header_len, label)
    header = _decode_json(raw, label)

    metadata = _parse_metadata(header.pop("__metadata__", None), label)
    data_size = file_size - 8 - header_len
    entries = [_parse_entry(name, value, data_size, label) for name, value in header.items()]
    # Stable sort: zero-size tensors sharing an offset keep their header order.
    _check_tiling(sorted(entries, key=lambda e: (e.begin, e.end)), data_size, label)
    return entries, metadata, 8 + header_len


def _read_at(head: BytesLike | BinaryIO, offset: int, size: int, label: str) -> bytes:
    """``size`` bytes at ``offset`` of ``head`` (bytes or file); FormatError if fewer exist."""
    if isinstance(head, (bytes, bytearray, memoryview)):
        data = bytes(head[offset : offset + size])
    else:
        try:
            head.seek(offset)
            data = head.read(size)
        except OSError as exc:
            raise InputError(
                f"read error in {label}: {exc.strerror or exc}; check that the file is readable"
            ) from exc
    if len(data) != size:
        raise FormatError(
            f"truncated header in {label}: expected {size} bytes at offset {offset} but got "
            f"{len(data)}; {_INCOMPLETE}"
        )
    return data


def _decode_json(raw: bytes, label: str) -> dict:
    def refuse_duplicates(pairs: list[tuple[str, object]]) -> dict:
        # json.loads would silently keep the last of two entries with the same name.
        result: dict = {}
        for key, value in pairs:
            if key in result:
                raise FormatError(
                    f"bad header in {label}: the key {key!r} appears twice; {_CORRUPT}"
                )
            result[key] = value
        return result

    try:
        text = raw.decode("utf-8")
        header = json.loads(text, object_pairs_hook=refuse_duplicates)
    except UnicodeDecodeError as exc:
        raise FormatError(
            f"bad header in {label}: the header is not UTF-8 text ({exc.reason} at byte "
            f"{8 + exc.start}); {_CORRUPT}"
        ) from exc
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise FormatError(
            f"bad header in {label}: the header is not valid JSON ({exc}); {_CORRUPT}"
        ) from exc
    if not isinstance(header, dict):
        raise FormatError(
            f"bad header in {label}: the header is a JSON {type(header).__name__}, not an "
            f"object; {_CORRUPT}"
        )
    return header


def _parse_metadata(value: object, label: str) -> dict[str, str]:
    if value is None:  # absent, or null as some writers emit
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise FormatError(
            f"bad header in {label}: __metadata__ must map strings to strings but is "
            f"{json.dumps(value)[:200]}; {_CORRUPT}"
        )
    return dict(value)


def _parse_entry(name: str, value: object, data_size: int, label: str) -> HeaderEntry:
    where = f"{label} (tensor {name!r})"
    if not isinstance(value, dict):
        raise FormatError(
            f"bad header in {where}: the entry is {json.dumps(value)[:200]}, not an object "
            f"with dtype, shape and data_offsets; {_CORRUPT}"
        )
    missing = [key for key in ("dtype", "shape", "data_offsets") if key not in value]
    if missing:
        raise FormatError(
            f"bad header in {where}: the entry has no {', '.join(missing)}; {_CORRUPT}"
        )
    if not isinstance(value["dtype"], str):
        raise FormatError(
            f"bad header in {where}: dtype {value['dtype']!r} is not a string; {_CORRUPT}"
        )
    dtype = numpy_dtype(value["dtype"], where)
    shape = checked_shape(value["shape"], dtype.itemsize, where)

    offsets = value["data_offsets"]
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or any(isinstance(o, bool) or not isinstance(o, int) or o < 0 for o in offsets)
    ):
        raise FormatError(
            f"bad header in {where}: data_offsets {offsets!r} is not a pair of non-negative "
            f"integers [begin, end]; {_CORRUPT}"
        )
    begin, end = offsets
    if begin > end:
        raise FormatError(
            f"bad header in {where}: data_offsets [{begin}, {end}] ends before it begins; "
            f"{_CORRUPT}"
        )
    expected = math.prod(shape) * dtype.itemsize
    if end - begin != expected:
        raise FormatError(
            f"bad header in {where}: shape {list(shape)} of {value['dtype']} needs "
            f"{expected} bytes but data_offsets [{begin}, {end}] span {end - begin}; "
            f"{_CORRUPT}"
        )
    if end > data_size:
        raise FormatError(
            f"truncated data in {label}: tensor {name!r} needs bytes {begin}..{end} but the "
            f"data section has {data_size}; {_INCOMPLETE}"
        )
    return HeaderEntry(name, dtype, shape, begin, end)


def _check_tiling(entries: list[HeaderEntry], data_size: int, label: str) -> None:
    """The spec requires the tensors to cover the data section exactly, with no gap or overlap."""
    position = 0
    previous = None
    for entry in entries:
        if entry.begin < position:
            raise FormatError(
                f"bad header in {label}: tensor {entry.name!r} (bytes {entry.begin}..{entry.end}) "
                f"overlaps tensor {previous.name!r} (bytes {previous.begin}..{previous.end}); "
                f"{_CORRUPT}"
            )
        if entry.begin > position:
            raise FormatError(
                f"bad header in {label}: bytes {position}..{entry.begin} of the data section "
                f"belong to no tensor (a hole before {entry.name!r}), which the format "
                f"forbids; {_CORRUPT}"
            )
        position = entry.end
        previous = entry
    if position != data_size:
        raise FormatError(
            f"bad header in {label}: the tensors cover {position} bytes but the data section "
            f"has {data_size}, so {data_size - position} bytes at the end belong to no "
            f"tensor; {_CORRUPT}"
        )


class SafetensorsReader(TensorSource):
    """A .safetensors file, read one tensor at a time through read-only memory maps.

    ``SafetensorsReader(path)`` for a file on disk; ``SafetensorsReader.from_bytes(data)``
    for a file already in memory (stdin). The header is validated on construction.
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
            size = os.fstat(self._file.fileno()).st_size
            entries, self.metadata, self._data_offset = parse_header(self._file, size, self.label)
        except BaseException:
            self._file.close()
            raise
        self._init_entries(entries)

    @classmethod
    def from_bytes(cls, data: BytesLike, label: str = "<stdin>") -> SafetensorsReader:
        """A reader over a complete safetensors file held in memory (no copy is made)."""
        reader = cls.__new__(cls)
        reader.label = label
        reader._file = None
        reader._buffer = memoryview(data).toreadonly()
        entries, reader.metadata, reader._data_offset = parse_header(
            reader._buffer, len(reader._buffer), label
        )
        reader._init_entries(entries)
        return reader

    def _init_entries(self, entries: list[HeaderEntry]) -> None:
        self._entries = {entry.name: entry for entry in entries}
        self._infos = [TensorInfo(e.name, e.dtype, e.shape) for e in entries]

    def infos(self) -> list[TensorInfo]:
        return list(self._infos)

    def entries(self) -> list[HeaderEntry]:
        """The validated header entries (with byte offsets), in header order."""
        return list(self._entries.values())

    def read(self, name: str) -> np.ndarray:
        entry = self._entries.get(name)
        if entry is None:
            raise self._unknown_tensor(name)
        offset = self._data_offset + entry.begin
        if self._buffer is not None:
            return buffer_array(self._buffer, offset, entry.dtype, entry.shape)
        if self._file is None:
            raise ValueError(f"{self.label} is closed")
        where = f"{self.label} (tensor {name!r})"
        return map_array(self._file, offset, entry.dtype, entry.shape, where)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
