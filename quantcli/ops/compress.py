"""compress: quantize the chosen tensors of a weight file and write the quantized format.

Tensors are read, quantized and written one at a time: the output header is computed from
shapes and specs before any data is read, then each tensor's arrays are streamed to disk, so
peak memory follows the largest tensor, not the file. A sharded input gives a sharded output
folder, written shard by shard, with its index written last.

A model folder (config.json beside the weights) gives a model folder: by default in the
compressed-tensors format that transformers and vLLM load (only Linear weights quantized,
embeddings and the output head kept), or with ``format="quant"`` in quant's own format; the
folder's other files are carried over (``quantcli.io.model_folder``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from quantcli.core.quantizer import is_float_dtype, tensor_scale_of
from quantcli.core.spec import QuantSpec
from quantcli.errors import InputError, UsageError
from quantcli.io import compressed_tensors as ct
from quantcli.io.detect import open_input
from quantcli.io.model_folder import ModelFolder, write_model_folder
from quantcli.io.numpy_files import NpyReader
from quantcli.io.quantized_format import (
    FORMAT_NAME,
    QuantizedEntry,
    format_version,
    header_metadata,
)
from quantcli.io.safetensors_writer import SafetensorsWriter
from quantcli.io.sharded import ShardedReader
from quantcli.io.source import TensorInfo, TensorSource
from quantcli.ops.fingerprint import fingerprint
from quantcli.ops.outputs import (
    input_paths,
    is_stdio,
    output_path,
    strip_suffixes,
    write_file,
    write_sharded,
)
from quantcli.ops.plan import Budget, Plan, PlanResult, measure
from quantcli.ops.sources import file_metadata, format_of, model_folder_of
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
    format: str = "quant"
    tensors: list[TensorResult] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    carried: list[str] = field(default_factory=list)  # a model folder's other entries
    skipped: list[str] = field(default_factory=list)  # and those left out (float weights)

    @property
    def totals(self) -> Totals:
        return Totals(self.tensors)


FORMAT_CHOICES = ("compressed-tensors", "quant")


def default_output(input: str, selector: Selector | Plan, sharded: bool) -> str:
    """``dir/model.safetensors`` -> ``dir/model.absmax-int8.safetensors``; a sharded
    checkpoint folder or a model folder ``ckpt`` -> the folder ``ckpt.absmax-int8`` beside it.
    A plan that assigns specs tensor by tensor (a budget, a plan file) names it ``mix``."""
    if is_stdio(input):
        return "-"
    spec = selector.spec
    tag = f"{spec.scheme}-{'int' if spec.signed else 'uint'}{spec.bits}"
    if Plan.of(selector).assigned:
        tag = "mix"
    path = Path(input)
    if sharded:
        # resolved: "." or an index in the current folder has no name to derive one from
        folder = (path if path.is_dir() else path.parent).resolve()
        return str(folder.with_name(f"{folder.name}.{tag}"))
    if path.is_dir():  # a folder holding one weight file (".", "..")
        path = path.resolve()
    return str(path.with_name(f"{strip_suffixes(path)}.{tag}.safetensors"))


def _output_kind(
    input: str, source: TensorSource, format: str | None
) -> tuple[ModelFolder | None, str, _CTContainer | None]:
    """The model folder of ``input`` (or None), the output format, and its container."""
    if format is not None and format not in FORMAT_CHOICES:
        raise UsageError(
            f"unknown format {format!r} in --format: choose one of {', '.join(FORMAT_CHOICES)}"
        )
    folder = model_folder_of(input, source)
    if format is None:
        format = "compressed-tensors" if folder is not None else "quant"
    if format == "compressed-tensors" and folder is None:
        raise UsageError(
            f"no model folder in {input}: --format compressed-tensors writes a model folder "
            "and needs one as input (config.json beside the weights); pass the model's "
            "folder, or use --format quant"
        )
    if folder is not None:
        _check_not_quantized(folder)
    container = _CTContainer(folder.config) if format == "compressed-tensors" else None
    return folder, format, container


def plan_compress(
    input: str,
    plan: Plan,
    budget: Budget | None = None,
    format: str | None = None,
    nonfinite: str = "error",
    progress: ProgressFn | None = None,
) -> PlanResult:
    """Measure ``plan`` on ``input`` as compress would write it (same format, same container)
    and, with a budget, allocate it; writes nothing (``quantcli.ops.plan.measure``)."""
    with open_input(input) as source:
        _, _, container = _output_kind(input, source, format)
        single = isinstance(source, NpyReader)
        if single:
            _check_single(source.infos()[0], source.label)
        return measure(source, plan, budget, container, nonfinite, progress, single)


def compress(
    input: str,
    output: str | None,
    selector: Selector | Plan,
    nonfinite: str = "error",
    force: bool = False,
    progress: ProgressFn | None = None,
    format: str | None = None,
) -> CompressResult:
    """Quantize ``input`` into ``output`` (a path, ``-`` for stdout, None for the default).

    selector: which tensors, with which spec: a Selector (one spec for all), or a Plan
    (rules, or a spec per tensor: ``quantcli.ops.plan``).
    format: ``compressed-tensors`` (a model folder that transformers and vLLM load),
    ``quant`` (quant's own format), or None: compressed-tensors for a model folder (a folder
    holding config.json), quant otherwise.
    """
    plan = Plan.of(selector)
    with open_input(input) as source:
        folder, format, container = _output_kind(input, source, format)
        sharded = isinstance(source, ShardedReader)
        to_folder = output is not None and output.endswith(("/", os.sep))
        output = output_path(
            output,
            default_output(input, plan, sharded or folder is not None),
            {".safetensors": "quant's format", ".gguf": "GGUF for llama.cpp, with --type"},
            sharded or folder is not None,
            "quant compress",
            input_paths(input, source),
        )
        if output.lower().endswith(".gguf"):
            raise UsageError(
                f"GGUF output in -o {output} from {source.label}: GGUF is written from a GGUF "
                "input with a ggml type (quant compress model-f16.gguf -o out.gguf --type "
                "Q4_K_M); use a .safetensors output here"
            )
        result = CompressResult(input=source.label, output=output, format=format)
        plan.selector.check_patterns([i.name for i in source.infos()], source.label)
        if folder is not None:
            result.carried, result.skipped = list(folder.carried), list(folder.skipped)
        plans = _plan(source, plan, nonfinite, container)
        if container is not None:
            container.share_tensor_scales(source, plans)
        total = sum(info.size for info in source.infos())

        def shard_writer(shard: _ShardPlan):
            def write(f):
                return _write_shard(source, shard, f, result, progress, total)

            return write

        inputs = input_paths(input, source)
        if folder is not None:
            if is_stdio(output):
                raise UsageError(
                    f"model folder to stdout in {input}: a model folder is written as a "
                    "folder; pass -o FOLDER"
                )
            index = None
            if sharded:
                if format == "compressed-tensors":
                    index_meta = dict(source.metadata)
                else:
                    entries = [e for p in plans for e in p.entries]
                    index_meta = {
                        **source.metadata,
                        **header_metadata(entries, source.metadata, "safetensors"),
                    }
                index = (Path(source.index_path).name, index_meta)
            config = dict(folder.config)
            if format == "compressed-tensors":
                config["quantization_config"] = plans[0].container.config(plans)
            else:
                config["quantization_config"] = {
                    "quant_method": FORMAT_NAME,
                    "format_version": format_version([e for p in plans for e in p.entries]),
                }
            result.files = write_model_folder(
                Path(output),
                folder,
                config,
                [(p.file, shard_writer(p)) for p in plans],
                index,
                force,
            )
        elif sharded:
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
            result.files = write_file(
                output, inputs, force, shard_writer(plans[0]), make_folder=to_folder
            )
    return result


def _check_not_quantized(folder: ModelFolder) -> None:
    qc = folder.config.get("quantization_config")
    if qc is not None:
        method = qc.get("quant_method") if isinstance(qc, dict) else None
        raise InputError(
            f"already quantized in {folder.label}: config.json has a quantization_config "
            f"(quant_method {method!r}); compress the original float model, or restore this "
            "one first with quant decompress"
        )


class _CTContainer:
    """What compress does differently for compressed-tensors: which tensors (Linear weights,
    not embeddings or the output head), the spec checks, the stored layout, config.json."""

    def __init__(self, config: dict) -> None:
        self.model_config = config
        self.tensor_scales: dict[str, np.ndarray] = {}  # shared by fused NVFP4 layers
        vocab = config.get("vocab_size")
        text = config.get("text_config")
        if vocab is None and isinstance(text, dict):
            vocab = text.get("vocab_size")
        self.vocab = vocab if isinstance(vocab, int) and not isinstance(vocab, bool) else None
        model_type = config.get("model_type")
        self.model_type = model_type if isinstance(model_type, str) else ""
        # the base model prefixes a checkpoint may carry or lose between a task head and
        # its base model (LlamaForCausalLM's "model.", BertForMaskedLM's "bert.")
        self.prefixes = tuple(
            {"model", "transformer", self.model_type.replace("-", "_"), *_BASE_PREFIXES}
        )

    def choose(self, info: TensorInfo, sel: Selection) -> Selection:
        """The decision for one tensor that the selector would quantize."""
        name, shape = info.name, tuple(info.shape)
        if self.model_type in _CONV1D_MODELS:
            raise UsageError(
                f"{self.model_type} model in {name}: its layers are Conv1D with transposed "
                "[in, out] weights, which compressed-tensors does not quantize; use --format quant"
            )
        if len(shape) != 2:
            return Selection(name, None, f"kept: {len(shape)}-D, not a Linear weight")
        if not name.endswith(".weight"):
            return Selection(name, None, "kept: not a Linear weight")
        module = name[: -len(".weight")]
        last = module.rsplit(".", 1)[-1]
        if "embed" in last or last in _EMBEDDINGS:
            return Selection(name, None, "kept: embedding")
        # an output head: named so, or vocabulary-sized outside the stack of numbered layers
        # (BertForMaskedLM's cls.predictions.decoder, GPT-NeoX's embed_out)
        in_stack = any(part.isdigit() for part in module.split("."))
        if last in _HEADS or (not in_stack and self.vocab is not None and shape[0] == self.vocab):
            return Selection(name, None, "kept: output head")
        spec = ct.export_spec(sel.spec.for_tensor(shape, name), info.dtype, name, shape)
        return Selection(name, spec)

    def share_tensor_scales(self, source: TensorSource, plans: list[_ShardPlan]) -> None:
        """Give the NVFP4 weights vLLM fuses into one layer (q/k/v, gate/up) one global scale,
        the smallest of theirs, as llm-compressor does: vLLM applies one per fused layer.
        Costs one more read of those weights."""
        specs = {
            s.name: s.spec
            for plan in plans
            for s in plan.selections
            if s.quantized and s.spec.format.tensor_scale
        }
        for group in ct.fused_groups(list(specs)):
            scales = [tensor_scale_of(source.read(n), specs[n], n) for n in group]
            shared = min(scales, key=lambda g: float(g[0]))
            self.tensor_scales.update(dict.fromkeys(group, shared))

    def stored(self, name: str, spec: QuantSpec, shape: tuple[int, ...]):
        return ct.stored_layout(name, spec, shape)

    def convert(self, res: TensorResult) -> None:
        """Replace quant's stored arrays of ``res`` by compressed-tensors ones."""
        res.stored = ct.stored_arrays(res.name, res.selection.spec, res.shape, res.stored)
        res.bytes_out = sum(int(a.nbytes) for _, a in res.stored)

    def config(self, plans: list[_ShardPlan]) -> dict:
        """config.json's quantization_config for every quantized Linear of ``plans``."""
        groups: dict[QuantSpec, list[str]] = {}
        ignore = []
        for plan in plans:
            for info, sel in zip(plan.infos, plan.selections):
                if not info.name.endswith(".weight") or len(info.shape) != 2:
                    continue
                module = info.name[: -len(".weight")]
                if sel.quantized:
                    # the scale dtype is not part of the arguments: one group per spec rest
                    key = replace(sel.spec, scale_dtype=None, calibration="minmax")
                    groups.setdefault(key, []).append(module)
                else:
                    ignore.append(module)
        return ct.quantization_config(list(groups.items()), ignore, self.prefixes)


