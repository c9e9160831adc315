"""decompress of a quantized GGUF file: every quantized tensor decoded to floats.

The output follows its name: ``.gguf`` a GGUF file with the same metadata (``general.file_type``
set to the float type written) and tensor order, quantized tensors as F32 (or the ``--dtype``
asked for), the others copied byte for byte; ``.npz`` / ``.npy`` NumPy files; anything else
safetensors. Standard output gets GGUF.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import ml_dtypes
import numpy as np

from quantcli.errors import InputError, UsageError
from quantcli.io.ggml_types import ggml_type_of_dtype
from quantcli.io.gguf_file import GGUFReader, GGUFValue, GGUFValueType, ggml_codec
from quantcli.io.gguf_writer import GGUFWriter
from quantcli.io.numpy_files import write_npy, write_npz
from quantcli.io.safetensors_writer import SafetensorsWriter
from quantcli.io.source import TensorInfo
from quantcli.ops.outputs import input_paths, is_stdio, output_path, strip_suffixes, write_file

FILE_TYPE_KEY = "general.file_type"
# llama.cpp's LLAMA_FTYPE (include/llama.h) of a file of that float type: ALL_F32, MOSTLY_F16,
# MOSTLY_BF16
_FTYPES = {"float32": 0, "float16": 1, "bfloat16": 32}
_DTYPES = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}


def output_format(output: str) -> str:
    """``gguf``, ``npz``, ``npy`` or ``safetensors``, from the output's name."""
    if is_stdio(output):
        return "gguf"
    suffix = Path(output).suffix.lower()
    return {".gguf": "gguf", ".npz": "npz", ".npy": "npy"}.get(suffix, "safetensors")


def default_output(input: str) -> str:
    """``dir/model-Q4_K_M.gguf`` -> ``dir/model-Q4_K_M.restored.gguf``; stdin -> stdout."""
    if is_stdio(input):
        return "-"
    path = Path(input)
    if path.is_dir():
        path = path.resolve()
    stem = path.name[: -len(".gguf")] if path.name.endswith(".gguf") else strip_suffixes(path)
    return str(path.with_name(f"{stem}.restored.gguf"))


def decompress_gguf(
    input: str,
    source: GGUFReader,
    output: str | None,
    dtype: str,
    force: bool,
    result,
    progress: Callable[[str, int, int], None] | None = None,
) -> None:
    """Restore the quantized GGUF ``source`` into ``output``; fills ``result`` (a
    DecompressResult) with the tensors and files written."""
    from quantcli.ops.decompress import RestoredTensor

    tensors = source.tensors()
    quantized = [t for t in tensors if t.ggml_type.quantized]
    if not quantized:
        types = sorted({t.ggml_type.name for t in tensors})
        raise InputError(
            f"not a quantized file in {source.label}: its tensors are {', '.join(types) or 'none'}"
            ", no ggml block type to decode; quant decompress restores quantized GGUF files"
        )
    for t in quantized:  # refuse before writing anything
        ggml_codec(t.ggml_type, t.name, source.label)
    to_folder = output is not None and output.endswith(("/", os.sep))
    output = output_path(
        output,
        default_output(input),
        {
            ".gguf": "F32 GGUF",
            ".safetensors": "safetensors",
            ".npz": "NumPy archive",
            ".npy": "one NumPy array",
        },
        False,
        "quant decompress",
        input_paths(input, source),
    )
    fmt = output_format(output)
    result.output, result.format = output, fmt
    restored_dtype = _DTYPES["float32" if dtype == "original" else dtype]
    infos = [
        TensorInfo(t.name, restored_dtype, t.shape)
        if t.ggml_type.quantized
        else TensorInfo(t.name, t.ggml_type.dtype, t.shape)
        for t in tensors
    ]
    where = "<stdout>" if is_stdio(output) else output
    if fmt == "npy" and len(infos) != 1:
        raise UsageError(
            f"{len(infos)} tensors for a .npy output in {where}: a .npy file holds one array; "
            "use a .gguf, .npz or .safetensors output"
        )
    if fmt in ("npy", "npz"):
        for info in infos:
            if info.dtype.kind not in "biufc":
                raise UsageError(
                    f"{info.dtype} tensor {info.name} for a .{fmt} output in {where}: .{fmt} "
                    f"files cannot store {info.dtype} without losing its type; use a .gguf or "
                    ".safetensors output"
                )
    total = sum(i.size for i in infos)

    def arrays() -> Iterator[tuple[TensorInfo, np.ndarray, bool]]:
        for tensor, info in zip(tensors, infos):
            restored = tensor.ggml_type.quantized
            if restored:
                array = source.read_float32(tensor.name).astype(restored_dtype, copy=False)
            elif fmt == "gguf":
                array = source.read_blocks(tensor.name).blocks  # byte for byte
            else:
                array = source.read(tensor.name)
            result.tensors.append(RestoredTensor(info.name, info.shape, info.dtype, restored))
            yield info, array, restored
            if progress:
                progress(info.name, info.size, total)

    def write(f) -> list[tuple[str, int]]:
        written = []
        if fmt == "gguf":
            fields = dict(source.fields)
            fields[FILE_TYPE_KEY] = GGUFValue(GGUFValueType.UINT32, _FTYPES[restored_dtype.name])
            plan = [
                (
                    i.name,
                    ggml_type_of_dtype(i.dtype) if t.ggml_type.quantized else t.ggml_type,
                    i.shape,
                )
                for t, i in zip(tensors, infos)
            ]
            with GGUFWriter(f, fields, plan, source.alignment) as writer:
                for info, array, _ in arrays():
                    writer.write(info.name, array)
                    written.append((info.name, int(array.nbytes)))
        elif fmt == "safetensors":
            writer = SafetensorsWriter(f, [(i.name, i.dtype, i.shape) for i in infos], {})
            for info, array, _ in arrays():
                writer.write(info.name, array)
                written.append((info.name, int(array.nbytes)))
            writer.close()
        elif fmt == "npz":
            write_npz(f, ((info.name, array) for info, array, _ in arrays()))
        else:
            for _, array, _ in arrays():
                write_npy(f, array)
        return written

    result.files = write_file(
        output, input_paths(input, source), force, write, make_folder=to_folder
    )
