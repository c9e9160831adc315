"""Facts about an opened input that several commands need."""

from __future__ import annotations

import os

from quantcli.errors import InputError, QuantError, QuantizedFormatError
from quantcli.io.gguf_file import GGUFReader
from quantcli.io.numpy_files import NpyReader, NpzReader
from quantcli.io.quantized_format import is_quantized, read_entries
from quantcli.io.safetensors_file import SafetensorsReader
from quantcli.io.sharded import ShardedReader
from quantcli.io.source import TensorSource


def format_of(source: TensorSource) -> str:
    """``npy``, ``npz``, ``gguf`` or ``safetensors`` (a sharded checkpoint is safetensors too)."""
    if isinstance(source, NpyReader):
        return "npy"
    if isinstance(source, NpzReader):
        return "npz"
    if isinstance(source, GGUFReader):
        return "gguf"
    return "safetensors"


def file_metadata(source: TensorSource, file: str) -> dict[str, str]:
    """The ``__metadata__`` of the file ``file`` of ``source`` (from ``source.groups()``).

    A shard of a sharded checkpoint has its own metadata (e.g. ``{"format": "pt"}``, which
    Hugging Face loaders require), distinct from the index's; other sources are one file.
    """
    if not isinstance(source, ShardedReader):
        return source.metadata
    folder = os.path.dirname(os.path.abspath(source.index_path))
    label = os.path.join(os.path.dirname(source.label), file)
    with SafetensorsReader(os.path.join(folder, file), label=label) as shard:
        return dict(shard.metadata)


def describe(source: TensorSource) -> str:
    """A one-word-ish description for reports: ``safetensors``, ``sharded safetensors (3)``..."""
    if isinstance(source, ShardedReader):
        return f"sharded safetensors ({len(source.groups())} shards)"
    return format_of(source)


def quantized_entries(source: TensorSource, command: str):
    """The quantized entries of ``source``; InputError when it is not a quantized file."""
    if not is_quantized(source.metadata):
        raise InputError(
            f"not a quantized file in {source.label}: it has no quant.format metadata; "
            f"quant {command} reads files written by quant compress"
        )
    entries = read_entries(source.metadata, source.label)
    for entry in entries.values():
        try:  # the spec must fit the shape (e.g. its axis); else a SpecError would be exit 2
            entry.spec.for_tensor(entry.shape, entry.name)
        except QuantError as exc:
            raise QuantizedFormatError(
                f"bad quant.tensors metadata in {source.label}: {exc}; the file is damaged, "
                "re-run quant compress"
            ) from None
    return entries
