"""formats: every number format quant writes, with its bits per weight and where it loads.

Three kinds, as ``quant formats`` lists them: quant's schemes (``quantcli.core.schemes``, at
their default bits, per group of their default size, with their default scale storage),
ggml block types (``quantcli.core.ggml``) and llama-quantize's mixes
(``quantcli.core.ggml.mixes``). A mix's bits per weight depend on the model: they are
computed exactly, from the types llama.cpp's rules give each tensor, on the tensor shapes of
Llama-3-8B (the model llama-quantize's own list quotes sizes for).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from quantcli.core.ggml import GGML_TYPES
from quantcli.core.ggml.mixes import MIXES, Mix, ModelFacts, TensorFacts, plan_types
from quantcli.core.scales import SCALE_KINDS
from quantcli.core.schemes import SCHEMES
from quantcli.io.ggml_types import ggml_type


@dataclass(frozen=True)
class FormatEntry:
    """One row of ``quant formats``. block: elements sharing a scale (a group or a ggml
    block), None for a mix; loads: what reads the result."""

    kind: str  # "scheme", "ggml type" or "mix"
    name: str
    bits_per_weight: float
    block: int | None
    summary: str
    loads: str
    file_type: int | None = None  # llama.cpp's LLAMA_FTYPE (mixes)

    def as_dict(self) -> dict:
        return asdict(self)


def llama3_8b_layout() -> tuple[list[TensorFacts], ModelFacts]:
    """The tensors of Llama-3-8B's F16 GGUF (names and NumPy shapes) and its model facts."""
    dim, ffn, kv, vocab, layers = 4096, 14336, 1024, 128256, 32
    tensors = [TensorFacts("token_embd.weight", (vocab, dim), "F16")]
    for i in range(layers):
        p = f"blk.{i}."
        tensors += [
            TensorFacts(p + "attn_norm.weight", (dim,), "F32"),
            TensorFacts(p + "attn_q.weight", (dim, dim), "F16"),
            TensorFacts(p + "attn_k.weight", (kv, dim), "F16"),
            TensorFacts(p + "attn_v.weight", (kv, dim), "F16"),
            TensorFacts(p + "attn_output.weight", (dim, dim), "F16"),
            TensorFacts(p + "ffn_norm.weight", (dim,), "F32"),
            TensorFacts(p + "ffn_gate.weight", (ffn, dim), "F16"),
            TensorFacts(p + "ffn_up.weight", (ffn, dim), "F16"),
            TensorFacts(p + "ffn_down.weight", (dim, ffn), "F16"),
        ]
    tensors += [
        TensorFacts("output_norm.weight", (dim,), "F32"),
        TensorFacts("output.weight", (vocab, dim), "F16"),
    ]
    return tensors, ModelFacts("llama", layers, 32, 8, 0)


def mix_bits_per_weight(mix: Mix, tensors: list[TensorFacts], facts: ModelFacts) -> float:
    """Bits per weight of the whole file (kept tensors included) that ``mix`` makes."""
    total_bits = elements = 0
    for t, choice in zip(tensors, plan_types(tensors, facts, mix)):
        n = 1
        for d in t.shape:
            n *= d
        kind = ggml_type(choice.type)
        total_bits += 8 * kind.nbytes(t.shape)
        elements += n
    return total_bits / elements


def _scheme_entry(name: str) -> FormatEntry:
    from quantcli.io import compressed_tensors as ct

    s = SCHEMES[name]
    bits = s.default_bits
    group = s.default_group_size if "group" in s.granularities else None
    bpw = float(bits)
    if group:
        bpw += SCALE_KINDS[s.default_scale_dtype].bits / group
        if s.has_zero_point:
            bpw += 8 / group
    loads = "quant" + (", transformers, vLLM" if name in ct.FORMATS else "")
    summary = f"{s.summary}; {bits}-bit, {s.default_scale_dtype} scales"
    return FormatEntry("scheme", name, bpw, group, summary, loads)


def list_formats() -> list[FormatEntry]:
    """Every scheme, ggml type and mix, in that order."""
    entries = [_scheme_entry(name) for name in SCHEMES]
    for t in GGML_TYPES.values():
        summary = f"ggml block of {t.block_size}, {t.block_bytes} bytes"
        entries.append(
            FormatEntry("ggml type", t.name, t.bits_per_weight, t.block_size, summary, "llama.cpp")
        )
    tensors, facts = llama3_8b_layout()
    for mix in MIXES.values():
        entries.append(
            FormatEntry(
                "mix",
                mix.name,
                mix_bits_per_weight(mix, tensors, facts),
                None,
                mix.summary,
                "llama.cpp",
                mix.ftype,
            )
        )
    return entries
