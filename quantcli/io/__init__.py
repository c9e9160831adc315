"""Reading and writing weight files: .safetensors (single and sharded), .gguf, .npy, .npz.

Start with ``open_input(path)``, which recognises the format and returns a
``TensorSource``; write with ``SafetensorsWriter`` (or ``write_npy``/``write_npz``) into a
file from ``atomic_write``. One module per format:

    dtypes.py              safetensors dtype names <-> NumPy dtypes
    source.py              TensorInfo and the TensorSource interface
    safetensors_file.py    .safetensors header validation and reader
    sharded.py             *.safetensors.index.json checkpoints
    numpy_files.py         .npy / .npz reading and writing
    ggml_types.py          the ggml tensor types of GGUF files: id, name, block size and bytes
    gguf_file.py           .gguf header validation and reader
    gguf_writer.py         streaming .gguf writer
    detect.py              open_input: format detection from the first bytes, stdin
    safetensors_writer.py  streaming .safetensors writer
    atomic.py              atomic_write / AtomicGroup: temp file + rename
"""

from quantcli.io.atomic import AtomicGroup, atomic_write
from quantcli.io.detect import open_input
from quantcli.io.dtypes import is_float, numpy_dtype, safetensors_dtype
from quantcli.io.gguf_file import GGUFReader, GGUFValue, GGUFValueType
from quantcli.io.gguf_writer import GGUFWriter
from quantcli.io.numpy_files import NpyReader, NpzReader, write_npy, write_npz
from quantcli.io.safetensors_file import SafetensorsReader, parse_header
from quantcli.io.safetensors_writer import SafetensorsWriter, save_bytes
from quantcli.io.sharded import ShardedReader
from quantcli.io.source import TensorInfo, TensorSource

__all__ = [
    "AtomicGroup",
    "GGUFReader",
    "GGUFValue",
    "GGUFValueType",
    "GGUFWriter",
    "NpyReader",
    "NpzReader",
    "SafetensorsReader",
    "SafetensorsWriter",
    "ShardedReader",
    "TensorInfo",
    "TensorSource",
    "atomic_write",
    "is_float",
    "numpy_dtype",
    "open_input",
    "parse_header",
    "safetensors_dtype",
    "save_bytes",
    "write_npy",
    "write_npz",
]
