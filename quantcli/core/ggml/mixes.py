"""Which ggml type each tensor of a GGUF model gets: llama-quantize's mixes and fallbacks.

This is llama.cpp's per-tensor decision (src/llama-quant.cpp: ``tensor_allows_quantization``,
``llama_tensor_get_type_impl``, ``tensor_type_fallback``), restated for the mixes quant
writes, run without an importance matrix. It is pure: tensor names, shapes and types and a
few model facts in, one ``TensorChoice`` per tensor out; docs/GGUF.md writes the rules down.

    plan = plan_types(tensors, ModelFacts.of(fields), resolve_type("Q4_K_M"))

A name that is one of llama-quantize's mixes (``Q4_K_M``, ``Q4_0``, ...) means that mix; a
ggml type name that is not (``Q4_K``, ``MXFP4``) means that type for every tensor the mix
rules would quantize ("pure"), as llama-quantize's ``--pure``, which ``pure=True`` gives for a
mix name too. Either way a tensor whose rows do not fit the type's block falls back to
llama.cpp's fallback type (``fallback_type``: a K-quant's 32-element type, else F16), or with
``fallback=False`` is refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from quantcli.core.ggml import GGML_TYPES, BlockSizeError, fallback_type
from quantcli.errors import SpecError

#: an assigned type that keeps a tensor as it is
KEEP = "keep"

#: llama.cpp's GGML_QNT_VERSION, written as ``general.quantization_version``.
QUANTIZATION_VERSION = 2


@dataclass(frozen=True)
class Mix:
    """A recipe: ``default`` type for the quantizable tensors, llama.cpp's per-tensor rules
    on top unless ``pure``; ``ftype`` is llama.cpp's LLAMA_FTYPE for the file."""

    name: str
    ftype: int
    default: str
    summary: str
    pure: bool = False


#: llama-quantize's mixes that quant can write (every type they use has an encoder), in
#: llama-quantize's order. Q2_K_S is left out: llama.cpp requires an importance matrix for it.
MIXES: dict[str, Mix] = {
    m.name: m
    for m in (
        Mix("Q4_0", 2, "Q4_0", "Q4_0; output.weight Q6_K"),
        Mix("Q4_1", 3, "Q4_1", "Q4_1; output.weight Q6_K"),
        Mix("MXFP4_MOE", 38, "MXFP4", "MXFP4 for MoE experts (3-D), Q8_0 for the rest"),
        Mix("Q5_0", 8, "Q5_0", "Q5_0; output.weight Q6_K"),
        Mix("Q5_1", 9, "Q5_1", "Q5_1; output.weight Q6_K"),
        Mix("Q2_K", 10, "Q2_K", "Q2_K; attn_v Q3_K/Q4_K, ffn_down and attn_output Q3_K"),
        Mix("Q3_K_S", 11, "Q3_K", "Q3_K; output.weight Q6_K"),
        Mix("Q3_K_M", 12, "Q3_K", "Q3_K; attn_v Q5_K/Q4_K, ffn_down Q5_K/Q4_K, attn_output Q4_K"),
        Mix("Q3_K_L", 13, "Q3_K", "Q3_K; attn_v, ffn_down and attn_output Q5_K"),
        Mix("Q4_K_S", 14, "Q4_K", "Q4_K; first 4 attn_v and first 1/8 ffn_down Q5_K"),
        Mix("Q4_K_M", 15, "Q4_K", "Q4_K; half of attn_v and ffn_down Q6_K (use_more_bits)"),
        Mix("Q5_K_S", 16, "Q5_K", "Q5_K; output.weight Q6_K"),
        Mix("Q5_K_M", 17, "Q5_K", "Q5_K; half of attn_v and ffn_down Q6_K (use_more_bits)"),
        Mix("Q6_K", 18, "Q6_K", "Q6_K"),
        Mix("Q8_0", 7, "Q8_0", "Q8_0"),
    )
}

