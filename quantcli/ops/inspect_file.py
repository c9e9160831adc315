"""inspect: what a weight file holds, from its header (and, for a quantized file, its codes).

For a quantized file, each logical tensor is listed once with its spec, its original dtype
and shape, and the bytes it takes (codes plus scales plus zero points); the stored arrays are
checked against the metadata first, and the codes against the spec's range. The metadata the
input had (``quant.source_metadata``, restored by decompress) is given apart. Tensors are listed
in natural name order (``layers.2`` before ``layers.10``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from quantcli.core.spec import QuantSpec
from quantcli.io.detect import open_input
from quantcli.io.quantized_format import (
    KEY_SOURCE_METADATA,
    KEY_TENSORS,
    check_stored,
    is_quantized,
    source_metadata,
    unpacked_codes,
)
from quantcli.ops.sources import describe, quantized_entries
from quantcli.select import natural_key


@dataclass
class InspectedTensor:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    bytes: int
    spec: QuantSpec | None = None


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

    @property
    def total_bytes(self) -> int:
        return sum(t.bytes for t in self.tensors)


def inspect_file(input: str) -> InspectResult:
    with open_input(input) as source:
        quantized = is_quantized(source.metadata)
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
        entries = quantized_entries(source, "inspect")
        by_name = {i.name: i for i in infos}
        auxiliary = set()
        for entry in entries.values():
            check_stored(entry, by_name, source.label)
            # codes outside the spec's range: refused here as decompress refuses them
            unpacked_codes(entry, source.read(entry.name), source.label)
            auxiliary.update(name for name, _, _ in entry.stored() if name != entry.name)
        for info in infos:
            entry = entries.get(info.name)
            if entry is not None:
                stored = sum(by_name[n].nbytes for n, _, _ in entry.stored())
                result.tensors.append(
                    InspectedTensor(info.name, entry.dtype, entry.shape, stored, entry.spec)
                )
            elif info.name not in auxiliary:
                result.tensors.append(
                    InspectedTensor(info.name, info.dtype, info.shape, info.nbytes)
                )
        result.tensors.sort(key=lambda t: natural_key(t.name))
        return result
