"""Writing .safetensors files one tensor at a time.

Because every tensor's byte size follows from its dtype and shape, the whole header (with
all data offsets) can be written before any data, and each tensor is written once, when it
is ready: the writer never holds more than the tensor being written.

Data is laid out as the reference library lays it out: by dtype, largest element size first,
then by name (``reference_order``), so every tensor starts at a multiple of its element size
(the header is padded to 8 bytes). Loaders that map a file and view its bytes as typed
arrays (PyTorch views, GPU kernels, MLX) need that; an int8 code array of odd length would
otherwise shift every tensor after it. Tensors are still written in the caller's order, each
at its offset, so the file object must be seekable unless the two orders agree (a temp file
from ``atomic_write``, the stdout spool and BytesIO all are).
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterable, Mapping
from typing import BinaryIO

import numpy as np
from numpy.typing import DTypeLike

from quantcli.io.dtypes import safetensors_dtype
from quantcli.io.source import TensorInfo

#: (name, dtype, shape) of one planned tensor; a TensorInfo works as well.
PlannedTensor = TensorInfo | tuple[str, DTypeLike, Iterable[int]]

# Non-contiguous arrays are copied to contiguous blocks of about this size before writing,
# so a transposed view of a huge tensor is not copied whole.
_CHUNK_BYTES = 16 * 1024 * 1024


def _as_info(item: PlannedTensor) -> TensorInfo:
    if isinstance(item, TensorInfo):
        return item
    name, dtype, shape = item
    return TensorInfo(name, np.dtype(dtype), tuple(shape))


# How the reference writer ranks dtypes (its Rust ``Dtype`` enum in reverse, as observed
# with safetensors 0.8): larger element sizes first.
_REFERENCE_RANK = {
    name: rank
    for rank, name in enumerate(
        "U64 I64 F64 C64 F32 U32 I32 BF16 F16 U16 I16 F8_E4M3 F8_E5M2 I8 U8 BOOL".split()
    )
}


def reference_order(tensors: Iterable[PlannedTensor]) -> list[TensorInfo]:
    """``tensors`` in the order safetensors' own writer lays them out, and SafetensorsWriter
    too: by dtype (larger element sizes first), then by name.

    This order keeps every tensor aligned to its element size in the file, and makes
    SafetensorsWriter's output byte-identical to ``safetensors.numpy.save`` (given at most
    one metadata key: the reference writes metadata in hash-map order).
    """
    infos = [_as_info(t) for t in tensors]
    return sorted(infos, key=lambda i: (_REFERENCE_RANK[safetensors_dtype(i.dtype)], i.name))


def build_header(
    tensors: Iterable[PlannedTensor], metadata: Mapping[str, str] | None = None
) -> bytes:
    """The 8-byte length plus the JSON header for ``tensors``.

    The header lists the tensors in the given order; their data is laid out in
    ``reference_order`` (``data_starts``). The JSON is compact UTF-8, padded with spaces so
    that the data starts at a multiple of 8 bytes, as the reference writer does. Empty
    metadata is left out. Raises ValueError for duplicate or reserved names and non-string
    metadata.
    """
    infos = [_as_info(t) for t in tensors]
    header: dict[str, object] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ValueError("safetensors metadata must map str to str")
        header["__metadata__"] = dict(sorted(metadata.items()))
    for info in infos:
        if not isinstance(info.name, str) or info.name == "__metadata__":
            raise ValueError(f"invalid tensor name {info.name!r}")
        if info.name in header:
            raise ValueError(f"tensor {info.name!r} is planned twice")
        header[info.name] = None  # the place in the listing; filled below
    starts = data_starts(infos)
    for info in infos:
        start = starts[info.name]
        header[info.name] = {
            "dtype": safetensors_dtype(info.dtype, f"tensor {info.name!r}"),
            "shape": list(info.shape),
            "data_offsets": [start, start + info.nbytes],
        }
    text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def data_starts(tensors: Iterable[PlannedTensor]) -> dict[str, int]:
    """Where each tensor's data starts (by name), counted from the start of the data
    section, with the data laid out in ``reference_order``."""
    starts, offset = {}, 0
    for info in reference_order(tensors):
        starts[info.name] = offset
        offset += info.nbytes
    return starts


class SafetensorsWriter:
    """Write a safetensors file tensor by tensor, in a fixed plan order.

    ``tensors`` is the plan: (name, dtype, shape) tuples or TensorInfo, in write order,
    which is also the order the header lists them in; their data is laid out in
    ``reference_order``. The header is written on construction; then
    call ``write(name, array)`` once per planned tensor, in plan order, and ``close()`` to
    check that all were written::

        with SafetensorsWriter(f, [("w", np.float32, (2, 3))], {"format": "pt"}) as writer:
            writer.write("w", w)

    ``close`` leaves ``fileobj`` open, positioned at the end of the file. A mismatch with the
    plan (wrong name, order, dtype, shape, or a missing tensor) is a bug in the caller and
    raises ValueError.
    """

    def __init__(
        self,
        fileobj: BinaryIO,
        tensors: Iterable[PlannedTensor],
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self._plan = [_as_info(t) for t in tensors]
        header = build_header(self._plan, metadata)
        self.header_size = len(header)
        # where each tensor's data starts, counted from the start of the file
        self._starts = {
            name: self.header_size + start for name, start in data_starts(self._plan).items()
        }
        #: Size in bytes of the complete file.
        self.total_size = self.header_size + sum(info.nbytes for info in self._plan)
        self._file = fileobj
        self._next = 0
        self._file.write(header)
        self._position = self.header_size

    def write(self, name: str, array: np.ndarray) -> None:
        """Write the next planned tensor: ``array`` must have its name, dtype and shape.

        Any byte order and memory layout is accepted; the file gets little-endian C order.
        """
        if self._next >= len(self._plan):
            raise ValueError(f"tensor {name!r} is not planned: all tensors are written")
        planned = self._plan[self._next]
        if name != planned.name:
            raise ValueError(f"expected tensor {planned.name!r} next, got {name!r}")
        array = np.asarray(array)
        where = f"tensor {name!r}"
        if safetensors_dtype(array.dtype, where) != safetensors_dtype(planned.dtype, where):
            raise ValueError(f"{where} is planned as {planned.dtype}, got {array.dtype}")
        if array.shape != planned.shape:
            raise ValueError(f"{where} is planned with shape {planned.shape}, got {array.shape}")
        self._seek(self._starts[name])
        write_array_bytes(self._file, array)
        self._position += planned.nbytes
        self._next += 1

    def close(self) -> None:
        """Check that every planned tensor was written (the file object stays open)."""
        missing = [info.name for info in self._plan[self._next :]]
        if missing:
            raise ValueError(f"tensors planned but not written: {', '.join(missing)}")
        self._seek(self.total_size)

    def _seek(self, position: int) -> None:
        # relative moves: the file object may not start at position 0 of the stream
        if position != self._position:
            self._file.seek(position - self._position, io.SEEK_CUR)
            self._position = position

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        # After an error the plan is incomplete anyway; do not hide the real exception.
        if exc_type is None:
            self.close()


def write_array_bytes(fileobj: BinaryIO, array: np.ndarray) -> None:
    """Write ``array``'s elements to ``fileobj`` as little-endian bytes in C order."""
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and sys.byteorder == "big"):
        array = array.astype(array.dtype.newbyteorder("<"))
    if array.size == 0:
        return
    if array.flags.c_contiguous:
        # One write of a zero-copy byte view (memory-mapped input is read as it is written).
        fileobj.write(array.reshape(-1).view(np.uint8).data)
        return
    rows_per_chunk = max(1, _CHUNK_BYTES // max(1, array[0].nbytes))
    for start in range(0, array.shape[0], rows_per_chunk):
        block = np.ascontiguousarray(array[start : start + rows_per_chunk])
        fileobj.write(block.reshape(-1).view(np.uint8).data)


def save_bytes(
    tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> bytes:
    """A complete safetensors file holding ``tensors``, as bytes."""
    buffer = io.BytesIO()
    plan = [(name, array.dtype, array.shape) for name, array in tensors.items()]
    with SafetensorsWriter(buffer, plan, metadata) as writer:
        for name, array in tensors.items():
            writer.write(name, array)
    return buffer.getvalue()
