"""Per-tensor ggml types for a GGUF output: rules and budgets (docs/MIX.md, "GGUF").

llama-quantize's mixes fix each tensor's type by its name and layer; this module lets the
user, or a measured budget, choose them instead, for the tensors the mix quantizes (norms and
the other tensors llama.cpp keeps stay kept):

- ``--rule PATTERN=TYPE`` (llama-quantize's ``--tensor-type``): the first matching rule
  gives the tensor TYPE (a ggml type, F16/F32/BF16, or ``keep``); patterns as in quant's own
  rules (``quantcli.ops.plan.Pattern``: a glob or ``re:``, on the name or the module name).
  A rule that decides no tensor is an error.
- a budget (``--target-bpw``, ``--max-size``): every tensor no rule fixes is read once and
  encoded with every candidate type (default ``DEFAULT_CANDIDATES`` and keep), keeping only
  the error statistics; ``quantcli.ops.plan.allocate`` then picks one type per tensor with
  the least total (weighted) squared error whose stored bytes fit. Sizes are exact: a type's
  bytes per row times the rows, fallbacks included.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import ml_dtypes
import numpy as np

from quantcli.core.ggml import GGML_TYPES
from quantcli.core.ggml.mixes import KEEP, TensorChoice, TensorFacts, fitted_type
from quantcli.core.metrics import ErrorStats
from quantcli.errors import UsageError
from quantcli.io.source import TensorSource
from quantcli.ops.plan import (
    Budget,
    Pattern,
    Unreachable,
    allocate,
    make_budget,
    weighted_error,
)

#: what a budget chooses among by default: the K-quant family and Q8_0 (and keep)
DEFAULT_CANDIDATES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0")
_FLOAT_TYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16}

# called after each tensor measured: (tensor name, its elements, elements to measure)
ProgressFn = Callable[[str, int, int], None]


def type_name(text: str, where: str) -> str:
    """``q4_k`` -> ``Q4_K``; ``keep``; UsageError naming the types for anything else."""
    name = text.strip()
    if name.lower() == KEEP:
        return KEEP
    upper = name.upper()
    if upper in GGML_TYPES or upper in _FLOAT_TYPES:
        return upper
    names = ", ".join([*GGML_TYPES, *_FLOAT_TYPES, KEEP])
    raise UsageError(
        f"unknown ggml type {name!r} in {where}: a GGUF output's tensors take one of {names}"
    )


@dataclass(frozen=True)
class TypeRule:
    """``PATTERN=TYPE``: the tensors PATTERN names get TYPE (the first matching rule wins)."""

    text: str
    pattern: Pattern
    type: str

    @property
    def where(self) -> str:
        return f"--rule {self.text!r}"


def parse_type_rule(text: str) -> TypeRule:
    pattern, sep, kind = str(text).partition("=")
    where = f"--rule {text!r}"
    if not sep or not pattern.strip() or not kind.strip():
        raise UsageError(
            f"bad rule {text!r} in --rule: expected PATTERN=TYPE for a GGUF output; e.g. "
            "--rule 'blk.*.attn_v.weight=Q6_K' or --rule 'token_embd.weight=keep'"
        )
    return TypeRule(text, Pattern.parse(pattern.strip(), where), type_name(kind, where))


def rule_types(
    rules: Sequence[TypeRule], choices: Sequence[TensorChoice], label: str
) -> dict[str, tuple[str, str]]:
    """name -> (type, the rule) for the tensors the rules decide, given the mix's
    ``choices``. UsageError for a rule that decides nothing: it names no tensor, only tensors
    llama-quantize keeps, or only tensors an earlier rule decided."""
    decided: dict[str, tuple[str, str]] = {}
    for rule in rules:
        named = [c for c in choices if rule.pattern.matches(c.name)]
        if not named:
            examples = ", ".join(c.name for c in choices[:3])
            raise UsageError(
                f"no tensor named by {rule.where} in {label}: a pattern is a glob or re:REGEX "
                f"on tensor names ({examples}, ...) or module names; fix it, or drop the rule "
                "(quant inspect lists the names)"
            )
        open_ = [c for c in named if not c.reason]
        if not open_:
            c = named[0]
            raise UsageError(
                f"{rule.where} decides nothing in {label}: it names only tensors the output "
                f"keeps ({c.name}: {c.reason}); fix the pattern, or drop the rule"
            )
        fresh = [c for c in open_ if c.name not in decided]
        if not fresh:
            raise UsageError(
                f"{rule.where} decides nothing in {label}: every tensor it names is decided "
                "by an earlier rule (the first match wins); put it before them, or drop it"
            )
        for c in fresh:
            decided[c.name] = (rule.type, rule.where)
    return decided


# -- budgets ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TypeBudget:
    """What the allocation must meet and minimises: ``limits``, the limits, objective and
    importance of ``quantcli.ops.plan.Budget`` (its target_bpw counts the bits of the tensors
    the mix quantizes, rules' included; its max_size every tensor of the file), and the
    ggml types a tensor may get (``keep``: as it is)."""

    limits: Budget
    candidates: tuple[str, ...] = (*DEFAULT_CANDIDATES, KEEP)

    @property
    def target_bpw(self) -> Fraction | None:
        return self.limits.target_bpw

    @property
    def max_size(self) -> int | None:
        return self.limits.max_size

    @property
    def objective(self) -> str:
        return self.limits.objective

    @property
    def describe(self) -> str:
        return self.limits.describe

    def weight(self, name: str) -> float:
        return self.limits.weight(name)


def make_type_budget(
    target_bpw: float | None,
    max_size: str | None,
    objective: str | None,
    importance: Sequence[str],
    candidates: Sequence[str],
) -> TypeBudget | None:
    """The budget of the GGUF path's options, or None (``make_budget`` checks the limits and
    the tuning options; the candidates here are ggml types)."""
    if target_bpw is None and max_size is None and candidates:
        raise UsageError(
            "--candidate without a budget: it tunes the allocation of --target-bpw or "
            "--max-size; add one of them, or drop it"
        )
    limits = make_budget(target_bpw, max_size, None, objective, importance)
    if limits is None:
        return None
    kinds = tuple(dict.fromkeys(type_name(c, f"--candidate {c!r}") for c in candidates))
    return TypeBudget(limits, kinds or (*DEFAULT_CANDIDATES, KEEP))


@dataclass
class TypeOption:
    """A candidate type measured on one tensor: the type written (after a fallback), the
    bytes it stores and the error of what a reader decodes."""

    type: str
    nbytes: int
    stats: ErrorStats


@dataclass
class TypedTensor:
    """A tensor the budget decides, with its measured options and the one chosen."""

    name: str
    shape: tuple[int, ...]
    source_type: str
    options: list[TypeOption]
    weight: float = 1.0
    chosen: int = 0

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @property
    def choice(self) -> TypeOption:
        return self.options[self.chosen]


@dataclass
class TypePlan:
    """The allocation: the budget's tensors, what the rest of the file takes, the totals."""

    budget: TypeBudget
    tensors: list[TypedTensor] = field(default_factory=list)
    fixed_bytes: int = 0  # tensors the mix quantizes that a rule fixes
    fixed_elements: int = 0
    other_bytes: int = 0  # tensors kept whatever the plan (norms, ...)

    @property
    def elements(self) -> int:
        return self.fixed_elements + sum(t.elements for t in self.tensors)

    @property
    def nbytes(self) -> int:
        return self.fixed_bytes + sum(t.choice.nbytes for t in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / self.elements if self.elements else 0.0

    def assigned(self) -> dict[str, tuple[str, str]]:
        return {t.name: (t.choice.type, "budget") for t in self.tensors}


def type_bytes(kind: str, shape: Sequence[int], source_type: str, source_bytes: int) -> int:
    """Bytes a tensor of ``shape`` takes stored as ggml type ``kind`` (KEEP: as it is)."""
    if kind == KEEP or kind == source_type:
        return source_bytes
    if kind in _FLOAT_TYPES:
        return math.prod(shape) * np.dtype(_FLOAT_TYPES[kind]).itemsize
    row = shape[-1]
    return GGML_TYPES[kind].row_bytes(row) * (math.prod(shape) // row)


def measure_types(
    source: TensorSource,
    facts: Sequence[TensorFacts],
    choices: Sequence[TensorChoice],
    fixed: dict[str, tuple[str, str]],
    budget: TypeBudget,
    encode: Callable[[np.ndarray, str, str], tuple[np.ndarray, ErrorStats]],
    fallback: bool = True,
    progress: ProgressFn | None = None,
) -> TypePlan:
    """Measure every candidate on every tensor the mix quantizes and no rule fixes, then
    allocate; ``encode(x, type, name)`` is the encoder the output is written with.
    ``fallback=False``: a candidate whose rows do not fit its block is no candidate."""
    plan = TypePlan(budget)
    open_ = [(t, c) for t, c in zip(facts, choices) if not c.reason and c.name not in fixed]
    total = sum(math.prod(t.shape) for t, _ in open_)
    for t, c in zip(facts, choices):
        nbytes = source.tensor(t.name).nbytes
        if c.reason:
            plan.other_bytes += nbytes
        elif c.name in fixed:
            plan.fixed_bytes += type_bytes(c.type, t.shape, t.type, nbytes)
            plan.fixed_elements += math.prod(t.shape)
    for t, _ in open_:
        x = source.read(t.name)
        nbytes = source.tensor(t.name).nbytes
        options: dict[str, TypeOption] = {}
        for kind in budget.candidates:
            if kind == KEEP:
                written = t.type
            elif kind in _FLOAT_TYPES:
                written = kind
            else:
                written, asked = fitted_type(kind, t.shape[-1])
                if asked is not None and not fallback:
                    continue
            if written in options:
                continue
            if written == t.type:
                stats = ErrorStats.of(x, x)
            else:
                _, stats = encode(x, written, t.name)
            options[written] = TypeOption(
                written, type_bytes(written, t.shape, t.type, nbytes), stats
            )
        del x
        if not options:
            raise UsageError(
                f"no candidate type fits tensor {t.name} in {source.label}: its rows of "
                f"{t.shape[-1]} fit none of {', '.join(budget.candidates)}"
                f"{' without a fallback (--no-fallback)' if not fallback else ''}; add "
                "--candidate keep or a type of 32-element blocks (--candidate Q8_0)"
            )
        plan.tensors.append(
            TypedTensor(t.name, t.shape, t.type, list(options.values()), budget.weight(t.name))
        )
        if progress:
            progress(t.name, math.prod(t.shape), total)
    _allocate(plan, source.label)
    return plan


def _allocate(plan: TypePlan, label: str) -> None:
    budget = plan.budget
    bits = [[8 * o.nbytes for o in t.options] for t in plan.tensors]
    errors = [[weighted_error(t, o, budget.objective) for o in t.options] for t in plan.tensors]
    limits = []
    if budget.target_bpw is not None:
        limits.append(math.floor(budget.target_bpw * plan.elements) - 8 * plan.fixed_bytes)
    if budget.max_size is not None:
        limits.append(8 * (budget.max_size - plan.other_bytes - plan.fixed_bytes))
    limit = min(limits)
    try:
        chosen = allocate(bits, errors, limit)
    except Unreachable as exc:
        least = exc.least // 8 + plan.fixed_bytes
        bpw = 8 * least / plan.elements if plan.elements else 0.0
        raise UsageError(
            f"unreachable budget ({budget.describe}) in {label}: with the smallest candidate "
            f"type on every tensor the quantized tensors take {least} bytes ({bpw:.4f} bits "
            f"per weight; the whole file {least + plan.other_bytes} bytes); raise the budget, "
            "or add smaller candidates (--candidate Q2_K)"
        ) from None
    for t, k in zip(plan.tensors, chosen):
        t.chosen = k
