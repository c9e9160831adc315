"""Level grids of symmetric formats: a group is stored as x ~ s * L[q], q an index into the
sorted level table L, s the group's scale.

Three kinds, each with its own nearest-level kernel (all give the level nearest to t; at an
exact tie either neighbour may come back, which changes no error):

- ``int``: consecutive integers ``lo..hi`` (quant's absmax -qmax..qmax, full-range int
  -2^(b-1)..2^(b-1)-1): rint + clip, the fast path.
- ``float``: a small float format's values (E2M1: 0, 0.5, 1, 1.5, 2, 3, 4, 6 and negatives):
  round |t| to the format's step at its binade (read from the float32 exponent bits), then
  saturate at the largest value. Exact, and ties go to the even mantissa as ml_dtypes does.
- ``codebook``: any sorted table (NF4): the index is the count of midpoints below t.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from quantcli.core.parallel import scratch
from quantcli.core.schemes.nf4 import NF4 as NF4_TABLE
from quantcli.errors import SpecError

_EXPONENT_BITS = np.int32(0x7F800000)


@dataclass(frozen=True, eq=False)
class Grid:
    """The level table of a symmetric format, and how to find the nearest level.

    levels: float32 (k,), sorted ascending, holding 0.
    kind: ``int``, ``float`` or ``codebook`` (see the module docstring).
    mantissa_bits, smallest_step: for ``float`` grids, the step of the format's values is
    ``max(2**(floor(log2 |t|) - mantissa_bits), smallest_step)``.
    """

    name: str
    levels: np.ndarray
    kind: str
    mantissa_bits: int = 0
    smallest_step: float = 0.0
    _midpoints: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        levels = np.asarray(self.levels, np.float32)
        if levels.ndim != 1 or levels.size < 2 or np.any(np.diff(levels) <= 0):
            raise SpecError(f"levels of grid {self.name}: need 2 or more, strictly increasing")
        if levels[0] > 0 or levels[-1] < 0 or 0 not in levels:
            raise SpecError(f"levels of grid {self.name}: 0 must be one of them")
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
            self._nearest_float(t, out, work)
        else:
            self._nearest_codebook(t, out, work)

    def _nearest_float(self, t, out, work) -> None:
        # the step of the format at |t|'s binade is 2**(exponent of |t|) * 2**-mantissa_bits,
        # read from the exponent bits alone (exact: a power of two), and fixed below the
        # smallest normal; t / step is exact, so rint rounds t itself, ties to even
        step = work
        np.abs(t, out=step)
        np.bitwise_and(step.view(np.int32), _EXPONENT_BITS, out=step.view(np.int32))
        np.multiply(step, np.float32(2.0**-self.mantissa_bits), out=step)
        np.clip(step, np.float32(self.smallest_step), None, out=step)
        np.divide(t, step, out=out)
        np.rint(out, out=out)
        np.multiply(out, step, out=out)
        np.clip(out, self.lowest, self.highest, out=out)

    def _nearest_codebook(self, t, out, work) -> None:
        # the index is the count of midpoints below t, counted in bytes (4x less memory
        # traffic than in float32); at 16 levels this beats np.searchsorted 5x
        count = scratch("search-nearest-count", t.shape, np.uint8)
        count.fill(0)
        above = scratch("search-nearest-above", t.shape, bool)
        above_bytes = above.view(np.uint8)
        for midpoint in self._midpoints:
            np.greater(t, midpoint, out=above)
            np.add(count, above_bytes, out=count)
        np.take(self.levels, count, out=out)


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
    and no inf or NaN among the levels (E2M1: ``float_grid("e2m1", 2, 1, 6.0)``)."""
    bias = 2 ** (exponent_bits - 1) - 1
    smallest_step = 2.0 ** (1 - bias - mantissa_bits)
    positive = [0.0]
    value = smallest_step
    while value <= largest:
        positive.append(value)
        step = max(2.0 ** (np.floor(np.log2(value)) - mantissa_bits), smallest_step)
        value += step
    levels = np.array(sorted(set([-v for v in positive] + positive)), np.float32)
    return Grid(name, levels, "float", mantissa_bits, smallest_step)


def codebook_grid(name: str, levels) -> Grid:
    """Any sorted table of levels holding 0 (NF4)."""
    return Grid(name, np.asarray(levels, np.float32), "codebook")


E2M1 = float_grid("e2m1", 2, 1, 6.0)
NF4 = codebook_grid("nf4", NF4_TABLE)  # bitsandbytes' table, as the nf4 scheme holds it


def check_bits(bits: int, lo: int, hi: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not lo <= bits <= hi:
        raise SpecError(f"bits {bits!r} in scale search: use {lo} to {hi}")
