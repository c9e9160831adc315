"""compress to GGUF: an F16/F32 GGUF re-typed with ggml block types, as llama-quantize does.

Every metadata key, the tensor order and the alignment are carried over;
``general.quantization_version`` (2) and ``general.file_type`` (llama.cpp's LLAMA_FTYPE of
the mix) are set. The tensors llama-quantize quantizes get the type the mix gives them
(``quantcli.core.ggml.mixes``), the others are copied byte for byte. Each re-typed tensor is
decoded again and measured against its input, so the report gives every tensor's real error.

Tensors stream one at a time: the header is computed from the plan, then each tensor is read
(memory-mapped), encoded in row chunks that stay in cache, measured and written.

``search``: "none" writes the bytes of llama.cpp's reference quantizers; "mse" the
least-squares encoders of ``quantcli.core.ggml.search`` (same types, same layouts, no block
with more squared error than the reference's). A type without one (MXFP4) is written by the
reference either way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

import ml_dtypes
import numpy as np

from quantcli.core.ggml import GGML_TYPES
from quantcli.core.ggml.mixes import (
    QUANTIZATION_VERSION,
    Mix,
    ModelFacts,
    TensorChoice,
    TensorFacts,
    plan_types,
)
from quantcli.core.metrics import ErrorStats
from quantcli.errors import InputError
from quantcli.io.detect import open_input
from quantcli.io.gguf_file import GGUFReader, GGUFValue, GGUFValueType, field_values
from quantcli.io.gguf_writer import GGUFWriter
from quantcli.io.source import TensorSource
from quantcli.ops.gguf_plan import (
    TypeBudget,
    TypePlan,
    TypeRule,
    measure_types,
    rule_types,
    type_bytes,
)
from quantcli.ops.outputs import input_paths, is_stdio, write_file

FILE_TYPE_KEY = "general.file_type"
QUANTIZATION_VERSION_KEY = "general.quantization_version"
# float32 elements a chunk of rows holds while it is encoded, decoded and measured
CHUNK_ELEMENTS = 1 << 20
_FLOAT_TYPES = {
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
}

ProgressFn = Callable[[str, int, int], None]


@dataclass
class GGUFTensorResult:
    """One tensor of a GGUF output: its choice (type, fallback, reason kept), sizes and error
    (stats None for a tensor copied as it was)."""

    choice: TensorChoice
    shape: tuple[int, ...]
    bytes_in: int
    bytes_out: int
    stats: ErrorStats | None = None

    @property
    def name(self) -> str:
        return self.choice.name

    @property
    def retyped(self) -> bool:
        return self.choice.retyped

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.bytes_out / self.elements if self.elements else 0.0


@dataclass
class GGUFCompressResult:
    input: str
    output: str
    mix: Mix
    tensors: list[GGUFTensorResult] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    format: str = "gguf"
    plan: TypePlan | None = None  # the budget's allocation, when one chose the types
    search: str = "none"

    @property
    def retyped(self) -> list[GGUFTensorResult]:
        return [t for t in self.tensors if t.retyped]

    @property
    def fallbacks(self) -> list[GGUFTensorResult]:
        return [t for t in self.tensors if t.choice.fallback]

    @property
    def bytes_in(self) -> int:
        return sum(t.bytes_in for t in self.tensors)

    @property
    def bytes_out(self) -> int:
        return sum(t.bytes_out for t in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        """Bits per weight of the re-typed tensors, as stored (fallbacks included)."""
        q = self.retyped
        n = sum(t.elements for t in q)
        return 8.0 * sum(t.bytes_out for t in q) / n if n else 0.0

    @property
    def file_bits_per_weight(self) -> float:
        """Bits per weight over every tensor, as llama-quantize's "quant size ... BPW"."""
        n = sum(t.elements for t in self.tensors)
        return 8.0 * self.bytes_out / n if n else 0.0

    @property
    def stats(self) -> ErrorStats:
        """The error over every re-typed tensor together (measured ones: a plan made without
        writing has measured only the tensors its budget decided)."""
        total = ErrorStats()
        for t in self.retyped:
            if t.stats is not None:
                total = total.merge(t.stats)
        return total


# --search values GGUF outputs take: llama.cpp's reference bytes ("none"), least-squares
# blocks ("mse"), or the command line's default "auto", which is "none" here: the ggml
# searches run at 1-8 M weights/s, below the 15 M/s the default search must keep up
# (docs/SEARCH.md), and "none" is what llama-quantize writes
GGUF_SEARCHES = ("auto", "none", "mse")


def ggml_search(search: str) -> str:
    """The search ggml types are encoded with when ``--search search`` is given."""
    return "none" if search == "auto" else search


