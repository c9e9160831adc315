"""Reading and writing NumPy's .npy (one array) and .npz (a zip of .npy files) formats.

.npy layout (https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html):

    b"\\x93NUMPY", major, minor      6 + 2 bytes
    header length                   uint16 LE (version 1) or uint32 LE (versions 2, 3)
    header                          a Python dict literal, e.g.
                                    {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)}
    data                            the array's bytes

quant never unpickles: a header whose dtype holds Python objects is refused before any data
is read (UnsafeInputError). The header is parsed here rather than by ``np.load`` so that the
offset, dtype and shape that are validated are exactly the ones used to map the data.
"""

from __future__ import annotations

import ast
import io
import math
import os
import struct
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from quantcli.errors import FormatError, InputError, OutputError, QuantError, UnsafeInputError
from quantcli.io.dtypes import is_supported
from quantcli.io.source import TensorInfo, TensorSource, buffer_array, checked_shape, map_array

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; an empty archive

# Same limit as np.load: a larger header is refused, as ast.literal_eval on huge input
# can exhaust memory or the stack.
_MAX_NPY_HEADER = 10_000
# version -> (struct format of the header length, text encoding of the header)
_NPY_VERSIONS = {(1, 0): ("<H", "latin1"), (2, 0): ("<I", "latin1"), (3, 0): ("<I", "utf8")}
# Element kinds quant passes on: bool, signed/unsigned int, float, complex.
_NUMERIC_KINDS = "biufc"
_CORRUPT = "the file is corrupt or not a NumPy file, save it again with numpy.save"
_NO_PICKLE = "quant never loads pickles; save plain numeric arrays"


@dataclass(frozen=True)
class NpyHeader:
    """A validated .npy header; ``data_offset`` is where the data starts, from the magic."""

    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool
    data_offset: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def read_npy_header(stream: BinaryIO, label: str) -> NpyHeader:
    """Read and validate a .npy header from ``stream`` (positioned at the magic string).

    Raises UnsafeInputError for object dtypes, FormatError for anything malformed or
    non-numeric. Leaves ``stream`` positioned at the start of the data.
    """
    prefix = _read_exact(stream, 8, label, "the magic string")
    if prefix[:6] != NPY_MAGIC:
        raise FormatError(f"bad header in {label}: no .npy magic string; {_CORRUPT}")
    version = (prefix[6], prefix[7])
    if version not in _NPY_VERSIONS:
        raise FormatError(
            f"bad header in {label}: unknown .npy format version {version[0]}.{version[1]}; "
            "save the array again with numpy.save"
        )
    length_format, encoding = _NPY_VERSIONS[version]
    length_size = struct.calcsize(length_format)
    (header_len,) = struct.unpack(
        length_format, _read_exact(stream, length_size, label, "the header length")
    )
    if header_len > _MAX_NPY_HEADER:
        raise FormatError(
            f"bad header in {label}: the .npy header is {header_len} bytes, more than the "
            f"{_MAX_NPY_HEADER} quant accepts; {_CORRUPT}"
        )
    raw = _read_exact(stream, header_len, label, "the header")
    try:
        with warnings.catch_warnings():
            # a damaged header can hold "\s" and the like: Python warns about the escape
            # while parsing; the header is judged below, not warned about
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", SyntaxWarning)
            fields = ast.literal_eval(raw.decode(encoding))
    except Exception as exc:  # SyntaxError, ValueError, MemoryError, RecursionError, ...
        raise FormatError(
            f"bad header in {label}: the .npy header is not a Python dict literal ({exc}); "
            f"{_CORRUPT}"
        ) from exc
    if not isinstance(fields, dict) or set(fields) != {"descr", "fortran_order", "shape"}:
        raise FormatError(
            f"bad header in {label}: the .npy header must have exactly the keys descr, "
            f"fortran_order and shape; {_CORRUPT}"
        )
    if not isinstance(fields["fortran_order"], bool):
        raise FormatError(f"bad header in {label}: fortran_order is not True or False; {_CORRUPT}")
    try:
        dtype = np.lib.format.descr_to_dtype(fields["descr"])
    except Exception as exc:  # TypeError, ValueError, ... for a malformed descr
        raise FormatError(
            f"bad header in {label}: {fields['descr']!r} is not a NumPy dtype; {_CORRUPT}"
        ) from exc
    _check_numeric(dtype, label)
    if not isinstance(fields["shape"], tuple):
        raise FormatError(
            f"bad header in {label}: shape {fields['shape']!r} is not a tuple; {_CORRUPT}"
        )
    shape = checked_shape(fields["shape"], dtype.itemsize, label)
    return NpyHeader(dtype, shape, fields["fortran_order"], 8 + length_size + header_len)


