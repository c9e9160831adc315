"""inspect: what a weight file holds, from its header (and, for a quantized file, its codes).

For a quantized file, each logical tensor is listed once with its spec, its original dtype
and shape, and the bytes it takes (codes plus scales plus zero points); the stored arrays are
checked against the metadata first, and the codes against the spec's range. A
compressed-tensors model folder (config.json with its quantization_config beside the
weights) is listed the same way, one row per quantized Linear weight. A GGUF file lists each
tensor with its ggml type (F16, Q4_K, ...), NumPy shape, stored bytes and bits per weight.
The metadata the input had (``quant.source_metadata``, restored by decompress) is given
apart. Tensors are listed in natural name order (``layers.2`` before ``layers.10``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from quantcli.core.spec import QuantSpec
from quantcli.io import compressed_tensors as ct
from quantcli.io.detect import open_input
from quantcli.io.gguf_file import GGUFReader
from quantcli.io.quantized_format import (
    KEY_SOURCE_METADATA,
    KEY_TENSORS,
    is_quantized,
    source_metadata,
)
from quantcli.ops.sources import describe, model_config_of, open_quantized
from quantcli.select import natural_key


@dataclass
class InspectedTensor:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    bytes: int
    spec: QuantSpec | None = None
    ggml_type: str | None = None  # GGUF files: the tensor's ggml type

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.bytes / self.elements if self.elements else 0.0


@dataclass
class InspectResult:
    """metadata: the file's own (for a quantized file the ``quant.*`` keys, less the bulky
    ``quant.tensors``, which the tensors show); source_metadata: for a quantized file, the
    metadata of the file it was made from, else None."""

    file: str
    format: str
    quantized: bool
    metadata: dict[str, str]
    tensors: list[InspectedTensor] = field(default_factory=list)
    source_metadata: dict[str, str] | None = None
    ggml: bool = False  # a GGUF file: tensors carry their ggml type

    @property
    def total_bytes(self) -> int:
        return sum(t.bytes for t in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        """Bits per weight over every tensor of the file, as llama.cpp's BPW."""
        n = sum(t.elements for t in self.tensors)
        return 8.0 * self.total_bytes / n if n else 0.0


def inspect_file(input: str) -> InspectResult:
    with open_input(input) as source:
        if isinstance(source, GGUFReader):
            return _inspect_gguf(source)
        quantized = is_quantized(source.metadata)
        if not quantized:
            config = model_config_of(input, source)
            quantized = config is not None and ct.is_compressed_tensors(config)
        infos = source.infos()
        # the bulky JSON keys are shown as tensor rows, not as metadata
        metadata = {
            k: v for k, v in source.metadata.items() if k not in (KEY_TENSORS, KEY_SOURCE_METADATA)
        }
        result = InspectResult(source.label, describe(source), quantized, metadata)
        if not quantized:
            result.tensors = [InspectedTensor(i.name, i.dtype, i.shape, i.nbytes) for i in infos]
            result.tensors.sort(key=lambda t: natural_key(t.name))
            return result
        result.source_metadata = source_metadata(source.metadata)
        checkpoint = open_quantized(input, source, "inspect")
        if checkpoint.container != "quant":
            result.format += f", {checkpoint.container}"
        by_name = {i.name: i for i in infos}
        owner = {}
        for entry in checkpoint.entries.values():
            stored = entry.stored()
            # codes outside the spec's range: refused here as decompress refuses them
            checkpoint.unpacked_codes(entry, source.read(stored[0][0]), source.label)
            owner.update((name, entry) for name, _, _ in stored)
        done = set()
        for info in infos:
            entry = owner.get(info.name)
            if entry is None:
                result.tensors.append(
                    InspectedTensor(info.name, info.dtype, info.shape, info.nbytes)
                )
            elif entry.name not in done:
                done.add(entry.name)
                stored = sum(by_name[n].nbytes for n, _, _ in entry.stored())
                result.tensors.append(
                    InspectedTensor(entry.name, entry.dtype, entry.shape, stored, entry.spec)
                )
        result.tensors.sort(key=lambda t: natural_key(t.name))
        return result


def _inspect_gguf(source: GGUFReader) -> InspectResult:
    tensors = source.tensors()
    quantized = any(t.ggml_type.quantized for t in tensors)
    result = InspectResult(source.label, "gguf", quantized, dict(source.metadata), ggml=True)
    for t in tensors:
        kind = t.ggml_type
        # a quantized tensor reads as float32 once decoded (quant decompress)
        dtype = np.dtype(np.float32) if kind.quantized else kind.dtype
        result.tensors.append(InspectedTensor(t.name, dtype, t.shape, t.nbytes, None, kind.name))
    result.tensors.sort(key=lambda t: natural_key(t.name))
    return result
