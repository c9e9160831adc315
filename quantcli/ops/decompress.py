"""decompress: restore floats from a quantized file, tensor by tensor.

Every tensor comes back under its original name and shape; quantized tensors in their
original dtype (or the one asked for), kept tensors bit-identical. The output format follows
the output name: ``.npy`` (one tensor), ``.npz``, else safetensors; a sharded quantized
checkpoint restores to a sharded folder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import ml_dtypes
import numpy as np

from quantcli.errors import UsageError
from quantcli.io.detect import open_input
from quantcli.io.numpy_files import write_npy, write_npz
from quantcli.io.quantized_format import (
    QuantizedEntry,
    check_stored,
    restore,
    source_format,
    source_metadata,
)
from quantcli.io.safetensors_writer import SafetensorsWriter
from quantcli.io.sharded import ShardedReader
from quantcli.io.source import TensorInfo, TensorSource
from quantcli.ops.outputs import input_paths, is_stdio, strip_suffixes, write_file, write_sharded
from quantcli.ops.sources import file_metadata, quantized_entries

DTYPE_CHOICES = ("original", "float32", "float16", "bfloat16")
_DTYPES = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}


@dataclass
class RestoredTensor:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    restored: bool  # False: kept, copied byte for byte


@dataclass
class DecompressResult:
    input: str
    output: str
    format: str
    tensors: list[RestoredTensor] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def decompress(
    input: str,
    output: str | None,
    dtype: str = "original",
    force: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> DecompressResult:
    """Restore ``input`` (a quantized file) into ``output`` (path, ``-`` or None = default)."""
    if dtype not in DTYPE_CHOICES:
        raise UsageError(f"unknown dtype {dtype!r} in --dtype: choose one of {DTYPE_CHOICES}")
    with open_input(input) as source:
        entries = quantized_entries(source, "decompress")
        infos = {i.name: i for i in source.infos()}
        for entry in entries.values():
            check_stored(entry, infos, source.label)
        restorer = _Restorer(source, entries, None if dtype == "original" else _DTYPES[dtype])
        sharded = isinstance(source, ShardedReader)
        original = source_format(source.metadata)
        output = output or _default_output(input, original, sharded)
        fmt = _output_format(output, original, sharded)
        result = DecompressResult(input=source.label, output=output, format=fmt)
        groups = [(file, restorer.logical(infos_)) for file, infos_ in source.groups()]
        if fmt == "npy" and sum(len(g) for _, g in groups) != 1:
            n = sum(len(g) for _, g in groups)
            raise UsageError(
                f"{n} tensors for a .npy output in {output}: a .npy file holds one array; "
                "use an .npz or .safetensors output"
            )
        if fmt in ("npy", "npz"):
            # refuse before writing: on stdout, half an archive would already be out
            where = "<stdout>" if is_stdio(output) else output
            for info in (i for _, g in groups for i in g):
                if info.dtype.kind not in "biufc":
                    # --dtype converts quantized tensors only; kept ones stay as they are
                    hint = ", or --dtype float32" if info.name in entries else ""
                    raise UsageError(
                        f"{info.dtype} tensor {info.name} for a .{fmt} output in {where}: "
                        f".{fmt} files cannot store {info.dtype} without losing its type; use "
                        f"a .safetensors output{hint}"
                    )
        meta = source_metadata(source.metadata)

        def shard_writer(file, logical):
            # a shard gets back its own metadata, recorded in its own header
            own = source_metadata(file_metadata(source, file)) if sharded else meta

            def write(f):
                return _write(f, fmt, logical, restorer, own, result, progress)

            return write

        inputs = input_paths(input, source)
        if sharded:
            if is_stdio(output):
                raise UsageError(
                    f"sharded checkpoint to stdout in {source.label}: a sharded output is a "
                    "folder; pass -o FOLDER"
                )
            result.files = write_sharded(
                Path(output),
                Path(source.index_path).name,
                inputs,
                force,
                [(file, shard_writer(file, logical)) for file, logical in groups],
                meta,
            )
        else:
            result.files = write_file(output, inputs, force, shard_writer(*groups[0]))
    return result


class _Restorer:
    """Turns the stored arrays of a quantized file back into its logical tensors."""

    def __init__(self, source: TensorSource, entries: dict[str, QuantizedEntry], dtype):
        self.source, self.entries, self.dtype = source, entries, dtype
        self.auxiliary = {
            name for e in entries.values() for name, _, _ in e.stored() if name != e.name
        }
        self.total = sum(info.size for info in self.logical(source.infos()))

    def logical(self, infos: list[TensorInfo]) -> list[TensorInfo]:
        """The tensors a shard restores to, in file order, with their restored dtype."""
        out = []
        for info in infos:
            entry = self.entries.get(info.name)
            if entry is not None:
                dtype = entry.dtype if self.dtype is None else self.dtype
                out.append(TensorInfo(info.name, np.dtype(dtype), tuple(entry.shape)))
            elif info.name not in self.auxiliary:
                out.append(info)
        return out

    def read(self, name: str) -> np.ndarray:
        entry = self.entries.get(name)
        if entry is None:
            return self.source.read(name)
        arrays = {n: self.source.read(n) for n, _, _ in entry.stored()}
        return restore(entry, arrays, self.source.label, dtype=self.dtype)


def _write(f, fmt, logical, restorer, meta, result, progress) -> list[tuple[str, int]]:
    """Write the tensors ``logical`` in format ``fmt``; returns (name, bytes) of each."""
    written = []

    def arrays() -> Iterator[tuple[str, np.ndarray]]:
        for info in logical:
            array = restorer.read(info.name)
            restored = info.name in restorer.entries
            result.tensors.append(RestoredTensor(info.name, info.shape, info.dtype, restored))
            written.append((info.name, int(array.nbytes)))
            yield info.name, array
            del array  # before the next tensor is restored: memory follows one tensor
            if progress:
                progress(info.name, info.size, restorer.total)

    if fmt == "npy":
        for _, array in arrays():
            write_npy(f, array)
    elif fmt == "npz":
        write_npz(f, arrays())
    else:
        writer = SafetensorsWriter(f, [(i.name, i.dtype, i.shape) for i in logical], meta)
        for name, array in arrays():
            writer.write(name, array)
            del array
        writer.close()
    return written


def _default_output(input: str, original: str, sharded: bool) -> str:
    if is_stdio(input):
        return "-"
    path = Path(input)
    if sharded:
        # resolved: "." or an index in the current folder has no name to derive one from
        folder = (path if path.is_dir() else path.parent).resolve()
        return str(folder.with_name(f"{folder.name}.restored"))
    if path.is_dir():  # a folder holding one quantized file (".", "..")
        path = path.resolve()
    ext = original if original in ("npy", "npz") else "safetensors"
    return str(path.with_name(f"{strip_suffixes(path)}.restored.{ext}"))


def _output_format(output: str, original: str, sharded: bool) -> str:
    if sharded:
        return "safetensors"
    if is_stdio(output):
        return original if original in ("npy", "npz") else "safetensors"
    suffix = Path(output).suffix.lower()
    return {".npy": "npy", ".npz": "npz"}.get(suffix, "safetensors")