_HEADS = ("lm_head", "embed_out")
_EMBEDDINGS = ("wte", "wpe", "shared", "tok_embeddings")
_BASE_PREFIXES = ("bert", "roberta", "deberta", "distilbert", "electra", "albert")
_CONV1D_MODELS = ("gpt2", "openai-gpt", "imagegpt", "decision_transformer")


@dataclass
class _ShardPlan:
    file: str
    infos: list[TensorInfo]
    selections: list[Selection]
    entries: list[QuantizedEntry]
    metadata: dict[str, str]
    container: _CTContainer | None = None

    def layout(self) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
        """(name, dtype, shape) of every array the shard stores, in write order."""
        by_name = {e.name: e for e in self.entries}
        out = []
        for info in self.infos:
            entry = by_name.get(info.name)
            if entry is None:
                out.append((info.name, info.dtype, info.shape))
            elif self.container is not None:
                out.extend(self.container.stored(entry.name, entry.spec, entry.shape))
            else:
                out.extend(entry.stored())
        return out


def _check_single(info: TensorInfo, label: str) -> None:
    if not is_float_dtype(info.dtype):
        # the one array the user named cannot be quantized: say so, not "0 quantized"
        raise InputError(
            f"unsupported dtype {info.dtype} in tensor {info.name} of {label}: "
            "only float tensors (float64, float32, float16, bfloat16, float8) can be "
            "quantized; convert the array to float32 first"
        )


