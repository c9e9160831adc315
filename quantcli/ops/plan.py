"""The per-tensor decision: which spec each tensor of a file gets, and why (docs/MIX.md).

compress and report consume a ``Plan``. Like ``quantcli.select.Selector`` it answers, tensor
by tensor, "quantized with which spec, or kept and why"; the spec comes from, in this order:

1. an assignment: a plan file (``--plan``) or the allocation of a budget (``--target-bpw``,
   ``--max-size``, ``--min-sqnr``);
2. the first ``--rule`` whose pattern names the tensor (first match wins; ``keep`` keeps it);
3. the command's own spec options, the default.

Which tensors are quantized at all stays the selector's decision (float, at least 2-D, at
least ``--min-elements``, ``--include`` / ``--exclude``): rules and budgets choose how a
tensor is quantized, or keep it, but never quantize a norm or an integer buffer.

Rules are ``PATTERN=SPEC``, split at the first ``=``. PATTERN is a glob (``fnmatch``,
case-sensitive) or ``re:REGEX`` (Python's ``re.fullmatch``), tried on the tensor's name and on
its module name (the name without its last dotted component, so ``lm_head`` names
``lm_head.weight``). SPEC is ``keep``, a preset (``PRESETS``: ``int8``, ``int4``, every scheme
name...), ``key=value,...`` over the fields of ``QuantSpec`` applied on top of the command's
spec options (``bits=6`` is the command's spec at 6 bits), or a preset followed by options
(``int4,group_size=32``).

A budget is met by measurement: every tensor a rule does not fix is read once, every
candidate spec is quantized and measured on it (only the error statistics are kept), and
``allocate`` picks one candidate per tensor minimising the total (weighted) squared error
with the stored bits within the budget. Sizes are exact: the bytes of the arrays the output
stores (codes, scales, zero points, tensor scales), computed from the shapes.
"""

from __future__ import annotations

import heapq
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from fractions import Fraction
from typing import Any, Protocol

import numpy as np

from quantcli.core.metrics import ErrorStats
from quantcli.core.quantizer import quantize
from quantcli.core.schemes import SCHEMES
from quantcli.core.spec import SCHEME_ALIASES, QuantSpec, parse_block_size
from quantcli.errors import InputError, SpecError, UsageError
from quantcli.io.dtypes import safetensors_dtype
from quantcli.io.quantized_format import QuantizedEntry
from quantcli.io.source import TensorInfo, TensorSource
from quantcli.ops.tensor import count_nonfinite
from quantcli.select import Selection, Selector

KEEP = "keep"
PLAN_FORMAT = "quant-plan"
PLAN_VERSION = 1
OBJECTIVES = ("total", "relative")

# called after each tensor measured: (tensor name, its elements, elements to measure)
ProgressFn = Callable[[str, int, int], None]

# -- presets and spec text -----------------------------------------------------------------

# name -> QuantSpec fields; a field left out takes the scheme's default
PRESETS: dict[str, dict[str, Any]] = {
    "int8": {"scheme": "absmax", "bits": 8, "granularity": "channel"},
    **{
        f"int{b}": {"scheme": "absmax", "bits": b, "granularity": "group", "group_size": 128}
        for b in range(7, 1, -1)
    },
    "uint8": {"scheme": "zeropoint", "bits": 8, "granularity": "channel"},
    **{
        f"uint{b}": {"scheme": "zeropoint", "bits": b, "granularity": "group", "group_size": 128}
        for b in range(7, 1, -1)
    },
    "w8a16": {"scheme": "fullrange-ct", "bits": 8, "granularity": "channel"},
    "w4a16": {"scheme": "fullrange-ct", "bits": 4, "granularity": "group", "group_size": 128},
    # every scheme and alias by its name, with the scheme's own defaults
    **{name: {"scheme": name} for name in SCHEME_ALIASES},
}

# how a value of each QuantSpec field is read from text; fields not listed are read as text
_FIELD_TYPES: dict[str, Callable] = {
    "bits": int,
    "group_size": int,
    "axis": int,
    "percentile": float,
    "super_block": int,
    "block_size": parse_block_size,  # 128x128 or 128 (a comma separates the options)
}


def spec_fields() -> tuple[str, ...]:
    """The keys SPEC options may set: the fields of QuantSpec."""
    return tuple(QuantSpec.__dataclass_fields__)


@dataclass(frozen=True)
class SpecText:
    """A parsed SPEC: ``keep``, or a preset and/or ``key=value`` options.

    ``resolve(base)`` makes the QuantSpec: the preset's fields (or, without a preset, the
    ``base`` fields: the command's spec options), then the options on top.
    """

    text: str
    keep: bool = False
    preset: str | None = None
    options: tuple[tuple[str, Any], ...] = ()

    def resolve(self, base: Mapping[str, Any], where: str) -> QuantSpec | None:
        """The spec, or None for ``keep``; SpecError naming ``where`` when invalid."""
        if self.keep:
            return None
        fields = dict(PRESETS[self.preset]) if self.preset else dict(base)
        fields.update(self.options)
        try:
            return QuantSpec(**fields)
        except SpecError as exc:
            raise SpecError(_in_context(str(exc), where)) from None


def _in_context(message: str, where: str) -> str:
    """A QuantSpec error said of ``where`` (a rule, a plan entry), its option hints written
    the way a SPEC spells them (``--group-size 32`` -> ``group_size=32``)."""
    message = message.replace("in quantization spec", f"in {where}")
    message = re.sub(
        r"use --(bits|group-size|granularity|scale-dtype) ([\w.-]+)",
        lambda m: f"use {m[1].replace('-', '_')}={m[2]}",
        message,
    )
    return re.sub(r"--(bits|group-size|granularity|scale-dtype|axis)\b", r"\1", message)


def parse_spec(text: str, where: str) -> SpecText:
    """Parse SPEC (``keep``, ``int4``, ``bits=6``, ``nf4,group_size=32``); UsageError naming
    ``where`` (e.g. ``--rule '*=x'``) when it is not one."""
    items = [item.strip() for item in str(text).split(",")]
    if len(items) == 1 and items[0].lower() == KEEP:
        return SpecText(text=text, keep=True)
    preset = None
    options: dict[str, Any] = {}
    keys = spec_fields()
    for i, item in enumerate(items):
        if "=" not in item:
            name = item.lower()
            if name == KEEP:
                raise UsageError(
                    f"keep with options in {where}: keep stores the tensor as it is and takes "
                    "no options; write keep alone"
                )
            if i != 0 or name not in PRESETS:
                hint = "a preset comes first" if name in PRESETS else _preset_hint(item)
                raise UsageError(
                    f"unknown spec {item!r} in {where}: not a preset or key=value; {hint}"
                )
            preset = name
            continue
        key, _, value = item.partition("=")
        key, value = key.strip().lower().replace("-", "_"), value.strip()
        if key not in keys:
            raise UsageError(
                f"unknown spec key {key!r} in {where}: the keys are {', '.join(keys)}; "
                "e.g. bits=6,group_size=64"
            )
        if key in options:
            raise UsageError(f"{key} given twice in {where}: give each key once")
        kind = _FIELD_TYPES.get(key, str)
        try:
            options[key] = kind(value)
        except ValueError:
            raise UsageError(
                f"bad value {value!r} for {key} in {where}: not {'an integer' if kind is int else 'a number'}; "  # noqa: E501
                f"e.g. {key}={'4' if kind is int else '99.9'}"
            ) from None
    return SpecText(text=text, preset=preset, options=tuple(options.items()))


