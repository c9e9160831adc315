"""Open any supported input: a file, a checkpoint folder, a sharded index, or stdin ("-").

The format is recognised from the first bytes, not the file name, so a renamed file still
opens and a text file named ``.safetensors`` is refused clearly:

    b"\\x93NUMPY"                         .npy
    b"PK\\x03\\x04" or b"PK\\x05\\x06"        .npz (a zip archive; the second is an empty one)
    b"GGUF"                             .gguf (llama.cpp)
    8-byte LE length, then b"{"         .safetensors
"""

from __future__ import annotations

import glob
import os
import stat
import struct
import sys
from typing import BinaryIO

from quantcli.errors import FormatError, InputError
from quantcli.io.gguf_file import GGUF_MAGIC, GGUFReader
from quantcli.io.numpy_files import NPY_MAGIC, ZIP_MAGICS, NpyReader, NpzReader
from quantcli.io.safetensors_file import MAX_HEADER_SIZE, SafetensorsReader
from quantcli.io.sharded import INDEX_SUFFIX, ShardedReader
from quantcli.io.source import TensorSource

STDIN = "-"
_SNIFF_SIZE = 9
_FORMATS = "quant reads .safetensors (also sharded), .gguf, .npy and .npz files"


def sniff(first_bytes: bytes, total_size: int) -> str | None:
    """Name the format ("npy", "npz", "gguf", "safetensors") that ``first_bytes`` start, else None.

    ``first_bytes`` needs at least 9 bytes to recognise safetensors; ``total_size`` is the
    size of the whole input, used to check that the header length is plausible.
    """
    if first_bytes.startswith(NPY_MAGIC):
        return "npy"
    if first_bytes.startswith(ZIP_MAGICS):
        return "npz"
    if first_bytes.startswith(GGUF_MAGIC):
        return "gguf"
    if len(first_bytes) >= 9 and first_bytes[8:9] == b"{":
        (header_len,) = struct.unpack("<Q", first_bytes[:8])
        if 2 <= header_len <= min(MAX_HEADER_SIZE, total_size - 8):
            return "safetensors"
    return None


def open_input(path: str | os.PathLike) -> TensorSource:
    """Open ``path`` as a TensorSource; ``"-"`` reads the whole of stdin.

    A folder must hold exactly one ``*.safetensors.index.json``, or else exactly one
    ``*.safetensors`` file. Raises InputError for missing or unreadable paths, FormatError
    for content that is no supported format.
    """
    text = os.fspath(path)
    if text == STDIN:
        return _open_bytes(_read_stdin(), "<stdin>", name="tensor")
    try:
        info = os.stat(text)
    except FileNotFoundError as exc:
        raise InputError(
            f"no such file in {text}: nothing exists at this path; check the path"
        ) from exc
    except OSError as exc:
        raise InputError(
            f"unreadable path in {text}: {exc.strerror or exc}; check the path"
        ) from exc
    if stat.S_ISDIR(info.st_mode):
        return _open_folder(text)
    if text.endswith(INDEX_SUFFIX):
        return ShardedReader(text)
    if not stat.S_ISREG(info.st_mode):
        # A pipe such as bash's <(...) cannot be memory-mapped: read it like stdin.
        return _open_bytes(_read_all(text), text, name=None)
    return _open_file(text)


def _open_folder(folder: str) -> TensorSource:
    if not os.access(folder, os.R_OK | os.X_OK):
        # glob would silently find nothing in a folder it may not list.
        raise InputError(f"unreadable folder in {folder}: permission denied; check its permissions")
    indexes = sorted(glob.glob(os.path.join(glob.escape(folder), "*" + INDEX_SUFFIX)))
    if len(indexes) == 1:
        return ShardedReader(indexes[0])
    if len(indexes) > 1:
        names = ", ".join(os.path.basename(p) for p in indexes)
        raise InputError(
            f"ambiguous checkpoint in {folder}: the folder holds several indexes ({names}); "
            "pass the index file you mean"
        )
    files = sorted(glob.glob(os.path.join(glob.escape(folder), "*.safetensors")))
    if len(files) == 1:
        return _open_file(files[0])
    if len(files) > 1:
        raise InputError(
            f"ambiguous checkpoint in {folder}: the folder holds {len(files)} .safetensors "
            f"files but no *{INDEX_SUFFIX}; pass one file, or add the index of the sharded "
            "checkpoint"
        )
    raise InputError(
        f"folder without a checkpoint in {folder}: it holds no *{INDEX_SUFFIX} and no "
        "*.safetensors file; pass a weight file or a checkpoint folder"
    )


def _open_file(path: str) -> TensorSource:
    try:
        with open(path, "rb") as f:
            first = f.read(_SNIFF_SIZE)
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:  # PermissionError, IsADirectoryError, EIO, ...
        raise InputError(
            f"unreadable file in {path}: {exc.strerror or exc}; check the file's permissions"
        ) from exc
    if not first:
        raise FormatError(f"empty file in {path}: it holds no bytes; {_FORMATS}")
    kind = sniff(first, size)
    if kind == "npy":
        return NpyReader(path)
    if kind == "npz":
        return NpzReader(path)
    # For a damaged file named .gguf or .safetensors, the header checks say precisely what
    # is wrong.
    if kind == "gguf" or (kind is None and path.endswith(".gguf")):
        return GGUFReader(path)
    if kind == "safetensors" or path.endswith(".safetensors"):
        return SafetensorsReader(path)
    raise _unknown_format(path, first)


def _open_bytes(data: bytes, label: str, name: str | None) -> TensorSource:
    if not data:
        raise FormatError(f"empty input in {label}: it holds no bytes; {_FORMATS}")
    kind = sniff(data[:_SNIFF_SIZE], len(data))
    if kind == "npy":
        return NpyReader(data, label=label, name=name)
    if kind == "npz":
        return NpzReader(data, label=label)
    if kind == "gguf":
        return GGUFReader.from_bytes(data, label=label)
    if kind == "safetensors":
        return SafetensorsReader.from_bytes(data, label=label)
    raise _unknown_format(label, data[:_SNIFF_SIZE])


def _unknown_format(label: str, first: bytes) -> FormatError:
    return FormatError(
        f"unknown format in {label}: it starts with {first[:8]!r}, which is no .npy, .npz, "
        f".safetensors or .gguf header; {_FORMATS}"
    )


def _read_stream(stream: BinaryIO, label: str) -> bytes:
    """All the bytes of a pipe or device, but refused after the first few when they start no
    supported format: /dev/zero or a disk device must not be read into memory forever."""
    first = stream.read(_SNIFF_SIZE)
    if len(first) == _SNIFF_SIZE and sniff(first, sys.maxsize) is None:
        raise _unknown_format(label, first)
    return first + stream.read()


def _read_stdin() -> bytes:
    stream = sys.stdin
    if stream is None:
        raise InputError("no input in <stdin>: stdin is closed; pipe a weight file into quant")
    try:
        if stream.isatty():
            raise InputError(
                "no input in <stdin>: stdin is a terminal; pipe a weight file into quant or "
                "pass a path instead of -"
            )
        return _read_stream(stream.buffer, "<stdin>")
    except (OSError, ValueError, AttributeError) as exc:
        raise InputError(
            f"unreadable input in <stdin>: {exc}; pipe a weight file into quant"
        ) from exc


def _read_all(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return _read_stream(f, path)
    except OSError as exc:
        raise InputError(
            f"unreadable file in {path}: {exc.strerror or exc}; check the path"
        ) from exc
