"""decompress: restore floats from a quantized file, tensor by tensor.

Every tensor comes back under its original name and shape; quantized tensors in their
original dtype (or the one asked for), kept tensors bit-identical. The output format follows
the output name: ``.npy`` (one tensor), ``.npz``, else safetensors; a sharded quantized
checkpoint restores to a sharded folder. A quantized GGUF file restores to an F32 GGUF file,
safetensors or npz (``quantcli.ops.gguf_decompress``). A model folder (quant's format or
compressed-tensors, as written by quant or by llm-compressor) restores to a float model
folder: config.json without its quantization_config, the other files carried over.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import ml_dtypes
import numpy as np

from quantcli.errors import UsageError
from quantcli.io.detect import open_input
from quantcli.io.gguf_file import GGUFReader
from quantcli.io.model_folder import write_model_folder
from quantcli.io.numpy_files import write_npy, write_npz
from quantcli.io.safetensors_writer import SafetensorsWriter
from quantcli.io.sharded import ShardedReader
from quantcli.io.source import TensorInfo, TensorSource
from quantcli.ops.gguf_decompress import decompress_gguf
from quantcli.ops.outputs import (
    input_paths,
    is_stdio,
    output_path,
    strip_suffixes,
    write_file,
    write_sharded,
)
from quantcli.ops.sources import (
    QuantizedCheckpoint,
    file_metadata,
    model_folder_of,
    open_quantized,
)

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
        if isinstance(source, GGUFReader):
            result = DecompressResult(input=source.label, output="", format="gguf")
            decompress_gguf(input, source, output, dtype, force, result, progress)
            return result
        checkpoint = open_quantized(input, source, "decompress")
        entries = checkpoint.entries
        restorer = _Restorer(source, checkpoint, None if dtype == "original" else _DTYPES[dtype])
        sharded = isinstance(source, ShardedReader)
        folder = model_folder_of(input, source)
        original = checkpoint.source_format
        to_folder = output is not None and output.endswith(("/", os.sep))
        output = output_path(
            output,
            _default_output(input, original, sharded or folder is not None),
            {".safetensors": "safetensors", ".npz": "NumPy archive", ".npy": "one NumPy array"},
            sharded or folder is not None,
            "quant decompress",
            input_paths(input, source),
        )
        fmt = _output_format(output, original, sharded or folder is not None)
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
        meta = checkpoint.metadata(source.metadata)

        def shard_writer(file, logical):
            # a shard gets back its own metadata, recorded in its own header
            own = checkpoint.metadata(file_metadata(source, file)) if sharded else meta

            def write(f):
                return _write(f, fmt, logical, restorer, own, result, progress)

            return write

        inputs = input_paths(input, source)
        if folder is not None:
            if is_stdio(output):
                raise UsageError(
                    f"model folder to stdout in {input}: a model folder is restored as a "
                    "folder; pass -o FOLDER"
                )
            index = (Path(source.index_path).name, meta) if sharded else None
            # the restored model is a float model again: config.json loses its
            # quantization_config, and the dtype asked for is the model's
            config = {k: v for k, v in folder.config.items() if k != "quantization_config"}
            if dtype != "original":
                for key in ("torch_dtype", "dtype"):
                    if key in config:
                        config[key] = dtype
            result.files = write_model_folder(
                Path(output),
                folder,
                config,
                [(file, shard_writer(file, logical)) for file, logical in groups],
                index,
                force,
            )
        elif sharded:
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
            result.files = write_file(
                output, inputs, force, shard_writer(*groups[0]), make_folder=to_folder
            )
    return result


class _Restorer:
    """Turns the stored arrays of a quantized file back into its logical tensors."""

    def __init__(self, source: TensorSource, checkpoint: QuantizedCheckpoint, dtype):
        self.source, self.entries, self.dtype = source, checkpoint.entries, dtype
        self.checkpoint = checkpoint
        # every stored array -> the entry it belongs to; a tensor is restored where its
        # first stored array lies (quant's codes under the tensor's own name, or a
        # compressed-tensors M.weight_packed)
        self.owner = {n: e for e in self.entries.values() for n, _, _ in e.stored()}
        self.total = sum(info.size for info in self.logical(source.infos()))

    def logical(self, infos: list[TensorInfo]) -> list[TensorInfo]:
        """The tensors a shard restores to, in file order, with their restored dtype."""
        out, done = [], set()
        for info in infos:
            entry = self.owner.get(info.name)
            if entry is None:
                out.append(info)
            elif entry.name not in done:
                done.add(entry.name)
                dtype = entry.dtype if self.dtype is None else self.dtype
                out.append(TensorInfo(entry.name, np.dtype(dtype), tuple(entry.shape)))
        return out

    def read(self, name: str) -> np.ndarray:
        entry = self.entries.get(name)
        if entry is None:
            return self.source.read(name)
        arrays = {n: self.source.read(n) for n, _, _ in entry.stored()}
        return self.checkpoint.restore(entry, arrays, self.source.label, dtype=self.dtype)


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
