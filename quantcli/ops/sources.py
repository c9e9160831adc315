"""Facts about an opened input that several commands need."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from quantcli.errors import InputError, QuantError, QuantizedFormatError
from quantcli.io import compressed_tensors as ct
from quantcli.io.gguf_file import GGUFReader
from quantcli.io.model_folder import (
    CONFIG,
    ModelFolder,
    has_config,
    load_config,
    read_model_folder,
)
from quantcli.io.numpy_files import NpyReader, NpzReader
from quantcli.io.quantized_format import (
    check_stored,
    is_quantized,
    read_entries,
    restore,
    source_format,
    source_metadata,
    unpacked_codes,
)
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


def model_folder_of(input: str, source: TensorSource) -> ModelFolder | None:
    """The model folder ``input`` names (a folder holding config.json, or the index of a
    sharded checkpoint in one), with the weight files ``source`` read; else None."""
    if input == "-":
        return None
    if os.path.isdir(input):
        folder = input
    elif isinstance(source, ShardedReader):
        folder = os.path.dirname(os.path.abspath(source.index_path))
    else:
        return None
    if not has_config(folder):
        return None
    if isinstance(source, ShardedReader):
        weights = [os.path.basename(source.index_path)] + [f for f, _ in source.groups()]
    else:
        weights = [os.path.basename(source.label)]
    return read_model_folder(folder, weights)


def describe(source: TensorSource) -> str:
    """A one-word-ish description for reports: ``safetensors``, ``sharded safetensors (3)``..."""
    if isinstance(source, ShardedReader):
        return f"sharded safetensors ({len(source.groups())} shards)"
    return format_of(source)


@dataclass
class QuantizedCheckpoint:
    """A quantized checkpoint as the commands that restore it see it, whatever its container.

    container: ``quant`` (quant's own format) or ``compressed-tensors``; entries: tensor name
    -> entry (``.name``, ``.spec``, ``.shape``, ``.dtype``, ``.stored()``); the three functions
    are the container's: check the stored arrays, unpack (and range-check) the codes, restore
    floats. metadata: what a restored file's header gets back.
    """

    container: str
    entries: dict
    check_stored: Callable
    unpacked_codes: Callable
    restore: Callable
    metadata: Callable[[dict[str, str]], dict[str, str]]
    source_format: str = "safetensors"


def model_config_of(input: str, source: TensorSource) -> dict | None:
    """config.json beside the weights of ``source`` (a model folder's), parsed; else None."""
    if input == "-":
        return None
    if isinstance(source, ShardedReader):
        folder = os.path.dirname(os.path.abspath(source.index_path))
    elif os.path.isdir(input):
        folder = input
    else:
        folder = os.path.dirname(os.path.abspath(source.label))
    if not has_config(folder):
        return None
    return load_config(os.path.join(folder, CONFIG))


def open_quantized(input: str, source: TensorSource, command: str) -> QuantizedCheckpoint:
    """The quantized checkpoint ``source`` holds: quant's format (its metadata says so) or
    compressed-tensors (config.json beside it says so); InputError otherwise. Every stored
    array's dtype and shape is checked against what its entry stores."""
    infos = {i.name: i for i in source.infos()}
    if not is_quantized(source.metadata):
        config = model_config_of(input, source)
        if config is not None and ct.is_compressed_tensors(config):
            label = source.label
            entries = ct.load_entries(config, infos, source.read, label)
            if not entries:
                raise InputError(
                    f"no quantized weight in {label}: config.json says compressed-tensors but "
                    "no tensor is named *.weight_packed or is an FP8 *.weight; quant reads "
                    "checkpoints whose weights are compressed"
                )
            return QuantizedCheckpoint(
                "compressed-tensors",
                entries,
                ct.check_stored,
                ct.unpacked_codes,
                ct.restore,
                lambda metadata: dict(metadata),
            )
    entries = quantized_entries(source, command)
    for entry in entries.values():
        check_stored(entry, infos, source.label)
    return QuantizedCheckpoint(
        "quant",
        entries,
        check_stored,
        unpacked_codes,
        restore,
        source_metadata,
        source_format(source.metadata),
    )


def quantized_entries(source: TensorSource, command: str):
    """The quantized entries of ``source``; InputError when it is not a quantized file."""
    if not is_quantized(source.metadata):
        raise InputError(
            f"not a quantized file in {source.label}: it has no quant.format metadata and no "
            f"compressed-tensors config.json; quant {command} reads files written by quant "
            "compress and compressed-tensors model folders"
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