def _check_numeric(dtype: np.dtype, label: str) -> None:
    if dtype.hasobject:
        raise UnsafeInputError(
            f"unsafe array in {label}: it holds Python objects (dtype object), which would "
            f"need pickle; {_NO_PICKLE}"
        )
    if dtype.kind not in _NUMERIC_KINDS and not is_supported(dtype):
        raise FormatError(
            f"unsupported dtype in {label}: {dtype} is not a numeric dtype; save an array of "
            "bool, int, uint, float or complex values"
        )


def _read_exact(stream: BinaryIO, size: int, label: str, what: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise FormatError(
            f"truncated data in {label}: {what} needs {size} bytes but only {len(data)} are "
            "left; the file is incomplete, download or copy it again"
        )
    return data


def _open_for_reading(path: str | os.PathLike, label: str) -> BinaryIO:
    try:
        return open(path, "rb")  # the reader closes it in close()
    except OSError as exc:
        raise InputError(
            f"unreadable file in {label}: {exc.strerror or exc}; check the path and its permissions"
        ) from exc


class NpyReader(TensorSource):
    """A .npy file: one tensor, named after the file (``w.npy`` -> ``w``; stdin -> ``tensor``).

    ``source`` is a path (memory-mapped read-only) or the file's complete bytes (stdin).
    """

    def __init__(
        self,
        source: str | os.PathLike | bytes | bytearray | memoryview,
        label: str | None = None,
        name: str | None = None,
    ) -> None:
        self.metadata = {}
        self._file: BinaryIO | None = None
        self._buffer: memoryview | None = None
        if isinstance(source, (bytes, bytearray, memoryview)):
            self.label = label or "<stdin>"
            self._name = name or "tensor"
            self._buffer = memoryview(source).toreadonly()
            self._header = read_npy_header(io.BytesIO(self._buffer), self.label)
            size = len(self._buffer)
        else:
            self.label = label or os.fspath(source)
            self._name = name or os.fsencode(Path(source).stem).decode("utf-8", "backslashreplace")
            self._file = _open_for_reading(source, self.label)
            try:
                self._header = read_npy_header(self._file, self.label)
                size = os.fstat(self._file.fileno()).st_size
            except BaseException:
                self.close()
                raise
        end = self._header.data_offset + self._header.nbytes
        if size < end:
            self.close()
            raise FormatError(
                f"truncated data in {self.label}: the array needs bytes "
                f"{self._header.data_offset}..{end} but the file has {size}; the file is "
                "incomplete, download or copy it again"
            )

    def infos(self) -> list[TensorInfo]:
        return [TensorInfo(self._name, self._header.dtype, self._header.shape)]

    def read(self, name: str) -> np.ndarray:
        if name != self._name:
            raise self._unknown_tensor(name)
        h = self._header
        if self._buffer is not None:
            return buffer_array(self._buffer, h.data_offset, h.dtype, h.shape, h.fortran_order)
        if self._file is None:
            raise ValueError(f"{self.label} is closed")
        return map_array(self._file, h.data_offset, h.dtype, h.shape, self.label, h.fortran_order)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@contextmanager
def _zip_errors(label: str) -> Iterator[None]:
    """Turn whatever zipfile raises on a damaged archive into a FormatError.

    zipfile can fail in many ways on hostile bytes (BadZipFile, EOFError, OSError,
    NotImplementedError for unknown compression, RuntimeError for encryption, zlib.error,
    struct.error, ...); none of them may reach the user as a traceback.
    """
    try:
        yield
    except QuantError:
        raise
    except Exception as exc:
        raise FormatError(
            f"bad archive in {label}: {type(exc).__name__}: {exc}; the file is corrupt or not "
            "a .npz file, save it again with numpy.savez"
        ) from exc


class NpzReader(TensorSource):
    """A .npz archive: one tensor per ``<name>.npy`` member, in archive order.

    ``source`` is a path or the archive's complete bytes (stdin). Members are decompressed
    (or, when stored, copied) into memory one at a time on ``read``, which also verifies
    the member's CRC; the member headers are all validated on construction.
    """

    def __init__(
        self,
        source: str | os.PathLike | bytes | bytearray | memoryview,
        label: str | None = None,
    ) -> None:
        self.metadata = {}
        self._file: BinaryIO | None = None
        if isinstance(source, (bytes, bytearray, memoryview)):
            self.label = label or "<stdin>"
            self._file = io.BytesIO(source)
        else:
            self.label = label or os.fspath(source)
            self._file = _open_for_reading(source, self.label)
        try:
            with _zip_errors(self.label):
                self._zip = zipfile.ZipFile(self._file)
                self._members = self._read_members()
        except BaseException:
            self.close()
            raise

    def _read_members(self) -> dict[str, tuple[zipfile.ZipInfo, NpyHeader]]:
        members: dict[str, tuple[zipfile.ZipInfo, NpyHeader]] = {}
        for member in self._zip.infolist():
            if member.is_dir():
                continue
            where = f"{self.label} (member {member.filename!r})"
            if not member.filename.endswith(".npy"):
                raise FormatError(
                    f"bad archive in {where}: the member is not a .npy array; a .npz file "
                    "holds only .npy members, save it with numpy.savez"
                )
            if member.flag_bits & 0x1:
                raise FormatError(
                    f"bad archive in {where}: the member is encrypted; save the arrays to an "
                    "unencrypted .npz with numpy.savez"
                )
            name = member.filename[: -len(".npy")]
            if name in members:
                raise FormatError(
                    f"bad archive in {self.label}: two members are named {member.filename!r}; "
                    "save the arrays again with numpy.savez"
                )
            with self._zip.open(member) as stream:
                header = read_npy_header(stream, where)
            # The member's size is in the zip directory; it must match what the header
            # promises, which also bounds what read() will decompress.
            if header.data_offset + header.nbytes != member.file_size:
                raise FormatError(
                    f"truncated data in {where}: the array needs {header.nbytes} bytes after "
                    f"its {header.data_offset}-byte header but the member holds "
                    f"{member.file_size - header.data_offset}; save it again with numpy.savez"
                )
            members[name] = (member, header)
        return members

    def infos(self) -> list[TensorInfo]:
        return [TensorInfo(name, h.dtype, h.shape) for name, (_, h) in self._members.items()]

    def read(self, name: str) -> np.ndarray:
        if name not in self._members:
            raise self._unknown_tensor(name)
        member, h = self._members[name]
        where = f"{self.label} (member {member.filename!r})"
        with _zip_errors(where), self._zip.open(member) as stream:
            stream.read(h.data_offset)
            data = _read_exact(stream, h.nbytes, where, "the array")
            # Reading to the end makes zipfile compare the CRC and raise on a mismatch.
            if stream.read(1):
                raise FormatError(f"bad archive in {where}: the member is longer than its array")
        return buffer_array(memoryview(data), 0, h.dtype, h.shape, h.fortran_order)

    def close(self) -> None:
        zip_file = getattr(self, "_zip", None)
        if zip_file is not None:
            zip_file.close()
            self._zip = None
        if self._file is not None:
            self._file.close()
            self._file = None


# ---------------------------------------------------------------------------------------
# Writing


def _check_writable(array: np.ndarray, where: str) -> None:
    """Only dtypes .npy stores faithfully: bfloat16/float8 would come back as raw bytes."""
    if array.dtype.hasobject or array.dtype.kind not in _NUMERIC_KINDS:
        raise OutputError(
            f"unsupported dtype in {where}: {array.dtype} cannot be stored in a .npy file "
            "without losing its type; write .safetensors instead or cast to float32"
        )


def write_npy(fileobj: BinaryIO, array: np.ndarray, label: str = "<output>") -> None:
    """Write ``array`` (any shape, numeric dtype) to ``fileobj`` in .npy format.

    The data is streamed in chunks, so ``fileobj`` may be a pipe (sys.stdout.buffer).
    Raises OutputError for dtypes .npy cannot represent (bfloat16, float8, objects).
    """
    array = np.asarray(array)
    _check_writable(array, label)
    np.lib.format.write_array(fileobj, array, allow_pickle=False)


def write_npz(
    fileobj: BinaryIO,
    tensors: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
    label: str = "<output>",
) -> None:
    """Write tensors to ``fileobj`` as an uncompressed .npz (members ``<name>.npy``).

    ``tensors`` is a dict or an iterable of ``(name, array)`` pairs; with a generator, only
    one array needs to be in memory at a time. Output is deterministic: members carry a
    fixed timestamp, so the same tensors give the same bytes. Works on pipes too.
    """
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    seen: set[str] = set()
    with zipfile.ZipFile(fileobj, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, array in items:
            if name in seen:
                raise ValueError(f"tensor {name!r} given twice")
            seen.add(name)
            array = np.asarray(array)
            _check_writable(array, f"{label} (tensor {name!r})")
            member = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            member.compress_type = zipfile.ZIP_STORED
            member.external_attr = 0o644 << 16  # rw-r--r-- when unpacked
            # force_zip64: the size is not known before streaming; members over 2 GiB need it.
            with zf.open(member, mode="w", force_zip64=True) as stream:
                np.lib.format.write_array(stream, array, allow_pickle=False)
            del array  # before the next tensor is made: one array in memory at a time