# the ftype a file of one type records: llama-quantize's for `--pure NAME`, where Q3_K, Q4_K
# and Q5_K are its aliases of the _M mixes
_PURE_FTYPES = {
    "Q4_0": 2,
    "Q4_1": 3,
    "Q5_0": 8,
    "Q5_1": 9,
    "Q8_0": 7,
    "Q2_K": 10,
    "Q3_K": 12,
    "Q4_K": 15,
    "Q5_K": 17,
    "Q6_K": 18,
    "MXFP4": 38,
}


def type_names() -> list[str]:
    """Every name ``resolve_type`` takes: the mixes, then the ggml types that are not mixes."""
    return list(MIXES) + [t for t in GGML_TYPES if t not in MIXES]


def resolve_type(name: str, pure: bool = False) -> Mix:
    """The Mix a ``--type`` name stands for (case-insensitive); SpecError if none."""
    key = name.strip().upper()
    if key in MIXES and not pure:
        return MIXES[key]
    if key in GGML_TYPES:
        return Mix(key, _PURE_FTYPES[key], key, f"{key} for every quantizable tensor", pure=True)
    if key in MIXES:  # MXFP4_MOE with pure: its default type, everywhere
        mix = MIXES[key]
        return Mix(mix.name, mix.ftype, mix.default, mix.summary, pure=True)
    raise SpecError(
        f"unknown ggml type or mix {name!r} in --type: choose one of "
        f"{', '.join(type_names())}; 'quant formats' lists them with their bits per weight"
    )


@dataclass(frozen=True)
class ModelFacts:
    """What llama.cpp's rules read from a model's metadata (``{arch}.block_count``,
    ``.attention.head_count``, ``.attention.head_count_kv``, ``.expert_count``)."""

    arch: str = ""
    n_layer: int = 0
    n_head: int = 0
    n_head_kv: int = 0
    n_expert: int = 0

    @classmethod
    def of(cls, fields: Mapping[str, object]) -> ModelFacts:
        """From plain metadata values (key -> int, str or list)."""
        arch = fields.get("general.architecture")
        arch = arch if isinstance(arch, str) else ""

        def number(key: str) -> int:
            value = fields.get(f"{arch}.{key}")
            if isinstance(value, (list, tuple)):  # per-layer head counts: layer 0's, as n_gqa()
                value = value[0] if value else 0
            return int(value) if isinstance(value, (int, float)) else 0

        return cls(
            arch,
            number("block_count"),
            number("attention.head_count"),
            number("attention.head_count_kv"),
            number("expert_count"),
        )

    @property
    def n_gqa(self) -> int:
        """Query heads per key-value head (llama.cpp's hparams.n_gqa(); 0 when unknown)."""
        return self.n_head // self.n_head_kv if self.n_head_kv else 0

    @property
    def is_70b(self) -> bool:
        """llama.cpp's LLM_TYPE_70B, the one model type its rules look at."""
        return self.arch == "llama" and self.n_layer == 80 and self.n_head != self.n_head_kv


@dataclass(frozen=True)
class TensorFacts:
    """One tensor of the input: name, NumPy shape (the row is the last axis), ggml type."""

    name: str
    shape: tuple[int, ...]
    type: str


@dataclass(frozen=True)
class TensorChoice:
    """The decision for one tensor.

    type: the ggml type it is written in (its own type when kept); asked: the type the mix
    chose before a fallback (None when it fits); reason: why it is kept, for kept tensors;
    by: what chose the type when not the mix's rules (``--rule '...'``, ``budget``).
    ``retyped`` is False when the bytes are copied as they are.
    """

    name: str
    type: str
    source_type: str
    asked: str | None = None
    reason: str = ""
    by: str = ""

    @property
    def retyped(self) -> bool:
        return self.type != self.source_type

    @property
    def fallback(self) -> bool:
        return self.asked is not None


# -- which tensors llama-quantize quantizes -------------------------------------------------