def _preset_hint(item: str) -> str:
    close = [p for p in PRESETS if p.startswith(item.lower()[:3])][:4]
    some = close or ["int8", "int4", "nf4", KEEP]
    return f"use keep, a preset such as {', '.join(some)}, or key=value options"


# -- rules ---------------------------------------------------------------------------------


def module_name(name: str) -> str:
    """``model.layers.0.mlp.up_proj.weight`` -> ``model.layers.0.mlp.up_proj``; a name with no
    dot is its own module name."""
    return name.rsplit(".", 1)[0]


@dataclass(frozen=True)
class Pattern:
    """A tensor name pattern: a glob, or ``re:REGEX`` matched whole. Either is tried on the
    tensor's name and on its module name."""

    text: str
    regex: re.Pattern | None = None

    @classmethod
    def parse(cls, text: str, where: str) -> Pattern:
        if text.startswith("re:"):
            try:
                return cls(text, re.compile(text[3:]))
            except re.error as exc:
                raise UsageError(
                    f"bad regular expression {text[3:]!r} in {where}: {exc}; fix it, or use a "
                    "glob such as '*v_proj*'"
                ) from None
        return cls(text)

    def matches(self, name: str) -> bool:
        names = (name, module_name(name)) if "." in name else (name,)
        if self.regex is not None:
            return any(self.regex.fullmatch(n) for n in names)
        return any(fnmatchcase(n, self.text) for n in names)


@dataclass(frozen=True)
class Rule:
    """``PATTERN=SPEC``: the tensors PATTERN names get SPEC (the first matching rule wins)."""

    text: str
    pattern: Pattern
    spec: SpecText

    @property
    def where(self) -> str:
        return f"--rule {self.text!r}"

    def matches(self, name: str) -> bool:
        return self.pattern.matches(name)


def parse_rule(text: str) -> Rule:
    """Parse ``PATTERN=SPEC`` (split at the first ``=``); UsageError when malformed."""
    pattern, sep, spec = str(text).partition("=")
    where = f"--rule {text!r}"
    if not sep or not pattern.strip() or not spec.strip():
        raise UsageError(
            f"bad rule {text!r} in --rule: expected PATTERN=SPEC; e.g. --rule '*embed*=int8', "
            "--rule 're:.*\\.v_proj\\.weight=bits=6' or --rule 'lm_head=keep'"
        )
    return Rule(text, Pattern.parse(pattern.strip(), where), parse_spec(spec.strip(), where))


def parse_importance(text: str) -> tuple[Pattern, float]:
    """``PATTERN=WEIGHT`` of --importance: the pattern's tensors count WEIGHT times."""
    pattern, sep, weight = str(text).partition("=")
    where = f"--importance {text!r}"
    try:
        value = float(weight)
    except ValueError:
        value = math.nan
    if not sep or not pattern.strip() or not (math.isfinite(value) and value >= 0):
        raise UsageError(
            f"bad importance {text!r} in --importance: expected PATTERN=WEIGHT with a weight "
            ">= 0; e.g. --importance '*down_proj*=2'"
        )
    return Pattern.parse(pattern.strip(), where), value


# -- the plan ------------------------------------------------------------------------------


class Container(Protocol):
    """What an output container says of a tensor (``ops.compress``'s compressed-tensors one):
    whether it keeps it, the spec it stores (or SpecError), and the arrays it stores."""

    def choose(self, info: TensorInfo, sel: Selection) -> Selection: ...

    def stored(self, name: str, spec: QuantSpec, shape: tuple[int, ...]) -> list: ...


@dataclass(frozen=True)
class Assigned:
    """A tensor's spec fixed by a plan file or a budget: ``spec`` None keeps it."""

    spec: QuantSpec | None
    why: str


