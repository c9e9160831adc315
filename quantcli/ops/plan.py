"""The per-tensor decision: which spec each tensor of a file gets, and why (docs/MIX.md).

compress and report consume a ``Plan``. Like ``quantcli.select.Selector`` it answers, tensor
by tensor, "quantized with which spec, or kept and why"; the spec comes from the first
``--rule`` whose pattern names the tensor (first match wins; ``keep`` keeps it), else from the
command's own spec options, the default.

Which tensors are quantized at all stays the selector's decision (float, at least 2-D, at
least ``--min-elements``, ``--include`` / ``--exclude``): rules choose how a tensor is
quantized, or keep it, but never quantize a norm or an integer buffer.

Rules are ``PATTERN=SPEC``, split at the first ``=``. PATTERN is a glob (``fnmatch``,
case-sensitive) or ``re:REGEX`` (Python's ``re.fullmatch``), tried on the tensor's name and on
its module name (the name without its last dotted component, so ``lm_head`` names
``lm_head.weight``). SPEC is ``keep``, a preset (``PRESETS``: ``int8``, ``int4``, every scheme
name...), ``key=value,...`` over the fields of ``QuantSpec`` applied on top of the command's
spec options (``bits=6`` is the command's spec at 6 bits), or a preset followed by options
(``int4,group_size=32``).

"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from quantcli.core.spec import SCHEME_ALIASES, QuantSpec
from quantcli.errors import SpecError, UsageError
from quantcli.io.source import TensorInfo
from quantcli.select import Selection, Selector

KEEP = "keep"

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
_FIELD_TYPES: dict[str, type] = {"bits": int, "group_size": int, "axis": int, "percentile": float}


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


# -- the plan ------------------------------------------------------------------------------


class Plan:
    """The spec of every tensor: rules, then the default (module docstring).

    selector: which tensors are quantized at all, and the default spec; base: the command's
    spec options as given (None for a field left to the scheme's default), on which a rule's
    ``key=value`` options apply; rules: first match wins. Rule specs are resolved when the
    plan is made, so a bad one fails before any reading.
    """

    def __init__(
        self,
        selector: Selector,
        rules: Sequence[Rule] = (),
        base: Mapping[str, Any] | None = None,
    ) -> None:
        self.selector = selector
        self.base = dict(base) if base is not None else selector.spec.to_dict()
        self.rules = tuple(rules)
        self.rule_specs = [rule.spec.resolve(self.base, rule.where) for rule in self.rules]

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
        i = self.rule_index(name)
        if i is None:
            return sel
        spec = self.rule_specs[i]
        if spec is None:
            return Selection(name, None, f"kept: --rule {self.rules[i].text}")
        return Selection(name, fit(spec, shape))

    def check(
        self, decisions: Sequence[tuple[TensorInfo, Selection]], label: str, single: bool
    ) -> None:
        """Refuse rules that decide nothing, before anything is read.

        decisions: every tensor of the file with its final selection (after any container
        kept some). A rule must decide at least one tensor (a ``keep`` rule: keep one; a spec
        rule: quantize one).
        """
        names = {info.name: (info, sel) for info, sel in decisions}
        for i, rule in enumerate(self.rules):
            named = [(info, sel) for info, sel in decisions if rule.matches(info.name)]
            decided = [
                (info, sel)
                for info, sel in named
                if self.rule_index(info.name) == i
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
    selector: Selector, base: Mapping[str, Any] | None = None, rules: Sequence[str] = ()
) -> Plan:
    """The plan of a command's options: its ``--rule`` texts."""
    base = dict(base) if base is not None else selector.spec.to_dict()
    return Plan(selector, [parse_rule(text) for text in rules], base)