# names containing these are kept (tensor_allows_quantization), with the reason shown
_KEPT_PARTS: tuple[tuple[str, str], ...] = (
    ("_norm.weight", "norm"),
    ("ffn_gate_inp.weight", "MoE router"),
    ("ffn_gate_tid2eid.weight", "MoE routing table"),
    ("altup", "small (altup)"),
    ("laurel", "small (laurel)"),
    ("per_layer_model_proj", "small (per_layer_model_proj)"),
    ("ssm_conv1d", "convolution"),
    ("shortconv.conv.weight", "convolution"),
    ("indexer.k_proj.weight", "small (indexer)"),
    ("indexer.q_proj.weight", "small (indexer)"),
    ("attn_rel_b.weight", "relative position bias"),
    (".position_embd", "position embedding"),
    ("sam.pos_embd", "position embedding"),
    ("sam.neck.", "vision (sam.neck)"),
    ("sam.net_", "vision (sam.net)"),
    (".rel_pos", "relative position"),
    (".patch_embd", "patch embedding"),
    (".patch_merger", "patch merger"),
    ("a.rvq.codebook", "audio codebook"),
    ("mm.a.code_embd", "audio codebook"),
) + tuple(
    (f"time_mix_{part}.weight", "small (RWKV time_mix)")
    for part in ("first w0 w1 w2 v0 v1 v2 a0 a1 a2 g1 g2 decay_w1 decay_w2 lerp_fused".split())
)
_KEPT_NAMES = {"position_embd.weight": "position embedding", "token_types.weight": "token types"}


def kept_reason(name: str, shape: Sequence[int]) -> str:
    """Why llama-quantize leaves tensor ``name`` as it is ("" when it quantizes it)."""
    if len(shape) < 2:
        return f"kept: {len(shape)}-D"
    if not name.endswith("weight"):
        return "kept: not a weight"
    if name in _KEPT_NAMES:
        return f"kept: {_KEPT_NAMES[name]}"
    for part, why in _KEPT_PARTS:
        if part in name:
            return f"kept: {why}"
    return ""


# -- categories (tensor_get_category) --------------------------------------------------------

OUTPUT, TOKEN_EMBD, ATTN_QKV, ATTN_KV_B, ATTN_V, ATTN_K, ATTN_Q, ATTN_OUTPUT = range(8)
FFN_UP, FFN_GATE, FFN_DOWN, OTHER = range(8, 12)
_ATTN_V_LIKE = (ATTN_V, ATTN_QKV, ATTN_KV_B)