class Plan:
    """The spec of every tensor: assignments, then rules, then the default (module docstring).

    selector: which tensors are quantized at all, and the default spec; base: the command's
    spec options as given (None for a field left to the scheme's default), on which a rule's
    ``key=value`` options apply; rules: first match wins; assigned: name -> ``Assigned``.
    Rule specs are resolved when the plan is made, so a bad one fails before any reading.
    """

    def __init__(
        self,
        selector: Selector,
        rules: Sequence[Rule] = (),
        base: Mapping[str, Any] | None = None,
        assigned: Mapping[str, Assigned] | None = None,
        label: str = "",
        shapes: Mapping[str, tuple[int, ...]] | None = None,
    ) -> None:
        self.selector = selector
        self.base = dict(base) if base is not None else selector.spec.to_dict()
        self.rules = tuple(rules)
        self.rule_specs = [rule.spec.resolve(self.base, rule.where) for rule in self.rules]
        self.assigned = dict(assigned or {})
        self.label = label  # what assigned it, for messages: "plan.json", "--target-bpw 4.5"
        self.shapes = dict(shapes or {})  # name -> the shape a plan file recorded

    @classmethod
    def of(cls, selector: Selector | Plan) -> Plan:
        return selector if isinstance(selector, Plan) else cls(selector)

    @property
    def spec(self) -> QuantSpec:
        """The default spec (what no rule or assignment names)."""
        return self.selector.spec

    def rule_index(self, name: str) -> int | None:
        return next((i for i, rule in enumerate(self.rules) if rule.matches(name)), None)

    def choose(self, name: str, dtype, shape: tuple[int, ...], single: bool) -> Selection:
        """The decision for one tensor; same interface as ``Selector.choose``."""
        sel = self.selector.choose(name, dtype, shape, single)
        if not sel.quantized:
            return sel
        if name in self.assigned:
            assigned = self.assigned[name]
            if assigned.spec is None:
                return Selection(name, None, f"kept: {assigned.why}")
            return Selection(name, fit(assigned.spec, shape))
        i = self.rule_index(name)
        if i is None:
            return sel
        spec = self.rule_specs[i]
        if spec is None:
            return Selection(name, None, f"kept: --rule {self.rules[i].text}")
        return Selection(name, fit(spec, shape))

    def why(self, name: str) -> str:
        """What decided tensor ``name``'s spec: the plan file or budget, a rule, the default."""
        if name in self.assigned:
            return self.assigned[name].why
        i = self.rule_index(name)
        return "default" if i is None else f"--rule {self.rules[i].text}"

    def fixed(self, name: str) -> bool:
        """True when an assignment or a rule decides tensor ``name``, not the default."""
        return name in self.assigned or self.rule_index(name) is not None

    def check(
        self, decisions: Sequence[tuple[TensorInfo, Selection]], label: str, single: bool
    ) -> None:
        """Refuse rules and assignments that decide nothing, before anything is read.

        decisions: every tensor of the file with its final selection (after any container
        kept some). A rule must decide at least one tensor (a ``keep`` rule: keep one; a spec
        rule: quantize one); an assigned name must be a tensor the selection quantizes, and a
        spec assigned to it must be what it gets.
        """
        names = {info.name: (info, sel) for info, sel in decisions}
        for name, assigned in self.assigned.items():
            if name not in names:
                raise UsageError(
                    f"unknown tensor {name!r} in {self.label}: {label} has no tensor of that "
                    f"name ({_examples(names)}); make the plan from this file, or fix the name"
                )
            info, sel = names[name]
            shape = self.shapes.get(name)
            if shape is not None and tuple(shape) != tuple(info.shape):
                raise UsageError(
                    f"tensor {name} in {self.label} has shape {list(shape)} but {label} holds "
                    f"{list(info.shape)}: the plan was made for another file; make it again "
                    "from this one"
                )
            base = self.selector.choose(name, info.dtype, info.shape, single)
            if not base.quantized:
                raise UsageError(
                    f"tensor {name} in {self.label}: {label} keeps it ({base.reason}); remove "
                    "it from the plan, or name it with --include to quantize it"
                )
            if assigned.spec is not None and not sel.quantized:
                raise UsageError(
                    f"tensor {name} in {self.label}: the output keeps it ({sel.reason}); "
                    "set it to keep in the plan, or use --format quant"
                )
        for i, rule in enumerate(self.rules):
            named = [(info, sel) for info, sel in decisions if rule.matches(info.name)]
            decided = [
                (info, sel)
                for info, sel in named
                if info.name not in self.assigned
                and self.rule_index(info.name) == i
                and self.selector.choose(info.name, info.dtype, info.shape, single).quantized
            ]
            if self.rule_specs[i] is not None:
                effective = [s for _, s in decided if s.quantized]
            else:
                effective = decided
            if effective:
                continue
            raise UsageError(_idle_rule(self, i, named, decided, label, names, single))


def _idle_rule(plan: Plan, i: int, named, decided, label: str, names, single: bool) -> str:
    """Why rule ``i`` decides no tensor, as an error message."""
    rule = plan.rules[i]
    head = f"rule {rule.text!r} in --rule decides no tensor of {label}"
    if not named:
        return (
            f"{head}: its pattern matches no tensor name or module name ({_examples(names)}); "
            "check the names with quant inspect"
        )
    if decided:  # a spec rule whose tensors the output keeps anyway
        info, sel = decided[0]
        return (
            f"{head}: the output keeps what it names ({info.name}: {sel.reason}); drop the "
            "rule, or use --format quant"
        )
    info, _ = named[0]
    if info.name in plan.assigned:
        return f"{head}: {plan.label} decides every tensor it names; drop the rule"
    earlier = plan.rule_index(info.name)
    base = plan.selector.choose(info.name, info.dtype, info.shape, single)
    if not base.quantized:
        return (
            f"{head}: quant keeps every tensor it names ({info.name}: {base.reason}); rules "
            "choose how quantized tensors are stored; name a tensor with --include to "
            "quantize it"
        )
    return (
        f"{head}: the earlier rule {plan.rules[earlier].text!r} decides every tensor it names "
        f"({info.name}; the first matching rule wins); put it before, or drop it"
    )


def _examples(names: Iterable[str]) -> str:
    names = list(names)
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"it holds {shown}" if names else "it holds no tensor"


def fit(spec: QuantSpec, shape: tuple[int, ...]) -> QuantSpec:
    """``spec`` for a tensor of ``shape``: per-channel falls back to per-tensor on 0-d/1-D
    tensors, as the selector does for the default spec."""
    return Selector(spec).spec_for(tuple(shape))


def make_plan(
    selector: Selector,
    base: Mapping[str, Any] | None = None,
    rules: Sequence[str] = (),
    plan_file: str | None = None,
) -> Plan:
    """The plan of a command's options: ``--rule`` texts, or a ``--plan`` file (not both)."""
    base = dict(base) if base is not None else selector.spec.to_dict()
    if plan_file is not None:
        if rules:
            raise UsageError(
                f"--rule with --plan {plan_file}: the plan file gives every tensor its spec; "
                "edit the plan, or drop --plan"
            )
        assigned, shapes = load_plan(read_plan(plan_file), plan_file, base)
        return Plan(selector, base=base, assigned=assigned, label=plan_file, shapes=shapes)
    return Plan(selector, [parse_rule(text) for text in rules], base)


def make_budget(
    target_bpw: float | None = None,
    max_size: str | None = None,
    min_sqnr: float | None = None,
    objective: str | None = None,
    importance: Sequence[str] = (),
    candidates: Sequence[str] = (),
    plan_file: str | None = None,
) -> Budget | None:
    """The budget of a command's options, or None when none is asked for. UsageError for
    options that only a budget uses given without one, or a budget with ``--plan``."""
    asked = [
        name
        for name, value in (
            ("--target-bpw", target_bpw),
            ("--max-size", max_size),
            ("--min-sqnr", min_sqnr),
        )
        if value is not None
    ]
    tuning = [
        name
        for name, value in (
            ("--objective", objective),
            ("--importance", importance),
            ("--candidate", candidates),
        )
        if value
    ]
    if asked and plan_file is not None:
        raise UsageError(
            f"{asked[0]} with --plan {plan_file}: the plan file already gives every tensor its "
            f"spec; drop {asked[0]}, or drop --plan to make a new plan"
        )
    if not asked:
        if tuning:
            raise UsageError(
                f"{tuning[0]} without a budget: it tunes the allocation of --target-bpw, "
                "--max-size or --min-sqnr; add one of them, or drop it"
            )
        return None
    target = None
    if target_bpw is not None:
        if not (math.isfinite(target_bpw) and target_bpw > 0):
            raise UsageError(
                f"target {target_bpw:g} in --target-bpw: must be a number above 0; e.g. "
                "--target-bpw 4.5"
            )
        target = Fraction(repr(float(target_bpw)))  # 4.5 is exactly 9/2, not 4.5000000001
    return Budget(
        target_bpw=target,
        max_size=parse_size(max_size) if max_size is not None else None,
        min_sqnr=min_sqnr,
        objective=objective or "total",
        importance=tuple(parse_importance(text) for text in importance),
        candidates=tuple(parse_spec(text, f"--candidate {text!r}") for text in candidates),
    )


