"""Open any supported input: a file, a checkpoint folder, a sharded index, or stdin ("-").

The format is recognised from the first bytes, not the file name, so a renamed file still
opens and a text file named ``.safetensors`` is refused clearly:

    b"\\x93NUMPY"                         .npy
    b"PK\\x03\\x04" or b"PK\\x05\\x06"        .npz (a zip archive; the second is an empty one)
    b"GGUF"                             .gguf (llama.cpp)
    8-byte LE length, then b"{"         .safetensors

Files of other tools are named, with what to do instead: a pickle (``b"\\x80"`` and a protocol
number: PyTorch's ``.bin``/``.pt`` saved the old way) or a zip holding ``data.pkl`` (PyTorch's
``torch.save``) is refused without being loaded, since loading a pickle runs code; the GGML and
GGJT files llama.cpp wrote before GGUF are refused too.

Standard input and pipes are copied to a temporary file, which is deleted at once (the reader
keeps it open) and read through memory maps like any file: memory holds what a command
touches, never a second copy of the whole input, which needs free disk space in the
temporary folder (``TMPDIR``) instead.
"""

from __future__ import annotations

import glob
import os
import re
import stat
import struct
import sys
import tempfile
import zipfile
from typing import BinaryIO

from quantcli.errors import FormatError, InputError, UnsafeInputError
from quantcli.io.gguf_file import GGUF_MAGIC, GGUFReader
from quantcli.io.numpy_files import NPY_MAGIC, ZIP_MAGICS, NpyReader, NpzReader
from quantcli.io.safetensors_file import MAX_HEADER_SIZE, SafetensorsReader
from quantcli.io.sharded import INDEX_SUFFIX, ShardedReader
from quantcli.io.source import TensorSource

