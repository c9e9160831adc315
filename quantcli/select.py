"""Which tensors of a file are quantized, and why the others are kept.

A single-array file is always quantized (the user named it). In a multi-tensor file a tensor
is quantized when it is floating point, has at least two dimensions and at least
``min_elements`` elements, and passes the ``include`` / ``exclude`` globs; a tensor that an
``include`` glob names is quantized even when it is 1-D or small. Everything else is kept byte
for byte, with the reason recorded, so nothing is ever silently changed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fnmatch import fnmatchcase

import numpy as np

from quantcli.core.quantizer import is_float_dtype
from quantcli.core.spec import QuantSpec

DEFAULT_MIN_ELEMENTS = 1024


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
        if not is_float_dtype(dtype):
            kind = {"i": "int", "u": "int", "b": "bool"}.get(np.dtype(dtype).kind)
            return Selection(name, None, f"kept: {kind or np.dtype(dtype)}")
        if any(fnmatchcase(name, pattern) for pattern in self.exclude):
            return Selection(name, None, "kept: --exclude")
        named = any(fnmatchcase(name, pattern) for pattern in self.include)
        if self.include and not named:
            return Selection(name, None, "kept: not in --include")
        if not (single or named):
            if len(shape) < 2:
                return Selection(name, None, f"kept: {len(shape)}-D")
            size = int(np.prod(shape, dtype=np.int64))
            if size < self.min_elements:
                return Selection(name, None, f"kept: < {self.min_elements} elements")
        return Selection(name, self.spec_for(shape))

    def spec_for(self, shape: tuple[int, ...]) -> QuantSpec:
        """The spec for a tensor of ``shape``: per-channel falls back to per-tensor for 0-d/1-D."""
        if self.spec.granularity == "channel" and len(shape) < 2:
            return replace(self.spec, granularity="tensor", axis=0)
        return self.spec