def category(name: str) -> int:
    if name == "output.weight":
        return OUTPUT
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return TOKEN_EMBD
    for part, cat in (
        ("attn_qkv.weight", ATTN_QKV),
        ("attn_kv_b.weight", ATTN_KV_B),
        ("attn_v.weight", ATTN_V),
        ("attn_k.weight", ATTN_K),
        ("attn_q.weight", ATTN_Q),
        ("attn_output.weight", ATTN_OUTPUT),
        ("ffn_up", FFN_UP),
        ("ffn_gate", FFN_GATE),
        ("ffn_down", FFN_DOWN),
    ):
        if part in name:
            return cat
    return OTHER


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's choice of layers that get more bits: the first and last eighth, and every
    third layer in between. C integer division (the operands are never negative here)."""
    eighth = n_layers // 8
    return i_layer < eighth or i_layer >= 7 * n_layers // 8 or (i_layer - eighth) % 3 == 2


_LAYER = re.compile(r"blk\.([+-]?\d+)\.")


def layer_of(name: str) -> int:
    """The layer number of ``blk.N.`` names, -1 for others (as llama.cpp's sscanf)."""
    match = _LAYER.match(name)
    return int(match.group(1)) if match else -1


def llama_order(names: Sequence[str]) -> list[int]:
    """Indices of ``names`` in llama.cpp's order (by layer, then by name): the order its
    counters (the i-th attn_v, the i-th ffn_down) count in."""
    return sorted(range(len(names)), key=lambda i: (layer_of(names[i]), names[i].encode()))


class _Counters:
    def __init__(self, tensors: Sequence[TensorFacts], facts: ModelFacts) -> None:
        cats = [category(t.name) for t in tensors]
        self.n_attention_wv = sum(c in _ATTN_V_LIKE for c in cats)
        self.i_attention_wv = 0
        # llama.cpp counts ffn tensors against the model's layer count
        self.n_layer = facts.n_layer or sum(c == FFN_DOWN for c in cats)
        self.i = {FFN_DOWN: 0, FFN_GATE: 0, FFN_UP: 0}
        self.tied = not any(c == OUTPUT for c in cats)


def _layer_info(counters: _Counters, cat: int, name: str, facts: ModelFacts) -> tuple[int, int]:
    n_layer = counters.n_layer
    if facts.n_expert > 1:
        # experts' tensors are not in layer order: llama.cpp reads the layer from the name
        i_layer = layer_of(name)
        if not 0 <= i_layer < n_layer:
            raise SpecError(
                f"no layer number in tensor {name}: the mix rules of a MoE model need "
                f"blk.N. names with N below {n_layer}; use a single type (--pure)"
            )
        return i_layer, n_layer
    return counters.i[cat], n_layer


def _mix_type(t: TensorFacts, cat: int, mix: Mix, facts: ModelFacts, counters: _Counters) -> str:
    """llama_tensor_get_type_impl for the mixes of MIXES (no importance matrix)."""
    f = mix.name
    new = mix.default
    falcon = facts.arch == "falcon"
    n_expert = facts.n_expert
    if cat == OUTPUT or (counters.tied and cat == TOKEN_EMBD):
        if f == "MXFP4_MOE" or falcon or t.shape[-1] % GGML_TYPES[new].block_size:
            return "Q8_0"
        return new if new == "Q8_0" else "Q6_K"
    if f == "MXFP4_MOE":
        is_expert = len(t.shape) >= 3 and t.shape[-3] > 1
        if facts.arch == "bailingmoe3":
            is_expert = is_expert and cat in (FFN_UP, FFN_GATE, FFN_DOWN)
        return "MXFP4" if is_expert else "Q8_0"
    if cat == TOKEN_EMBD:
        return new
    if cat in _ATTN_V_LIKE:
        i, n = counters.i_attention_wv, counters.n_attention_wv
        if f == "Q2_K":
            new = "Q4_K" if facts.n_gqa >= 4 else "Q3_K"
        elif f == "Q3_K_M":
            new = "Q5_K" if i < 2 else "Q4_K"
        elif f == "Q3_K_L":
            new = "Q5_K"
        elif f in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
            new = "Q6_K"
        elif f == "Q4_K_S" and i < 4:
            new = "Q5_K"
        if facts.is_70b and new in ("Q3_K", "Q4_K"):
            new = "Q5_K"
        if n_expert == 8:
            new = "Q8_0"
        counters.i_attention_wv += 1
        return new
    if cat == ATTN_K:
        return "Q8_0" if n_expert == 8 else new
    if cat == FFN_DOWN:
        i, n = _layer_info(counters, cat, t.name, facts)
        if f == "Q2_K":
            new = "Q3_K"
        elif f == "Q3_K_M":
            if i < n // 16:
                new = "Q5_K"
            elif not falcon or use_more_bits(i, n):
                new = "Q4_K"
            else:
                new = "Q3_K"
        elif f == "Q3_K_L":
            new = "Q4_K" if falcon else "Q5_K"
        elif f == "Q4_K_M":
            if falcon:
                new = "Q6_K" if i < n // 16 else "Q5_K" if use_more_bits(i, n) else "Q4_K"
            elif use_more_bits(i, n):
                new = "Q6_K"
        elif f == "Q5_K_M" and use_more_bits(i, n):
            new = "Q6_K"
        elif f == "Q4_K_S" and not falcon and i < n // 8:
            new = "Q5_K"
        counters.i[cat] += 1
        return new
    if cat == ATTN_OUTPUT:
        if not falcon:
            if n_expert == 8:
                if f in ("Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_S", "Q4_K_M"):
                    new = "Q5_K"
            elif f == "Q2_K":
                new = "Q3_K"
            elif f == "Q3_K_M":
                new = "Q4_K"
            elif f == "Q3_K_L":
                new = "Q5_K"
        elif f == "Q3_K_L":
            new = "Q4_K"
        return new
    if cat in (FFN_GATE, FFN_UP):
        _layer_info(counters, cat, t.name, facts)  # a MoE name without a layer is refused
        counters.i[cat] += 1
    return new


def fitted_type(wanted: str, row: int) -> tuple[str, str | None]:
    """(type written, type asked when it fell back, else None) for rows of ``row`` elements:
    llama.cpp's tensor_type_fallback (a K-quant's 32-element fallback type, else F16)."""
    written = fallback_type(wanted, row)
    return written, (None if written == wanted else wanted)


def plan_types(
    tensors: Sequence[TensorFacts],
    facts: ModelFacts,
    mix: Mix,
    fallback: bool = True,
    exclude: Sequence[str] = (),
    assigned: Mapping[str, tuple[str, str]] | None = None,
) -> list[TensorChoice]:
    """One TensorChoice per tensor, in the order of ``tensors``.

    The counters of llama.cpp's rules run in its own order (``llama_order``), whatever the
    file's order, so the choices are those llama-quantize makes. ``exclude``: names kept as
    they are (already matched by the caller's globs). ``fallback=False``: a tensor whose rows
    do not fit its type is a BlockSizeError instead of falling back. ``assigned``: name ->
    (type, what chose it) for tensors the mix quantizes, in place of the mix's type, as
    llama-quantize's ``--tensor-type``; ``KEEP`` keeps the tensor as it is.
    """
    assigned = assigned or {}
    excluded = set(exclude)
    counters = _Counters(tensors, facts)
    choices: dict[int, TensorChoice] = {}
    for i in llama_order([t.name for t in tensors]):
        t = tensors[i]
        reason = "kept: --exclude" if t.name in excluded else kept_reason(t.name, t.shape)
        if reason:
            choices[i] = TensorChoice(t.name, t.type, t.type, reason=reason)
            continue
        by = ""
        if t.name in assigned:
            # as llama.cpp's --tensor-type: a tensor given its type skips the mix's rules, and
            # so does not advance their counters (the i-th attn_v, the i-th ffn_down)
            wanted, by = assigned[t.name]
            if wanted == KEEP:
                choices[i] = TensorChoice(t.name, t.type, t.type, reason=f"kept: {by}", by=by)
                continue
            if wanted in ("F32", "F16", "BF16"):
                choices[i] = TensorChoice(t.name, wanted, t.type, by=by)
                continue
        else:
            cat = category(t.name)
            wanted = mix.default if mix.pure else _mix_type(t, cat, mix, facts, counters)
        row = t.shape[-1]
        written, asked = fitted_type(wanted, row)
        if asked is not None and not fallback:
            raise BlockSizeError(
                f"{wanted} in tensor {t.name}: row size ({row}) is not a multiple of {wanted} "
                f"block size ({GGML_TYPES[wanted].block_size}) and --no-fallback forbids "
                f"llama.cpp's fallback to {written}; drop --no-fallback, or keep the tensor "
                f"with --exclude '{t.name}'"
            )
        choices[i] = TensorChoice(t.name, written, t.type, asked, by=by)
    return [choices[i] for i in range(len(tensors))]


__all__ = [
    "KEEP",
    "MIXES",
    "QUANTIZATION_VERSION",
    "Mix",
    "ModelFacts",
    "TensorChoice",
    "TensorFacts",
    "category",
    "fitted_type",
    "kept_reason",
    "layer_of",
    "llama_order",
    "plan_types",
    "resolve_type",
    "type_names",
    "use_more_bits",
]