STDIN = "-"
_SNIFF_SIZE = 9
_COPY_CHUNK = 1 << 20
_FORMATS = "quant reads .safetensors (also sharded), .gguf, .npy and .npz files"
# pickle protocols 2 to 5 start with PROTO (0x80) and the protocol number; torch.save has
# used protocol 2 since its first version
_PICKLE_PROTOCOLS = range(2, 6)
# The magic numbers of llama.cpp's formats before GGUF, as the files store them.
_OLD_GGML = {b"lmgg": "GGML", b"fmgg": "GGMF", b"tjgg": "GGJT"}
# Where PyTorch checkpoints live in a folder: pytorch_model.bin, its shards, *.pt, ...
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def sniff(first_bytes: bytes, total_size: int) -> str | None:
    """Name the format that ``first_bytes`` start, else None.

    "npy", "npz", "gguf" and "safetensors" are read; "pickle" and "ggml" (llama.cpp's
    formats before GGUF) are recognised only to be refused with the right advice.
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
    # after safetensors: a header length of 0x?280 starts with the same two bytes
    if len(first_bytes) >= 2 and first_bytes[0] == 0x80 and first_bytes[1] in _PICKLE_PROTOCOLS:
        return "pickle"
    if first_bytes[:4] in _OLD_GGML:
        return "ggml"
    return None


def open_input(path: str | os.PathLike) -> TensorSource:
    """Open ``path`` as a TensorSource; ``"-"`` reads stdin (copied to a temporary file).

    A folder must hold exactly one ``*.safetensors.index.json``, or else exactly one
    ``*.safetensors`` file, or else exactly one ``*.gguf`` file. Raises InputError for
    missing or unreadable paths, FormatError for content that is no supported format,
    UnsafeInputError for pickles (which are never loaded).
    """
    text = os.fspath(path)
    if text == STDIN:
        return _open_stdin()
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
        # A pipe such as bash's <(...) cannot be memory-mapped: copy it like stdin.
        try:
            with open(text, "rb") as stream:
                return _open_stream(stream, text)
        except OSError as exc:
            raise InputError(
                f"unreadable file in {text}: {exc.strerror or exc}; check the path"
            ) from exc
    return _open_file(text)


def _open_folder(folder: str) -> TensorSource:
    if not os.access(folder, os.R_OK | os.X_OK):
        # glob would silently find nothing in a folder it may not list.
        raise InputError(f"unreadable folder in {folder}: permission denied; check its permissions")
    indexes = _files(folder, "*" + INDEX_SUFFIX)
    if len(indexes) == 1:
        return ShardedReader(indexes[0])
    if len(indexes) > 1:
        names = ", ".join(os.path.basename(p) for p in indexes)
        raise InputError(
            f"ambiguous checkpoint in {folder}: the folder holds several indexes ({names}); "
            "pass the index file you mean"
        )
    files = _files(folder, "*.safetensors")
    if len(files) == 1:
        return _open_file(files[0])
    if len(files) > 1:
        raise InputError(
            f"ambiguous checkpoint in {folder}: the folder holds {len(files)} .safetensors "
            f"files but no *{INDEX_SUFFIX}; pass one file, or add the index of the sharded "
            "checkpoint"
        )
    ggufs = _files(folder, "*.gguf")
    if len(ggufs) == 1:
        return _open_file(ggufs[0])
    if len(ggufs) > 1:
        names = ", ".join(os.path.basename(p) for p in ggufs[:4])
        more = f" and {len(ggufs) - 4} more" if len(ggufs) > 4 else ""
        raise InputError(
            f"ambiguous checkpoint in {folder}: the folder holds {len(ggufs)} .gguf files "
            f"({names}{more}) and no .safetensors; pass the .gguf file you mean"
        )
    pickles = [p for p in _files(folder, "*") if p.endswith(_PICKLE_SUFFIXES) and os.path.isfile(p)]
    if pickles:
        names = ", ".join(os.path.basename(p) for p in pickles[:4])
        more = f" and {len(pickles) - 4} more" if len(pickles) > 4 else ""
        each = "it" if len(pickles) == 1 else "each file"
        raise UnsafeInputError(
            f"PyTorch checkpoint in {folder}: the folder holds {names}{more} (pickled "
            f"tensors) and no .safetensors; {_NO_PICKLES}; if you trust the files, convert "
            f"{each} to safetensors once: {_convert_command(pickles[0])}"
        )
    raise InputError(
        f"folder without a checkpoint in {folder}: it holds no *{INDEX_SUFFIX}, no "
        "*.safetensors and no *.gguf file; pass a weight file or a checkpoint folder"
    )


def _files(folder: str, pattern: str) -> list[str]:
    return sorted(glob.glob(os.path.join(glob.escape(folder), pattern)))


def _open_file(path: str, label: str | None = None, npy_name: str | None = None) -> TensorSource:
    """Open the regular file ``path`` by its content; ``label`` names it in messages (the
    path by default), ``npy_name`` the tensor of a .npy (the file's stem by default)."""
    label = path if label is None else label
    try:
        with open(path, "rb") as f:
            first = f.read(_SNIFF_SIZE)
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:  # PermissionError, IsADirectoryError, EIO, ...
        raise InputError(
            f"unreadable file in {label}: {exc.strerror or exc}; check the file's permissions"
        ) from exc
    if not first:
        what = "input" if label != path else "file"
        raise FormatError(f"empty {what} in {label}: it holds no bytes; {_FORMATS}")
    kind = sniff(first, size)
    if kind == "npy":
        return NpyReader(path, label=label, name=npy_name)
    if kind == "npz":
        if _holds_pickle(path):
            raise _refusal(label, first, torch_zip=True)
        return NpzReader(path, label=label)
    # For a damaged file named .gguf or .safetensors, the header checks say precisely what
    # is wrong.
    if kind == "gguf" or (kind is None and label.endswith(".gguf")):
        return GGUFReader(path, label=label)
    if kind == "safetensors" or (kind is None and label.endswith(".safetensors")):
        return SafetensorsReader(path, label=label)
    raise _refusal(label, first)


def _holds_pickle(path: str) -> bool:
    """True for a zip made by torch.save: it holds ``<name>/data.pkl``."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except Exception:  # a damaged archive: NpzReader says what is wrong with it
        return False
    return any(name == "data.pkl" or name.endswith("/data.pkl") for name in names)


_NO_PICKLES = "quant never loads pickles, because loading one runs whatever code it holds"


def _refusal(label: str, first: bytes, torch_zip: bool = False) -> FormatError:
    """The error for content quant does not read, saying what it is when it can tell."""
    kind = "torch zip" if torch_zip else sniff(first, sys.maxsize)
    command = _convert_command(label)
    if kind == "torch zip":
        return UnsafeInputError(
            f"PyTorch checkpoint in {label}: it is a torch.save zip archive of pickled tensors "
            f"(data.pkl), not a .npz; {_NO_PICKLES}; if you trust the file, convert it to "
            f"safetensors once: {command}"
        )
    if kind == "pickle":
        return UnsafeInputError(
            f"pickle file in {label}: it is a Python pickle, as PyTorch's older .bin and .pt "
            f"checkpoints are; {_NO_PICKLES}; if you trust the file, convert it to safetensors "
            f"once: {command}"
        )
    if kind == "ggml":
        return FormatError(
            f"old llama.cpp model in {label}: it is a {_OLD_GGML[first[:4]]} file, the format "
            "before GGUF, which quant does not read; convert the original weights to GGUF (or "
            "safetensors) again with a current llama.cpp"
        )
    return FormatError(
        f"unknown format in {label}: it starts with {first[:8]!r}, which is no .npy, .npz, "
        f".safetensors or .gguf header; {_FORMATS}"
    )


def _convert_command(path: str) -> str:
    """The one-line conversion of a trusted PyTorch checkpoint ``path`` to safetensors."""
    source, target = "model.bin", "model.safetensors"
    # a path is quoted in the command only when it needs no escaping
    if path != "<stdin>" and re.fullmatch(r"[\w./+-]+", path):
        source = path
        target = os.path.splitext(path)[0] + ".safetensors"
    return (
        'python -c "import torch; from safetensors.torch import save_file; '
        f"save_file(torch.load('{source}'), '{target}')\""
    )


def _open_stdin() -> TensorSource:
    stream = sys.stdin
    if stream is None:
        raise InputError("no input in <stdin>: stdin is closed; pipe a weight file into quant")
    try:
        if stream.isatty():
            raise InputError(
                "no input in <stdin>: stdin is a terminal; pipe a weight file into quant or "
                "pass a path instead of -"
            )
        buffer = stream.buffer
    except (OSError, ValueError, AttributeError) as exc:
        raise InputError(
            f"unreadable input in <stdin>: {exc}; pipe a weight file into quant"
        ) from exc
    return _open_stream(buffer, "<stdin>")


def _open_stream(stream: BinaryIO, label: str) -> TensorSource:
    """Open what ``stream`` (stdin, a pipe) holds: its first bytes are checked, then all of
    it is copied to a temporary file that is opened like a file and deleted at once.

    Content that starts no supported format is refused from its first bytes: /dev/zero or a
    disk device must not be copied forever.
    """
    first = _read(stream, _SNIFF_SIZE, label)
    if not first:
        raise FormatError(f"empty input in {label}: it holds no bytes; {_FORMATS}")
    if sniff(first, sys.maxsize) not in ("npy", "npz", "gguf", "safetensors"):
        raise _refusal(label, first)
    path = _spool(first, stream, label)
    try:
        # stdin has no file name: a .npy on it holds the tensor "tensor"
        return _open_file(path, label=label, npy_name="tensor")
    finally:
        # the reader holds the file open, so its data stays until the reader is closed
        try:
            os.unlink(path)
        except OSError:  # Windows cannot delete an open file: it stays in the temp folder
            pass


def _read(stream: BinaryIO, size: int, label: str) -> bytes:
    try:
        return stream.read(size)
    except (OSError, ValueError) as exc:
        raise InputError(
            f"unreadable input in {label}: {exc}; pipe a weight file into quant"
        ) from exc


def _spool(first: bytes, stream: BinaryIO, label: str) -> str:
    """Copy ``first`` and the rest of ``stream`` into a new temporary file; its path."""
    folder = tempfile.gettempdir()

    def no_room(exc: OSError) -> InputError:
        return InputError(
            f"no room for a copy of {label} in {folder}: {exc.strerror or exc}; quant copies "
            "standard input to a temporary file before reading it, so set TMPDIR to a folder "
            "with free space for the whole input, or pass a file path instead"
        )

    try:
        fd, path = tempfile.mkstemp(prefix="quant-input-", suffix=".tmp")
    except OSError as exc:
        raise no_room(exc) from exc
    try:
        with os.fdopen(fd, "wb") as out:
            chunk = first
            while chunk:
                out.write(chunk)
                chunk = _read(stream, _COPY_CHUNK, label)  # InputError if it fails
    except OSError as exc:  # writing (or closing, which flushes) failed: a full disk
        os.unlink(path)
        raise no_room(exc) from exc
    except BaseException:
        os.unlink(path)
        raise
    return path