# -- budgets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """What the allocation must meet, and what it minimises.

    target_bpw: stored bits per weight of the planned tensors, at most (exact: a fraction);
    max_size: bytes of every tensor the output stores, planned or kept, at most;
    min_sqnr: every candidate chosen by the allocation has at least this SQNR (dB);
    objective: ``total`` (sum of squared errors) or ``relative`` (each tensor's squared error
    divided by its mean square, so every weight counts relative to its own tensor's scale);
    importance: (pattern, weight) pairs, the first match multiplies a tensor's error;
    candidates: the specs tried on every tensor no rule fixes (empty: the command's spec at
    every bit width its scheme has from 2 to 8, and keep).
    """

    target_bpw: Fraction | None = None
    max_size: int | None = None
    min_sqnr: float | None = None
    objective: str = "total"
    importance: tuple[tuple[Pattern, float], ...] = ()
    candidates: tuple[SpecText, ...] = ()

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise UsageError(
                f"unknown objective {self.objective!r} in --objective: choose one of "
                f"{', '.join(OBJECTIVES)}"
            )
        if self.target_bpw is not None and not self.target_bpw > 0:
            raise UsageError(
                f"target {float(self.target_bpw):g} in --target-bpw: must be above 0; "
                "e.g. --target-bpw 4.5"
            )
        if self.max_size is not None and self.max_size <= 0:
            raise UsageError(
                f"size {self.max_size} in --max-size: must be above 0; e.g. --max-size 4GB"
            )
        if self.min_sqnr is not None and not math.isfinite(self.min_sqnr):
            raise UsageError(f"{self.min_sqnr} in --min-sqnr: give a number of dB, e.g. 30")

    @property
    def describe(self) -> str:
        parts = []
        if self.target_bpw is not None:
            parts.append(f"--target-bpw {_fraction_text(self.target_bpw)}")
        if self.max_size is not None:
            parts.append(f"--max-size {self.max_size}")
        if self.min_sqnr is not None:
            parts.append(f"--min-sqnr {self.min_sqnr:g}")
        return " ".join(parts)

    def weight(self, name: str) -> float:
        return next((w for pattern, w in self.importance if pattern.matches(name)), 1.0)

    def candidate_specs(self, base: Mapping[str, Any]) -> list[tuple[str, QuantSpec | None]]:
        """(label, spec or None for keep) of every candidate; SpecError for a bad one."""
        if self.candidates:
            out = []
            for text in self.candidates:
                spec = text.resolve(base, f"--candidate {text.text!r}")
                out.append((text.text, spec))
            return out
        scheme = SCHEMES[SCHEME_ALIASES.get(str(base.get("scheme", "absmax")).lower(), "absmax")]
        out = []
        for bits in sorted(b for b in scheme.bits if 2 <= b <= 8):
            spec = QuantSpec(**{**base, "bits": bits})
            out.append((spec.short_label(), spec))
        out.append((KEEP, None))
        return out


def _fraction_text(value: Fraction) -> str:
    return f"{float(value):g}"


def parse_size(text: str) -> int:
    """``4GB`` -> 4_000_000_000, ``4GiB`` or ``4G`` -> 4 * 2**30, ``1500000`` -> bytes."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = m[2].lower() if m else ""
    scale = _SIZE_UNITS.get(unit)
    if m is None or scale is None:
        raise UsageError(
            f"bad size {text!r} in --max-size: expected a number with an optional unit "
            "(B, KB, MB, GB, TB: powers of 1000; K, M, G, T, KiB, MiB, GiB, TiB: powers of "
            "1024); e.g. --max-size 4GB"
        )
    return math.floor(Fraction(m[1]) * scale)


_SIZE_UNITS = {"": 1, "b": 1}
for _i, _p in enumerate("kmgt", start=1):
    _SIZE_UNITS.update({_p: 1024**_i, f"{_p}ib": 1024**_i, f"{_p}b": 1000**_i})


@dataclass
class Option:
    """One candidate measured on one tensor: ``spec`` (None: kept as it is), the bytes the
    output stores for it, and the error statistics of its reconstruction."""

    label: str
    spec: QuantSpec | None
    nbytes: int
    stats: ErrorStats

    @property
    def bits(self) -> int:
        return 8 * self.nbytes


@dataclass
class PlannedTensor:
    """A tensor the plan quantizes or keeps by choice, with its measured options."""

    info: TensorInfo
    options: list[Option]
    why: str
    fixed: bool
    weight: float = 1.0
    choice: int = 0

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def chosen(self) -> Option:
        return self.options[self.choice]

    @property
    def elements(self) -> int:
        return self.info.size


@dataclass
class PlanResult:
    """A plan with what it costs and gains, tensor by tensor.

    tensors: the planned tensors (quantized, or kept by a rule or the budget), file order;
    kept: (name, reason) of the tensors outside the plan (the selection or the output keeps
    them), and kept_bytes their size; budget_bits: the allocation's limit, or None.
    """

    input: str
    plan: Plan
    tensors: list[PlannedTensor]
    kept: list[tuple[str, str]] = field(default_factory=list)
    kept_bytes: int = 0
    budget: Budget | None = None
    budget_bits: int | None = None

    @property
    def elements(self) -> int:
        return sum(t.elements for t in self.tensors)

    @property
    def nbytes(self) -> int:
        """Bytes of the planned tensors as stored."""
        return sum(t.chosen.nbytes for t in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        n = self.elements
        return 8.0 * self.nbytes / n if n else 0.0

    @property
    def total_bytes(self) -> int:
        """Bytes of every tensor the output stores: planned and kept."""
        return self.nbytes + self.kept_bytes

    @property
    def stats(self) -> ErrorStats:
        total = ErrorStats()
        for t in self.tensors:
            total = total.merge(t.chosen.stats)
        return total

    @property
    def objective_value(self) -> float:
        """The minimised objective: weighted squared errors (see Budget.objective)."""
        objective = self.budget.objective if self.budget else "total"
        return sum(weighted_error(t, t.chosen, objective) for t in self.tensors)


def weighted_error(t: PlannedTensor, option: Option, objective: str) -> float:
    """The objective's value of ``option`` on tensor ``t`` (anything with ``weight`` and
    ``elements``; the option anything with ``stats``): its squared error, relative to the
    tensor's mean square for ``relative``, times the tensor's importance."""
    error = option.stats.sum_sq_error
    if objective == "relative":
        signal = option.stats.sum_sq_signal
        error = error * t.elements / signal if signal > 0 else 0.0
    return t.weight * error


def stored_bytes(
    info: TensorInfo, spec: QuantSpec | None, container: Container | None = None
) -> int:
    """Bytes the output stores for tensor ``info`` quantized with ``spec`` (None: kept),
    from the shapes of its arrays alone."""
    if spec is None:
        return info.nbytes
    if container is not None:
        layout = container.stored(info.name, spec, tuple(info.shape))
    else:
        layout = QuantizedEntry(info.name, spec, tuple(info.shape), info.dtype).stored()
    return sum(math.prod(shape) * np.dtype(dtype).itemsize for _, dtype, shape in layout)


def measure(
    source: TensorSource,
    plan: Plan,
    budget: Budget | None = None,
    container: Container | None = None,
    nonfinite: str = "error",
    progress: ProgressFn | None = None,
    single: bool = False,
) -> PlanResult:
    """Measure the plan on ``source`` and, with a budget, allocate it.

    Every tensor the plan quantizes (or keeps by a rule) is read once; the spec a rule or the
    default gives it, or with a budget every candidate, is quantized and measured, and only
    the statistics are kept: memory follows one tensor and one candidate's arrays. The
    returned PlanResult's ``plan`` assigns every planned tensor its spec.
    """
    base = plan.base
    candidates = budget.candidate_specs(base) if budget is not None else []
    result = PlanResult(source.label, plan, [], budget=budget)
    decisions = []
    todo: list[tuple[TensorInfo, list[tuple[str, QuantSpec | None]], str, bool]] = []
    for info in source.infos():
        sel = plan.choose(info.name, info.dtype, info.shape, single)
        base_sel = plan.selector.choose(info.name, info.dtype, info.shape, single)
        if not base_sel.quantized:
            decisions.append((info, sel))
            result.kept.append((info.name, sel.reason))
            continue
        fixed = plan.fixed(info.name) or budget is None
        if fixed:
            if sel.quantized and container is not None:
                sel = container.choose(info, sel)  # a spec it cannot hold: its own error
                if not sel.quantized:
                    decisions.append((info, sel))
                    result.kept.append((info.name, sel.reason))
                    continue
            if sel.quantized:
                sel = Selection(info.name, sel.spec.for_tensor(info.shape, info.name))
            decisions.append((info, sel))
            label = sel.spec.short_label() if sel.quantized else KEEP
            todo.append((info, [(label, sel.spec)], plan.why(info.name), True))
            continue
        options, kept_reason = _fitting(info, candidates, container)
        if kept_reason is not None:
            decisions.append((info, Selection(info.name, None, kept_reason)))
            result.kept.append((info.name, kept_reason))
            continue
        if not options:
            raise SpecError(
                f"no candidate fits tensor {info.name} of {source.label}: every candidate "
                f"spec ({', '.join(label for label, _ in candidates)}) is refused for its "
                f"shape {list(info.shape)}; add --candidate keep, or another --candidate"
            )
        decisions.append((info, sel))
        todo.append((info, options, "budget", False))
    plan.check(decisions, source.label, single)
    if not todo:
        reasons = sorted({reason for _, reason in result.kept})
        why = f" ({'; '.join(reasons[:3])})" if reasons else ""
        raise InputError(
            f"no tensor to plan in {source.label}: every tensor is kept unquantized{why}; "
            "name tensors with --include or lower --min-elements"
        )
    infos = {info.name: info for info in source.infos()}
    result.kept_bytes = sum(infos[name].nbytes for name, _ in result.kept)
    total = sum(info.size for info, _, _, _ in todo)
    for info, options, why, fixed in todo:
        x = source.read(info.name)
        if nonfinite == "keep":
            bad = count_nonfinite(x)
            if bad:
                result.kept.append((info.name, f"kept: {bad} non-finite values"))
                result.kept_bytes += info.nbytes
                if progress:
                    progress(info.name, info.size, total)
                continue
        measured = [
            Option(label, spec, stored_bytes(info, spec, container), _stats(x, spec, info.name))
            for label, spec in options
        ]
        _fill_keep_stats(measured, x)
        weight = budget.weight(info.name) if budget is not None else 1.0
        result.tensors.append(PlannedTensor(info, measured, why, fixed, weight))
        del x
        if progress:
            progress(info.name, info.size, total)
    if budget is not None:
        _allocate(result, budget)
    result.plan = _assigned_plan(result)
    return result


def reallocate(result: PlanResult, budget: Budget) -> PlanResult:
    """The plan of ``budget`` over the options ``result`` measured (no reading, no
    quantizing): another target on the same measurements."""
    tensors = [
        PlannedTensor(t.info, t.options, t.why, t.fixed, budget.weight(t.name))
        for t in result.tensors
    ]
    out = PlanResult(
        result.input, result.plan, tensors, list(result.kept), result.kept_bytes, budget
    )
    _allocate(out, budget)
    out.plan = _assigned_plan(out)
    return out


def _assigned_plan(result: PlanResult) -> Plan:
    """The Plan that gives every planned tensor of ``result`` its chosen spec."""
    budget = result.budget
    plan = result.plan
    return Plan(
        plan.selector,
        base=plan.base,
        assigned={
            t.name: Assigned(t.chosen.spec, t.why if t.fixed else budget_reason(budget))
            for t in result.tensors
        },
        label=budget_reason(budget),
    )


def budget_reason(budget: Budget | None) -> str:
    return budget.describe if budget is not None else "the plan"


def _fitting(
    info: TensorInfo, candidates, container: Container | None
) -> tuple[list[tuple[str, QuantSpec | None]], str | None]:
    """The candidates that fit tensor ``info`` (and the container), or the reason the
    container keeps the tensor whatever the spec."""
    out = []
    for label, spec in candidates:
        if spec is None:
            out.append((label, None))
            continue
        try:
            spec = fit(spec, info.shape).for_tensor(info.shape, info.name)
            if container is not None:
                sel = container.choose(info, Selection(info.name, spec))
                if not sel.quantized:
                    return [], sel.reason
                spec = sel.spec
        except SpecError:
            continue  # this candidate cannot store this tensor: the others still can
        if all(spec != s for _, s in out):
            out.append((label, spec))
    return out, None


def _stats(x: np.ndarray, spec: QuantSpec | None, name: str) -> ErrorStats:
    if spec is None:
        return ErrorStats(count=int(x.size))  # the signal sums are filled in below
    qt = quantize(x, spec, name, measure=True, packed=True)
    return qt.stats


def _fill_keep_stats(options: list[Option], x: np.ndarray) -> None:
    """A kept tensor is restored exactly: its reconstruction sums are the signal's."""
    measured = [o.stats for o in options if o.spec is not None]
    if measured:
        signal = measured[0].sum_sq_signal
    else:
        signal = ErrorStats.of(x, x).sum_sq_signal
    for option in options:
        if option.spec is None:
            option.stats = ErrorStats(
                count=int(x.size),
                sum_sq_signal=signal,
                sum_sq_reconstruction=signal,
                sum_product=signal,
            )


# -- allocation ----------------------------------------------------------------------------


class Unreachable(Exception):
    """The budget is below the smallest choice; ``least`` is that choice's size in bits."""

    def __init__(self, least: int) -> None:
        super().__init__(least)
        self.least = least


def _allocate(result: PlanResult, budget: Budget) -> None:
    """Choose every planned tensor's option within ``budget`` (PlanResult.tensors' choice)."""
    tensors = result.tensors
    limits = []
    if budget.target_bpw is not None:
        limits.append(math.floor(budget.target_bpw * result.elements))
    if budget.max_size is not None:
        limits.append(8 * (budget.max_size - result.kept_bytes))
    limit = min(limits) if limits else None
    allowed = []
    for t in tensors:
        ok = [
            k
            for k, o in enumerate(t.options)
            if t.fixed or budget.min_sqnr is None or o.stats.sqnr_db >= budget.min_sqnr
        ]
        if not ok:
            best = max(t.options, key=lambda o: o.stats.sqnr_db)
            raise UsageError(
                f"no candidate reaches --min-sqnr {budget.min_sqnr:g} in tensor {t.name}: the "
                f"best is {best.label} at {best.stats.sqnr_db:.2f} dB; lower --min-sqnr, or "
                "add --candidate keep"
            )
        allowed.append(ok)
    bits = [[t.options[k].bits for k in ok] for t, ok in zip(tensors, allowed)]
    errors = [
        [weighted_error(t, t.options[k], budget.objective) for k in ok]
        for t, ok in zip(tensors, allowed)
    ]
    # every candidate on every tensor that has it: allocate never returns worse than these
    labels = dict.fromkeys(o.label for t in tensors if not t.fixed for o in t.options)
    starts = []
    for label in labels:
        start = []
        for t, ok in zip(tensors, allowed):
            ks = [i for i, k in enumerate(ok) if t.options[k].label == label]
            if not ks and not t.fixed:
                break
            start.append(ks[0] if ks else 0)
        else:
            starts.append(start)
    try:
        picks = allocate(bits, errors, limit, starts)
    except Unreachable as exc:
        raise UsageError(_unreachable(result, budget, exc.least)) from None
    for t, ok, k in zip(tensors, allowed, picks):
        t.choice = ok[k]


def _unreachable(result: PlanResult, budget: Budget, least_bits: int) -> str:
    floor = f" under --min-sqnr {budget.min_sqnr:g}" if budget.min_sqnr is not None else ""
    size = least_bits // 8 + result.kept_bytes
    bpw = least_bits / result.elements
    by_bpw = budget.target_bpw is not None and (
        math.floor(budget.target_bpw * result.elements) < least_bits
    )
    if by_bpw:
        need = math.ceil(bpw * 1e4) / 1e4
        return (
            f"target {_fraction_text(budget.target_bpw)} bits per weight unreachable in "
            f"{result.input}: the smallest plan of these candidates{floor} takes "
            f"{bpw:.4f} bits per weight ({size} bytes of tensors); use --target-bpw "
            f"{need:g} or more, or smaller candidates (--candidate)"
        )
    return (
        f"size {budget.max_size} bytes unreachable in {result.input} (--max-size): the "
        f"smallest plan of these candidates{floor} stores {size} bytes of tensors "
        f"({bpw:.4f} bits per weight); use --max-size {size} or more, or smaller candidates "
        "(--candidate)"
    )


def allocate(
    bits: Sequence[Sequence[int]],
    errors: Sequence[Sequence[float]],
    limit: int | None,
    starts: Iterable[Sequence[int]] = (),
) -> list[int]:
    """One option per item minimising the sum of ``errors`` with the sum of ``bits`` at most
    ``limit`` (None: no limit, the smallest option of each item, least error on ties).

    bits[i][k], errors[i][k]: option k of item i (bits >= 0 integers, errors >= 0). Returns
    the option index per item. Raises Unreachable when even the smallest options exceed
    the limit.

    The method (a multiple-choice knapsack): options dominated by a cheaper one with no more
    error are dropped; a greedy pass takes the steps of each item's lower convex hull in
    order of error saved per bit while they fit (the Lagrangian relaxation's solution, optimal
    for the bits it uses); then a fix-up spends what is left on the single changes that save
    the most, and tries exchanges (one item up, another down) that save error within the
    limit, until none does. ``starts`` (e.g. every item on the same candidate) are improved
    the same way, and the best solution is returned, so the result is never worse than any
    start that fits.
    """
    n = len(bits)
    fronts = [_pareto(bits[i], errors[i]) for i in range(n)]
    smallest = [front[0] for front in fronts]
    least = sum(bits[i][k] for i, k in enumerate(smallest))
    if limit is None:
        return smallest
    if least > limit:
        raise Unreachable(least)
    best = _improve(_greedy(bits, errors, fronts, limit), bits, errors, fronts, limit)
    best_error = _total(best, errors)
    for start in starts:
        start = list(start)
        if len(start) != n or sum(bits[i][k] for i, k in enumerate(start)) > limit:
            continue
        start = [_front_equivalent(fronts[i], bits[i], errors[i], k) for i, k in enumerate(start)]
        candidate = _improve(start, bits, errors, fronts, limit)
        error = _total(candidate, errors)
        if error < best_error:
            best, best_error = candidate, error
    return best


def _total(choice, errors) -> float:
    return math.fsum(errors[i][k] for i, k in enumerate(choice))


def _pareto(bits: Sequence[int], errors: Sequence[float]) -> list[int]:
    """Option indices by increasing bits with strictly decreasing error (the others are
    dominated: some option costs no more and errs no more)."""
    order = sorted(range(len(bits)), key=lambda k: (bits[k], errors[k], k))
    front: list[int] = []
    for k in order:
        if not front or errors[k] < errors[front[-1]]:
            front.append(k)
    return front


def _front_equivalent(front, bits, errors, k) -> int:
    """The option of ``front`` that is at least as good as option ``k`` and no larger."""
    return min(
        (j for j in front if bits[j] <= bits[k] and errors[j] <= errors[k]),
        key=lambda j: (errors[j], bits[j]),
    )


def _hull(front: list[int], bits, errors) -> list[int]:
    """The lower convex hull of the (bits, error) points of ``front`` (a Pareto front)."""
    hull: list[int] = []
    for k in front:
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b when it lies on or above the segment from a to k
            cross = (errors[b] - errors[a]) * (bits[k] - bits[a]) - (errors[k] - errors[a]) * (
                bits[b] - bits[a]
            )
            if cross >= 0:
                hull.pop()
            else:
                break
        hull.append(k)
    return hull


def _greedy(bits, errors, fronts, limit: int) -> list[int]:
    """Hull steps in order of error saved per bit, each taken while it fits."""
    hulls = [_hull(front, bits[i], errors[i]) for i, front in enumerate(fronts)]
    choice = [h[0] for h in hulls]
    used = sum(bits[i][k] for i, k in enumerate(choice))
    heap = []

    def push(i: int, pos: int) -> None:
        if pos + 1 < len(hulls[i]):
            a, b = hulls[i][pos], hulls[i][pos + 1]
            slope = (errors[i][a] - errors[i][b]) / (bits[i][b] - bits[i][a])
            heapq.heappush(heap, (-slope, i, pos))

    for i in range(len(hulls)):
        push(i, 0)
    while heap:
        _, i, pos = heapq.heappop(heap)
        a, b = hulls[i][pos], hulls[i][pos + 1]
        step = bits[i][b] - bits[i][a]
        if used + step <= limit:
            choice[i] = b
            used += step
            push(i, pos + 1)
    return choice


# exchanges look at this many of the best moves up and down
_EXCHANGE_MOVES = 512
# and try to finish making room with one step down at this many first positions
_FINISHER_TRIES = 32


def _improve(choice, bits, errors, fronts, limit: int) -> list[int]:
    """Spend the bits left and exchange bits between items while the error falls."""
    choice = list(choice)
    used = sum(bits[i][k] for i, k in enumerate(choice))
    n = len(choice)
    for _ in range(4 * n + 16):
        left = limit - used
        move = _best_single(choice, bits, errors, fronts, left)
        if move is None:
            move = _best_exchange(choice, bits, errors, fronts, left)
        if move is None:
            move = _best_room(choice, bits, errors, fronts, left)
        if move is None:
            break
        for i, k in move:
            used += bits[i][k] - bits[i][choice[i]]
            choice[i] = k
    return choice


def _best_single(choice, bits, errors, fronts, left: int):
    best, saved = None, 0.0
    for i, front in enumerate(fronts):
        c = choice[i]
        for k in front:
            if bits[i][k] - bits[i][c] <= left and errors[i][c] - errors[i][k] > saved:
                best, saved = [(i, k)], errors[i][c] - errors[i][k]
    return best


def _best_exchange(choice, bits, errors, fronts, left: int):
    """The pair (one item to a larger option, another to a smaller one) that fits in
    ``left`` extra bits and saves the most error, or None."""
    ups, downs = [], []
    for i, front in enumerate(fronts):
        c = choice[i]
        for k in front:
            db, de = bits[i][k] - bits[i][c], errors[i][k] - errors[i][c]
            if db > 0 and de < 0:
                ups.append((de / db, i, k, db, de))
            elif db < 0:
                downs.append((de / -db, i, k, db, de))
    if not ups or not downs:
        return None
    ups = sorted(ups)[:_EXCHANGE_MOVES]  # most error saved per bit first
    downs = sorted(downs)[:_EXCHANGE_MOVES]  # least error added per bit freed first
    u = np.array([(i, db, de) for _, i, _, db, de in ups], dtype=np.float64)
    d = np.array([(i, db, de) for _, i, _, db, de in downs], dtype=np.float64)
    net_bits = u[:, 1:2] + d[None, :, 1]
    net_error = u[:, 2:3] + d[None, :, 2]
    ok = (net_bits <= left) & (u[:, 0:1] != d[None, :, 0])
    # a saving must beat rounding in the sums to count
    scale = max(abs(errors[i][c]) for i, c in enumerate(choice)) or 1.0
    ok &= net_error < -1e-12 * scale
    if not ok.any():
        return None
    net_error = np.where(ok, net_error, np.inf)
    a, b = np.unravel_index(int(np.argmin(net_error)), net_error.shape)
    _, i, k, _, _ = ups[a]
    _, j, m, _, _ = downs[b]
    return [(i, k), (j, m)]


def _best_room(choice, bits, errors, fronts, left: int):
    """One item to a larger option, paid for by others stepping down, when that saves
    error; or None. The steps down follow the lower hull of each item's smaller options,
    least error added per bit freed first; the last one is the cheapest single step down of
    any other item that frees what is still needed, when that adds less error."""
    steps = []  # (error added per bit freed, item, option, bits freed, error added)
    singles = []  # (item, option, bits freed, error added): any item to any smaller option
    for i, front in enumerate(fronts):
        c = choice[i]
        below = [k for k in front if bits[i][k] < bits[i][c]]
        if not below:
            continue
        singles += [(i, k, bits[i][c] - bits[i][k], errors[i][k] - errors[i][c]) for k in below]
        # the hull of the smaller options and the current one, walked downwards
        hull = _hull(below + [c], bits[i], errors[i])[::-1]
        for a, b in zip(hull, hull[1:]):
            freed, added = bits[i][a] - bits[i][b], errors[i][b] - errors[i][a]
            steps.append((added / freed, i, b, freed, added))
    if not steps:
        return None
    steps.sort()
    single_item = np.array([s[0] for s in singles])
    single_freed = np.array([s[2] for s in singles], dtype=np.float64)
    single_added = np.array([s[3] for s in singles], dtype=np.float64)
    ups = []
    for i, front in enumerate(fronts):
        c = choice[i]
        for k in front:
            db, de = bits[i][k] - bits[i][c], errors[i][c] - errors[i][k]
            if db > left and de > 0:
                ups.append((-de / db, i, k, db, de))
    ups.sort()
    scale = max(abs(errors[i][c]) for i, c in enumerate(choice)) or 1.0
    best, best_saving = None, 1e-12 * scale
    moved = np.zeros(len(choice), bool)
    for _, i, k, db, de in ups[:_EXCHANGE_MOVES]:
        need, added, moves = db - left, 0.0, {i: k}
        moved[i] = True
        for position, (_, j, m, freed, cost) in enumerate(steps):
            if j == i:
                continue
            if position < _FINISHER_TRIES or freed >= need:
                # finish here with the cheapest single step down that frees what is needed:
                # of an item not moved yet, or one moved further down
                finish = None
                ok = (single_freed >= need) & ~moved[single_item]
                if ok.any():
                    n = int(np.argmin(np.where(ok, single_added, np.inf)))
                    finish = (float(single_added[n]), singles[n][0], singles[n][1])
                for q, now in moves.items():
                    for r in fronts[q] if q != i else ():
                        freed_r = bits[q][now] - bits[q][r]
                        cost_r = errors[q][r] - errors[q][now]
                        if freed_r >= need and (finish is None or cost_r < finish[0]):
                            finish = (cost_r, q, r)
                if finish is not None and de - added - finish[0] > best_saving:
                    best = [*{**moves, finish[1]: finish[2]}.items()]
                    best_saving = de - added - finish[0]
            moves[j] = m  # a later step of the same item goes further down
            moved[j] = True
            need -= freed
            added += cost
            if need <= 0 or de - added <= best_saving:
                break
        if need <= 0 and de - added > best_saving:
            best, best_saving = list(moves.items()), de - added
        moved[list(moves)] = False
    return best


# -- plan files ----------------------------------------------------------------------------


def plan_json(result: PlanResult) -> dict:
    """The plan as a JSON document (``--plan-out``; ``--plan`` reads it back).

    Only ``tensors[*].tensor`` and ``tensors[*].spec`` are read back; the rest records what
    the plan measured. ``spec`` is ``"keep"`` or the QuantSpec fields.
    """
    budget = result.budget
    stats = result.stats
    return {
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "input": result.input,
        "objective": budget.objective if budget else "total",
        "target": {
            "bits_per_weight": float(budget.target_bpw)
            if budget and budget.target_bpw is not None
            else None,
            "max_size": budget.max_size if budget else None,
            "min_sqnr_db": budget.min_sqnr if budget else None,
        },
        "totals": {
            "tensors": len(result.tensors),
            "elements": result.elements,
            "bytes": result.nbytes,
            "bits_per_weight": result.bits_per_weight,
            "kept_bytes": result.kept_bytes,
            "total_bytes": result.total_bytes,
            "sum_sq_error": stats.sum_sq_error,
            "sqnr_db": stats.sqnr_db,
        },
        "tensors": [
            {
                "tensor": t.name,
                "shape": list(t.info.shape),
                "dtype": safetensors_dtype(t.info.dtype),
                "spec": KEEP if t.chosen.spec is None else t.chosen.spec.to_dict(),
                "label": KEEP if t.chosen.spec is None else t.chosen.spec.short_label(),
                "why": t.why if t.fixed else "budget",
                "bytes": t.chosen.nbytes,
                "bits_per_weight": 8.0 * t.chosen.nbytes / t.elements if t.elements else 0.0,
                "sum_sq_error": t.chosen.stats.sum_sq_error,
                "mse": t.chosen.stats.mse,
                "sqnr_db": t.chosen.stats.sqnr_db,
            }
            for t in result.tensors
        ],
    }


def dump_plan(result: PlanResult) -> bytes:
    """The plan file's bytes: strict JSON (an infinite SQNR is written null), one line per
    tensor so that the file reads, diffs and edits line by line."""
    doc = _finite(plan_json(result))
    tensors = doc.pop("tensors")
    head = json.dumps(doc, indent=2, allow_nan=False)
    lines = [json.dumps(t, allow_nan=False) for t in tensors]
    body = ",\n".join("    " + line for line in lines)
    tail = f',\n  "tensors": [\n{body}\n  ]\n}}\n' if lines else ',\n  "tensors": []\n}\n'
    return (head[: head.rindex("}")].rstrip() + tail).encode()


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def save_plan(result: PlanResult, path: str, inputs: Sequence[str], force: bool) -> None:
    """Write the plan file to ``path`` atomically; never over an input, nor over an existing
    file without ``force``."""
    from pathlib import Path

    from quantcli.io.atomic import atomic_write
    from quantcli.ops.outputs import check_output

    check_output(Path(path), [Path(p) for p in inputs], force)
    with atomic_write(Path(path), replace=force) as f:
        f.write(dump_plan(result))


def read_plan(path: str) -> bytes:
    """The bytes of plan file ``path``; InputError when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise InputError(
            f"cannot read plan file {path}: {exc.strerror or exc}; check the path given to --plan"
        ) from None


def load_plan(
    data: bytes, label: str, base: Mapping[str, Any]
) -> tuple[dict[str, Assigned], dict[str, tuple[int, ...]]]:
    """Read a plan file: name -> Assigned, and name -> shape for the entries that give one.

    ``spec`` may be ``"keep"``, the QuantSpec fields, or SPEC text as in ``--rule``
    (``int4``, ``bits=6``: options on top of the command's spec options). UsageError with
    the file and the tensor for anything else.
    """
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"bad plan file {label}: not JSON ({exc}); pass a file written by --plan-out"
        ) from None
    if not isinstance(doc, dict) or doc.get("format") != PLAN_FORMAT:
        raise UsageError(
            f'bad plan file {label}: no "format": "{PLAN_FORMAT}" in it; pass a file '
            "written by --plan-out"
        )
    if doc.get("version") != PLAN_VERSION:
        raise UsageError(
            f"unknown plan version {doc.get('version')!r} in {label}: this quant reads "
            f"version {PLAN_VERSION}; make the plan again with --plan-out"
        )
    entries = doc.get("tensors")
    if not isinstance(entries, list):
        raise UsageError(f'bad plan file {label}: "tensors" is not a list; fix the file')
    assigned: dict[str, Assigned] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for n, entry in enumerate(entries):
        name = entry.get("tensor") if isinstance(entry, dict) else None
        if not isinstance(name, str):
            raise UsageError(
                f'bad plan entry {n} in {label}: no "tensor" name; each entry is '
                '{"tensor": NAME, "spec": SPEC}'
            )
        if name in assigned:
            raise UsageError(f"tensor {name} twice in {label}: give each tensor once")
        where = f"tensor {name} of {label}"
        spec = entry.get("spec")
        if isinstance(spec, dict):
            unknown = sorted(set(spec) - set(spec_fields()))
            if unknown:
                raise UsageError(
                    f"unknown spec key {unknown[0]!r} in {where}: the keys are "
                    f"{', '.join(spec_fields())}"
                )
            try:
                resolved = QuantSpec(**spec)
            except SpecError as exc:
                raise SpecError(_in_context(str(exc), where)) from None
            except TypeError as exc:
                raise UsageError(f"bad spec in {where}: {exc}; fix the file") from None
        elif isinstance(spec, str):
            resolved = parse_spec(spec, where).resolve(base, where)
        else:
            raise UsageError(
                f'bad spec {spec!r} in {where}: expected "keep", a spec such as "int4", or '
                "an object of QuantSpec fields"
            )
        shape = entry.get("shape")
        if shape is not None:
            if not (isinstance(shape, list) and all(isinstance(d, int) for d in shape)):
                raise UsageError(f"bad shape {shape!r} in {where}: expected a list of integers")
            shapes[name] = tuple(shape)
        assigned[name] = Assigned(resolved, label)
    return assigned, shapes
