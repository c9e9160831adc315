"""compress: quantize the chosen tensors of a weight file and write the quantized format.

Tensors are read, quantized and written one at a time: the output header is computed from
shapes and specs before any data is read, then each tensor's arrays are streamed to disk, so
peak memory follows the largest tensor, not the file. A sharded input gives a sharded output
folder, written shard by shard, with its index written last.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from quantcli.core.quantizer import is_float_dtype
from quantcli.errors import InputError, UsageError
from quantcli.io.detect import open_input
from quantcli.io.numpy_files import NpyReader
from quantcli.io.quantized_format import QuantizedEntry, header_metadata
from quantcli.io.safetensors_writer import SafetensorsWriter
from quantcli.io.sharded import ShardedReader
from quantcli.io.source import TensorInfo, TensorSource
from quantcli.ops.fingerprint import fingerprint
from quantcli.ops.outputs import input_paths, is_stdio, strip_suffixes, write_file, write_sharded
from quantcli.ops.sources import file_metadata, format_of
from quantcli.ops.tensor import TensorResult, count_nonfinite, process
from quantcli.select import Selection, Selector

NONFINITE_CHOICES = ("error", "keep")

# called after each tensor: (tensor name, its elements, elements of the whole input)
ProgressFn = Callable[[str, int, int], None]


@dataclass
class Totals:
    """Sums over a list of tensor results."""

    tensors: list[TensorResult]

    @property
    def bytes_in(self) -> int:
        return sum(t.bytes_in for t in self.tensors)

    @property
    def bytes_out(self) -> int:
        return sum(t.bytes_out for t in self.tensors)

    @property
    def ratio(self) -> float:
        return self.bytes_in / self.bytes_out if self.bytes_out else 1.0

    @property
    def quantized(self) -> list[TensorResult]:
        return [t for t in self.tensors if t.quantized]

    @property
    def bits_per_weight(self) -> float:
        """Bits per quantized weight, codes plus scales plus zero points."""
        q = self.quantized
        n = sum(t.elements for t in q)
        return 8.0 * sum(t.bytes_out for t in q) / n if n else 0.0


@dataclass
class CompressResult:
    input: str
    output: str
    tensors: list[TensorResult] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @property
    def totals(self) -> Totals:
        return Totals(self.tensors)


def default_output(input: str, selector: Selector, sharded: bool) -> str:
    """``dir/model.safetensors`` -> ``dir/model.absmax-int8.safetensors``; a sharded
    checkpoint folder ``ckpt`` -> the folder ``ckpt.absmax-int8`` beside it."""
    if is_stdio(input):
        return "-"
    spec = selector.spec
    tag = f"{spec.scheme}-{'int' if spec.signed else 'uint'}{spec.bits}"
    path = Path(input)
    if sharded:
        # resolved: "." or an index in the current folder has no name to derive one from
        folder = (path if path.is_dir() else path.parent).resolve()
        return str(folder.with_name(f"{folder.name}.{tag}"))
    if path.is_dir():  # a folder holding one weight file (".", "..")
        path = path.resolve()
    return str(path.with_name(f"{strip_suffixes(path)}.{tag}.safetensors"))


def compress(
    input: str,
    output: str | None,
    selector: Selector,
    nonfinite: str = "error",
    force: bool = False,
    progress: ProgressFn | None = None,
) -> CompressResult:
    """Quantize ``input`` into ``output`` (a path, ``-`` for stdout, None for the default)."""
    with open_input(input) as source:
        sharded = isinstance(source, ShardedReader)
        output = output or default_output(input, selector, sharded)
        result = CompressResult(input=source.label, output=output)
        selector.check_patterns([i.name for i in source.infos()], source.label)
        plans = _plan(source, selector, nonfinite)
        total = sum(info.size for info in source.infos())

        def shard_writer(plan: _ShardPlan):
            def write(f):
                return _write_shard(source, plan, f, result, progress, total)

            return write

        inputs = input_paths(input, source)
        if sharded:
            if is_stdio(output):
                raise UsageError(
                    f"sharded checkpoint to stdout in {source.label}: a sharded output is a "
                    "folder; pass -o FOLDER"
                )
            entries = [e for p in plans for e in p.entries]
            index_meta = {
                **source.metadata,
                **header_metadata(entries, source.metadata, "safetensors"),
            }
            result.files = write_sharded(
                Path(output),
                Path(source.index_path).name,
                inputs,
                force,
                [(p.file, shard_writer(p)) for p in plans],
                index_meta,
            )
        else:
            result.files = write_file(output, inputs, force, shard_writer(plans[0]))
    return result


@dataclass
class _ShardPlan:
    file: str
    infos: list[TensorInfo]
    selections: list[Selection]
    entries: list[QuantizedEntry]
    metadata: dict[str, str]

    def layout(self) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
        """(name, dtype, shape) of every array the shard stores, in write order."""
        by_name = {e.name: e for e in self.entries}
        out = []
        for info in self.infos:
            entry = by_name.get(info.name)
            out.extend(entry.stored() if entry else [(info.name, info.dtype, info.shape)])
        return out


def _plan(source: TensorSource, selector: Selector, nonfinite: str) -> list[_ShardPlan]:
    """Decide every tensor before anything is written (the header needs every spec)."""
    single = isinstance(source, NpyReader)
    plans = []
    for file, infos in source.groups():
        selections = []
        for info in infos:
            sel = selector.choose(info.name, info.dtype, info.shape, single)
            if single and not is_float_dtype(info.dtype):
                # the one array the user named cannot be quantized: say so, not "0 quantized"
                raise InputError(
                    f"unsupported dtype {info.dtype} in tensor {info.name} of {source.label}: "
                    "only float tensors (float64, float32, float16, bfloat16, float8) can be "
                    "quantized; convert the array to float32 first"
                )
            if sel.quantized:
                sel = Selection(info.name, sel.spec.for_tensor(info.shape, info.name))
                if nonfinite == "keep":
                    bad = count_nonfinite(source.read(info.name))
                    if bad:
                        sel = Selection(info.name, None, f"kept: {bad} non-finite values")
            selections.append(sel)
        entries = [
            QuantizedEntry(
                i.name, s.spec, tuple(i.shape), np.dtype(i.dtype), fingerprint(source.read(i.name))
            )
            for i, s in zip(infos, selections)
            if s.quantized
        ]
        # each file records its own metadata (a shard's, not its index's) for decompress
        metadata = header_metadata(entries, file_metadata(source, file), format_of(source))
        plan = _ShardPlan(file, infos, selections, entries, metadata)
        _check_names(plan, source.label)
        plans.append(plan)
    return plans


def _check_names(plan: _ShardPlan, label: str) -> None:
    seen: set[str] = set()
    for name, _, _ in plan.layout():
        if name in seen:
            # the culprit is the tensor whose scales / zero points take the name
            culprit = next(
                (e.name for e in plan.entries if name in (n for n, _, _ in e.stored()[1:])),
                name,
            )
            raise UsageError(
                f"name clash in {label}: quantizing {culprit} produces {name!r}, which the "
                f"file already holds as a tensor; keep {culprit} with --exclude '{culprit}'"
            )
        seen.add(name)


def _write_shard(source, plan: _ShardPlan, f, result: CompressResult, progress, total: int):
    """Stream one shard: header first, then each tensor read, quantized and written in turn."""
    writer = SafetensorsWriter(f, plan.layout(), plan.metadata)
    written = []
    for info, selection in zip(plan.infos, plan.selections):
        res = process(info.name, source.read(info.name), selection)
        for name, array in res.stored:
            writer.write(name, array)
            written.append((name, int(array.nbytes)))
        res.release()
        result.tensors.append(res)
        if progress:
            progress(info.name, res.elements, total)
    writer.close()
    return written