def search_for(type_name: str, search: str) -> str:
    """The search ``type_name`` is encoded with when ``search`` is asked: "none" for a
    float type or a block type without that search."""
    codec = GGML_TYPES.get(type_name)
    return search if codec is not None and search in codec.searches else "none"


def encode_tensor(
    x: np.ndarray, type_name: str, name: str, search: str = "none"
) -> tuple[np.ndarray, ErrorStats]:
    """Store float tensor ``x`` (..., n) as ggml type ``type_name`` and measure the error of
    what a reader decodes from it: (stored array, ErrorStats). The stored array is uint8
    (..., bytes per row) for a block type, the float array itself for F32/F16/BF16.
    ``search``: "none" (llama.cpp's reference bytes) or "mse" (``search_for``)."""
    plain = _FLOAT_TYPES.get(type_name)
    if plain is not None:
        stored = np.asarray(x).astype(plain)
        return stored, ErrorStats.of(x, stored)
    codec = GGML_TYPES[type_name]
    n = x.shape[-1]
    codec.check_row_size(n, name)
    rows = x.reshape(-1, n)
    out = np.empty((rows.shape[0], codec.row_bytes(n)), np.uint8)
    stats = ErrorStats()
    step = max(1, CHUNK_ELEMENTS // n)
    for start in range(0, rows.shape[0], step):
        part = rows[start : start + step]
        if part.dtype != np.float32:  # once, for the encoder and the statistics
            part = part.astype(np.float32)
        raw = codec.encode(part, name, search_for(type_name, search))
        out[start : start + step] = raw
        stats = stats.merge(ErrorStats.of(part, codec.decode(raw, n, name)))
    return out.reshape(x.shape[:-1] + (codec.row_bytes(n),)), stats


def tensor_facts(source: TensorSource) -> list[TensorFacts]:
    """The name, shape and ggml type of every tensor of ``source`` (a GGUF file, or any
    source, whose float dtypes are named as ggml types)."""
    if isinstance(source, GGUFReader):
        return [TensorFacts(t.name, t.shape, t.ggml_type.name) for t in source.tensors()]
    from quantcli.io.ggml_types import ggml_type_of_dtype

    out = []
    for info in source.infos():
        kind = ggml_type_of_dtype(info.dtype)
        out.append(TensorFacts(info.name, info.shape, kind.name if kind else str(info.dtype)))
    return out


def model_facts(source: TensorSource) -> ModelFacts:
    if isinstance(source, GGUFReader):
        return ModelFacts.of(field_values(source.fields))
    return ModelFacts()


def excluded(facts: list[TensorFacts], patterns: tuple[str, ...]) -> list[str]:
    return [t.name for t in facts if any(fnmatchcase(t.name, p) for p in patterns)]


def check_retypable(choice: TensorChoice, label: str) -> None:
    """A tensor to re-type must be F32, F16 or BF16 (llama-quantize refuses the others)."""
    if choice.source_type in _FLOAT_TYPES:
        return
    if choice.source_type not in ("F64", "I8", "I16", "I32", "I64"):
        raise InputError(
            f"already quantized tensor in {label} (tensor {choice.name!r}): it is "
            f"{choice.source_type} and would become {choice.type}; quant quantizes F32, F16 "
            "and BF16 weights, as llama-quantize does without --allow-requantize; use the "
            "model's F16 GGUF (llama.cpp's convert_hf_to_gguf.py --outtype f16 makes one)"
        )
    raise InputError(
        f"{choice.source_type} tensor in {label} (tensor {choice.name!r}): only F32, F16 and "
        f"BF16 tensors can become {choice.type}; keep it with --exclude '{choice.name}'"
    )


def default_output(input: str, mix: Mix) -> str:
    """``dir/model-f16.gguf`` -> ``dir/model-f16.Q4_K_M.gguf``; stdin -> stdout."""
    if is_stdio(input):
        return "-"
    path = Path(input)
    if path.is_dir():
        path = path.resolve()
    stem = path.name[: -len(".gguf")] if path.name.endswith(".gguf") else path.stem
    return str(path.with_name(f"{stem}.{mix.name}.gguf"))


def choose_types(
    source: TensorSource,
    mix: Mix,
    fallback: bool = True,
    exclude: tuple[str, ...] = (),
    rules: Sequence[TypeRule] = (),
    budget: TypeBudget | TypePlan | None = None,
    progress: ProgressFn | None = None,
    search: str = "none",
) -> tuple[list[TensorFacts], list[TensorChoice], TypePlan | None]:
    """Every tensor's type: the mix's, then the rules', then the budget's allocation
    (``quantcli.ops.gguf_plan``), which measures each candidate type on each tensor it
    decides (``progress`` follows that pass); or an allocation made before (a TypePlan)."""
    facts = tensor_facts(source)
    kept = excluded(facts, exclude)
    model = model_facts(source)
    assigned = rule_types(rules, plan_types(facts, model, mix, True, kept), source.label)
    plan = budget if isinstance(budget, TypePlan) else None
    if isinstance(budget, TypeBudget):
        # the mix's own type of a tensor the budget decides does not matter: no fallback
        # check here (the rules' types are checked below, with the rest)
        fixed = plan_types(facts, model, mix, True, kept, assigned)

        def encode(x: np.ndarray, kind: str, name: str):
            return encode_tensor(x, kind, name, search)  # as the file will be written

        plan = measure_types(source, facts, fixed, assigned, budget, encode, fallback, progress)
    if plan is not None:
        assigned = {**assigned, **plan.assigned()}
    choices = plan_types(facts, model, mix, fallback, kept, assigned)
    for choice in choices:
        if choice.retyped:
            check_retypable(choice, source.label)
    return facts, choices, plan


def _gguf_source(source: TensorSource) -> GGUFReader:
    if not isinstance(source, GGUFReader):
        raise InputError(
            f"not a GGUF file in {source.label}: a GGUF output is made from the model's "
            "F16 or F32 GGUF, which holds the architecture and tokenizer metadata llama.cpp "
            "needs; convert the model with llama.cpp's convert_hf_to_gguf.py --outtype f16, "
            "then run quant compress on that file"
        )
    return source


def plan_gguf(
    input: str,
    mix: Mix,
    fallback: bool = True,
    exclude: tuple[str, ...] = (),
    rules: Sequence[TypeRule] = (),
    budget: TypeBudget | None = None,
    progress: ProgressFn | None = None,
    search: str = "none",
) -> GGUFCompressResult:
    """What ``compress_gguf`` would write, without writing (``--dry-run``): each tensor's
    type and stored bytes; the errors of the tensors a budget measured (others: None)."""
    with open_input(input) as source:
        source = _gguf_source(source)
        facts, choices, plan = choose_types(
            source, mix, fallback, exclude, rules, budget, progress, search
        )
        result = GGUFCompressResult(source.label, "", mix, plan=plan, search=search)
        measured = {t.name: t.choice.stats for t in plan.tensors} if plan else {}
        for choice, t in zip(choices, facts):
            nbytes = source.tensor(t.name).nbytes
            out = type_bytes(choice.type, t.shape, t.type, nbytes)
            stats = measured.get(t.name) if choice.retyped else None
            result.tensors.append(GGUFTensorResult(choice, t.shape, nbytes, out, stats))
    return result


def compress_gguf(
    input: str,
    output: str | None,
    mix: Mix,
    fallback: bool = True,
    exclude: tuple[str, ...] = (),
    force: bool = False,
    progress: ProgressFn | None = None,
    rules: Sequence[TypeRule] = (),
    budget: TypeBudget | TypePlan | None = None,
    search: str = "none",
) -> GGUFCompressResult:
    """Write ``input`` (an F16/F32 GGUF file) re-typed by ``mix`` (then ``rules``, then the
    allocation of ``budget``, or the one ``plan_gguf`` made) into ``output`` (a path, ``-``
    for stdout, None for the default beside the input), its blocks chosen by ``search``
    ("none": llama.cpp's reference encoder, or "mse")."""
    with open_input(input) as source:
        source = _gguf_source(source)
        facts, choices, type_plan = choose_types(
            source, mix, fallback, exclude, rules, budget, None, search
        )
        output = output or default_output(input, mix)
        result = GGUFCompressResult(source.label, output, mix, plan=type_plan, search=search)
        fields = dict(source.fields)
        fields[QUANTIZATION_VERSION_KEY] = GGUFValue(GGUFValueType.UINT32, QUANTIZATION_VERSION)
        fields[FILE_TYPE_KEY] = GGUFValue(GGUFValueType.UINT32, mix.ftype)
        plan = [(c.name, c.type, t.shape) for c, t in zip(choices, facts)]
        total = sum(int(np.prod(t.shape, dtype=np.int64)) for t in facts)

        def write(f) -> list[tuple[str, int]]:
            written = []
            with GGUFWriter(f, fields, plan, source.alignment) as writer:
                for choice, t in zip(choices, facts):
                    tensor = source.tensor(t.name)
                    if choice.retyped:
                        stored, stats = encode_tensor(
                            source.read(t.name), choice.type, t.name, search
                        )
                    else:
                        stored, stats = source.read_blocks(t.name).blocks, None
                    writer.write(t.name, stored)
                    res = GGUFTensorResult(
                        choice, t.shape, tensor.nbytes, int(stored.nbytes), stats
                    )
                    result.tensors.append(res)
                    written.append((t.name, res.bytes_out))
                    del stored
                    if progress:
                        progress(t.name, res.elements, total)
            return written

        result.files = write_file(output, input_paths(input, source), force, write)
    return result