def _plan(
    source: TensorSource, plan: Plan, nonfinite: str, container: _CTContainer | None = None
) -> list[_ShardPlan]:
    """Decide every tensor before anything is written (the header needs every spec)."""
    single = isinstance(source, NpyReader)
    groups = []
    decisions = []
    for file, infos in source.groups():
        selections = []
        for info in infos:
            sel = plan.choose(info.name, info.dtype, info.shape, single)
            if single:
                _check_single(info, source.label)
            if sel.quantized and container is not None:
                sel = container.choose(info, sel)
            selections.append(sel)
            decisions.append((info, sel))
        groups.append((file, infos, selections))
    plan.check(decisions, source.label, single)  # rules that decide nothing, before reading
    plans = []
    for file, infos, selections in groups:
        for n, (info, sel) in enumerate(zip(infos, selections)):
            if sel.quantized:
                sel = Selection(info.name, sel.spec.for_tensor(info.shape, info.name))
                if nonfinite == "keep":
                    bad = count_nonfinite(source.read(info.name))
                    if bad:
                        sel = Selection(info.name, None, f"kept: {bad} non-finite values")
                selections[n] = sel
        entries = [
            QuantizedEntry(
                i.name, s.spec, tuple(i.shape), np.dtype(i.dtype), fingerprint(source.read(i.name))
            )
            for i, s in zip(infos, selections)
            if s.quantized
        ]
        if container is not None:
            # a compressed-tensors file keeps its own metadata ({"format": "pt"}): the
            # quantization is described in config.json
            metadata = file_metadata(source, file)
        else:
            # each file records its own metadata (a shard's, not its index's) for decompress
            metadata = header_metadata(entries, file_metadata(source, file), format_of(source))
        shard = _ShardPlan(file, infos, selections, entries, metadata, container)
        _check_names(shard, source.label)
        plans.append(shard)
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
        shared = plan.container.tensor_scales.get(info.name) if plan.container else None
        res = process(info.name, source.read(info.name), selection, tensor_scale=shared)
        if plan.container is not None and res.quantized:
            plan.container.convert(res)
        for name, array in res.stored:
            writer.write(name, array)
            written.append((name, int(array.nbytes)))
        res.release()
        result.tensors.append(res)
        if progress:
            progress(info.name, res.elements, total)
    writer.close()
    return written
