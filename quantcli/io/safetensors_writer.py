"""Writing .safetensors files as a stream, one tensor at a time.

Because every tensor's byte size follows from its dtype and shape, the whole header (with
all data offsets) can be written before any data. The writer therefore never seeks and
never holds more than the tensor being written: it works on a temp file from
``atomic_write`` and on a pipe (``sys.stdout.buffer``) alike.

Data is laid out in the order the tensors are planned. The format allows any order; the
reference library instead sorts by dtype (largest element size first) and name, which keeps
every tensor aligned to its element size. ``reference_order`` gives that order for callers
that want it; NumPy and the reference reader handle unaligned tensors either way.
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
    """``tensors`` in the order safetensors' own writer uses: by dtype (larger element sizes
    first), then by name.

    Writing in this order keeps every tensor aligned to its element size in the file, and
    makes SafetensorsWriter's output byte-identical to ``safetensors.numpy.save`` (given at
    most one metadata key: the reference writes metadata in hash-map order).
    """
    infos = [_as_info(t) for t in tensors]
    return sorted(infos, key=lambda i: (_REFERENCE_RANK[safetensors_dtype(i.dtype)], i.name))


def build_header(
    tensors: Iterable[PlannedTensor], metadata: Mapping[str, str] | None = None
) -> bytes:
    """The 8-byte length plus the JSON header for ``tensors`` laid out in the given order.

    The JSON is compact UTF-8, padded with spaces so that the data starts at a multiple of
    8 bytes, as the reference writer does. Empty metadata is left out.
    Raises ValueError for duplicate or reserved names and non-string metadata.
    """
    header: dict[str, object] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ValueError("safetensors metadata must map str to str")
        header["__metadata__"] = dict(sorted(metadata.items()))
    offset = 0
    for item in tensors:
        info = _as_info(item)
        if not isinstance(info.name, str) or info.name == "__metadata__":
            raise ValueError(f"invalid tensor name {info.name!r}")
        if info.name in header:
            raise ValueError(f"tensor {info.name!r} is planned twice")
        header[info.name] = {
            "dtype": safetensors_dtype(info.dtype, f"tensor {info.name!r}"),
            "shape": list(info.shape),
            "data_offsets": [offset, offset + info.nbytes],
        }
        offset += info.nbytes
    text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


class SafetensorsWriter:
    """Write a safetensors file tensor by tensor, in a fixed plan order.

    ``tensors`` is the plan: (name, dtype, shape) tuples or TensorInfo, in write order.
    The header is written on construction; then call ``write(name, array)`` once per
    planned tensor, in plan order, and ``close()`` to check that all were written::

        with SafetensorsWriter(f, [("w", np.float32, (2, 3))], {"format": "pt"}) as writer:
            writer.write("w", w)

    ``close`` does not close ``fileobj``. A mismatch with the plan (wrong name, order,
    dtype, shape, or a missing tensor) is a bug in the caller and raises ValueError.
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
        #: Size in bytes of the complete file.
        self.total_size = self.header_size + sum(info.nbytes for info in self._plan)
        self._file = fileobj
        self._next = 0
        self._file.write(header)

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
        write_array_bytes(self._file, array)
        self._next += 1

    def close(self) -> None:
        """Check that every planned tensor was written (the file object stays open)."""
        missing = [info.name for info in self._plan[self._next :]]
        if missing:
            raise ValueError(f"tensors planned but not written: {', '.join(missing)}")

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
    """A complete safetensors file holding ``tensors`` (in dict order), as bytes."""
    buffer = io.BytesIO()
    plan = [(name, array.dtype, array.shape) for name, array in tensors.items()]
    with SafetensorsWriter(buffer, plan, metadata) as writer:
        for name, array in tensors.items():
            writer.write(name, array)
    return buffer.getvalue()
