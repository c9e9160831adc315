"""Which tensors of a file are quantized, and why the others are kept; how names are matched
and ordered.

A single-array file is always quantized (the user named it). In a multi-tensor file a tensor
is quantized when it is floating point, has at least two dimensions and at least
``min_elements`` elements, and passes the ``include`` / ``exclude`` patterns; a tensor that an
``include`` pattern names is quantized even when it is 1-D or small. Everything else is kept
byte for byte, with the reason recorded, so nothing is ever silently changed.

Patterns are globs (``*``, ``?``, ``[...]``, case-sensitive) matched against a tensor's name
and against its module name, the name without its last dotted component: ``lm_head`` matches
``lm_head.weight`` and ``lm_head.bias``, as module names do in llm-compressor's ``ignore``;
``*.mlp.*`` and ``model.layers.0.*`` match by tensor name. A pattern that matches no tensor of
the file is an error (``check_patterns``): it is almost always a typo, and ignoring it would
quantize what the user meant to keep.

Names are listed in natural order (``layers.2`` before ``layers.10``): ``natural_key``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase

import numpy as np

from quantcli.core.spec import QuantSpec
from quantcli.errors import UsageError

DEFAULT_MIN_ELEMENTS = 1024

_NUMBER = re.compile(r"([0-9]+)")


def natural_key(name: str) -> tuple:
    """Sort key that orders the numbers inside names by value: ``layers.2`` < ``layers.10``.

    Text and numbers alternate in the key (text at even positions, ints at odd ones), so
    any two keys compare; the name itself breaks ties (``01`` vs ``1``).
    """
    parts = _NUMBER.split(name)
    return (*(int(p) if i % 2 else p for i, p in enumerate(parts)), name)


def module_name(name: str) -> str:
    """``model.layers.0.mlp.up_proj.weight`` -> ``model.layers.0.mlp.up_proj``; a name with no
    dot is its own module name."""
    return name.rpartition(".")[0] or name


def matches(name: str, pattern: str) -> bool:
    """True when the glob ``pattern`` matches the tensor ``name`` or its module name."""
    return fnmatchcase(name, pattern) or fnmatchcase(module_name(name), pattern)


def check_patterns(
    names: Iterable[str], include: Iterable[str], exclude: Iterable[str], label: str
) -> None:
    """UsageError naming the first ``--include`` / ``--exclude`` pattern that matches none of
    ``names`` (the tensors of the file ``label``)."""
    names = list(names)
    for option, patterns in (("--include", include), ("--exclude", exclude)):
        for pattern in patterns:
            if not any(matches(n, pattern) for n in names):
                close = _similar(pattern, names)
                hint = f" (did you mean {close!r}?)" if close else ""
                raise UsageError(
                    f"{option} {pattern!r} matches no tensor in {label}{hint}: a pattern is a "
                    "glob on tensor names (model.layers.*.mlp.*) or module names (lm_head); "
                    "fix it, or drop it (quant inspect lists the names)"
                )


def _similar(pattern: str, names: list[str]) -> str | None:
    """The tensor or module name closest to a pattern without glob characters, if any is."""
    if any(c in pattern for c in "*?["):
        return None
    from difflib import get_close_matches

    candidates = sorted({*names, *(module_name(n) for n in names)}, key=natural_key)
    close = get_close_matches(pattern, candidates, n=1, cutoff=0.8)
    return close[0] if close else None


@dataclass(frozen=True)
class Selection:
    """The decision for one tensor: ``spec`` when it is quantized, else ``reason`` it is kept."""

    name: str
    spec: QuantSpec | None
    reason: str = ""

    @property
    def quantized(self) -> bool:
        return self.spec is not None


@dataclass(frozen=True)
class Selector:
    spec: QuantSpec
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    min_elements: int = DEFAULT_MIN_ELEMENTS

    def choose(self, name: str, dtype: np.dtype, shape: tuple[int, ...], single: bool) -> Selection:
        """Decide for one tensor. ``single``: the file holds only this tensor."""
        # here, not at the top: inspect lists names in natural order without loading the
        # quantization code
        from quantcli.core.quantizer import is_float_dtype

        if not is_float_dtype(dtype):
            kind = {"i": "int", "u": "int", "b": "bool"}.get(np.dtype(dtype).kind)
            return Selection(name, None, f"kept: {kind or np.dtype(dtype)}")
        if any(matches(name, pattern) for pattern in self.exclude):
            return Selection(name, None, "kept: --exclude")
        named = any(matches(name, pattern) for pattern in self.include)
        if self.include and not named:
            return Selection(name, None, "kept: not in --include")
        if not (single or named):
            if len(shape) < 2:
                return Selection(name, None, f"kept: {len(shape)}-D")
            size = int(np.prod(shape, dtype=np.int64))
            if size < self.min_elements:
                return Selection(name, None, f"kept: < {self.min_elements} elements")
        return Selection(name, self.spec_for(shape))

    def check_patterns(self, names: Iterable[str], label: str) -> None:
        """UsageError when an include or exclude pattern matches none of ``names``."""
        check_patterns(names, self.include, self.exclude, label)

    def spec_for(self, shape: tuple[int, ...]) -> QuantSpec:
        """The spec for a tensor of ``shape``: per-channel falls back to per-tensor for 0-d/1-D
        (without a search: one scale per tensor is its range's)."""
        if self.spec.granularity == "channel" and len(shape) < 2:
            return replace(self.spec, granularity="tensor", axis=0, search="none")
        return self.spec
