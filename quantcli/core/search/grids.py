"""Level grids of symmetric formats: a group is stored as x ~ s * L[q], q an index into the
sorted level table L, s the group's scale.

Three kinds, each with its own nearest-level kernel (all give the level nearest to t; at an
exact tie either neighbour may come back, which changes no error):

- ``int``: consecutive integers ``lo..hi`` (quant's absmax -qmax..qmax, full-range int
  -2^(b-1)..2^(b-1)-1): rint + clip, the fast path.
- ``float``: a small float format's values (E2M1: 0, 0.5, 1, 1.5, 2, 3, 4, 6 and negatives):
  the schemes' own rounding (``schemes/minifloat.py``, which MXFP4 and NVFP4 encode with),
  saturating at the largest value; exact, and ties go to the even mantissa as ml_dtypes does.
- ``codebook``: any sorted table (NF4): the index is the count of midpoints below t
  (``schemes/thresholds.py``, which the nf4 scheme encodes with).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from quantcli.core.parallel import scratch
from quantcli.core.schemes.minifloat import MiniFloat
from quantcli.core.schemes.nf4 import NF4 as NF4_TABLE
from quantcli.core.schemes.thresholds import count_above
from quantcli.errors import SpecError


@dataclass(frozen=True, eq=False)
class Grid:
    """The level table of a symmetric format, and how to find the nearest level.

    levels: float32 (k,), sorted ascending, holding 0.
    kind: ``int``, ``float`` or ``codebook`` (see the module docstring).
    format: for ``float`` grids, the format that rounds to them (``minifloat.MiniFloat``).
    """

    name: str
    levels: np.ndarray
    kind: str
    format: MiniFloat | None = None
    _midpoints: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        levels = np.asarray(self.levels, np.float32)
        if levels.ndim != 1 or levels.size < 2 or np.any(np.diff(levels) <= 0):
            raise SpecError(f"levels of grid {self.name}: need 2 or more, strictly increasing")
        if levels[0] > 0 or levels[-1] < 0 or 0 not in levels:
            raise SpecError(f"levels of grid {self.name}: 0 must be one of them")
        if self.kind == "float" and self.format is None:
            raise SpecError(f"float grid {self.name}: needs its format; make it with float_grid")
        object.__setattr__(self, "levels", levels)
        midpoints = (levels[1:].astype(np.float64) + levels[:-1]) / 2
        object.__setattr__(self, "_midpoints", midpoints.astype(np.float32))

    @property
    def lowest(self) -> float:
        return float(self.levels[0])

    @property
    def highest(self) -> float:
        return float(self.levels[-1])

    @property
    def reach(self) -> float:
        """The largest level magnitude both signs have: min(|L[0]|, L[-1]). A scale of
        amax / reach codes every value of a group without clipping (round-to-nearest)."""
        return min(-self.lowest, self.highest)

    @property
    def positive_levels(self) -> int:
        """How many levels lie above zero on the longer side: sets how finely the search
        must step the scale (an 8-bit grid needs finer steps than a 2-bit one)."""
        return int(max(np.sum(self.levels > 0), np.sum(self.levels < 0)))

    def nearest(
        self, t: np.ndarray, out: np.ndarray, work: np.ndarray | None = None, bound=None
    ) -> None:
        """Write the level nearest to every value of ``t`` (float32) into ``out`` (float32, of
        t's shape; may be ``t`` itself). ``work``: a float32 scratch array of t's shape (the
        ``float`` kernel needs one; it must not be ``t`` or ``out``). ``bound``: a known
        bound of |t|, which lets an integer grid skip its clip when no value can leave it."""
        if self.kind == "int":
            np.rint(t, out=out)
            # a margin below the half step: rint(k + 0.5) may round away
            if bound is None or bound >= min(-self.lowest, self.highest) + 0.499:
                np.clip(out, self.lowest, self.highest, out=out)
        elif self.kind == "float":
            self.format.nearest(t, out)
        else:
            # the index is the count of midpoints below t, counted in bytes; the indices are
            # in range, and take's "clip" mode skips the bounds check (40 % faster)
            count = scratch("search-nearest-count", t.shape, np.uint8)
            count_above(t, self._midpoints, self._ties_down, count)
            np.take(self.levels, count, out=out, mode="clip")

    @property
    def _ties_down(self) -> np.ndarray:
        return np.zeros(self._midpoints.size, bool)


def int_grid(bits: int, full_range: bool = False) -> Grid:
    """Signed integers: -(2^(b-1)-1)..2^(b-1)-1 (quant's absmax, ``full_range=False``) or
    -2^(b-1)..2^(b-1)-1 (full range, as llama.cpp's Q4_0 and compressed-tensors)."""
    check_bits(bits, 2, 8)
    qmax = 2 ** (bits - 1) - 1
    lo = -qmax - 1 if full_range else -qmax
    name = f"int{bits}" + (" full range" if full_range else "")
    return Grid(name, np.arange(lo, qmax + 1, dtype=np.float32), "int")


def float_grid(name: str, exponent_bits: int, mantissa_bits: int, largest: float) -> Grid:
    """The values of a small float format with an exponent bias of 2^(e-1) - 1, subnormals,
    and no inf or NaN among the levels (E2M1: ``float_grid("e2m1", 2, 1, 6.0)``), at most
    128 non-negative values (2 to 7 bits)."""
    bias = 2 ** (exponent_bits - 1) - 1
    smallest_step = 2.0 ** (1 - bias - mantissa_bits)
    positive = [0.0]
    value = smallest_step
    while value <= largest:
        positive.append(value)
        step = max(2.0 ** (np.floor(np.log2(value)) - mantissa_bits), smallest_step)
        value += step
    levels = np.array(sorted(set([-v for v in positive] + positive)), np.float32)
    try:
        return Grid(name, levels, "float", MiniFloat(positive))
    except ValueError as error:
        raise SpecError(f"float grid {name}: {error}; use fewer bits") from None


def codebook_grid(name: str, levels) -> Grid:
    """Any sorted table of levels holding 0 (NF4)."""
    return Grid(name, np.asarray(levels, np.float32), "codebook")


E2M1 = float_grid("e2m1", 2, 1, 6.0)
NF4 = codebook_grid("nf4", NF4_TABLE)  # bitsandbytes' table, as the nf4 scheme holds it


def check_bits(bits: int, lo: int, hi: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not lo <= bits <= hi:
        raise SpecError(f"bits {bits!r} in scale search: use {lo} to {hi}")
