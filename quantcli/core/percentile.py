"""Exact, fast replacements for ``np.percentile`` (default ``method="linear"``).

``np.percentile`` copies and partitions the whole array; on a 64 Mi element float32 tensor
that costs tens of min/max passes.  Only two order statistics per output element are needed
(ranks ``floor((n - 1) * q / 100)`` and the next one), so the functions here find them by
*bracketing*:

1. take a strided, stratified sample (prime stride) and sort it;
2. read, from the sample, bounds ``lo <= x[k] <= x[k + 1] <= hi`` with a wide statistical
   margin;
3. in one chunked pass, count the elements ``<= lo`` and ``>= hi`` and copy out the few
   elements strictly between them;
4. select the wanted ranks among the copied elements.

Counting makes the answer exact whatever the sample says: a wanted rank outside the
bracket is either tied with ``lo`` (``hi``), which one more count of ``x < lo`` (``x > hi``)
settles (frequent with already-quantized weights), or the sample misled us; then the
bracket is rebuilt with a much wider margin, and finally the rows concerned are
partitioned like NumPy does.

The interpolation mirrors ``numpy.lib._function_base_impl._lerp`` and the virtual-index
arithmetic line for line, including the promotion rules: on NumPy >= 2 a Python ``float``
``q`` on float32 data gives a float32 result and a ``np.float64`` ``q`` float64; NumPy 1.x
gives float64 (there only float64-valued ``q`` take the fast path).  So results are
identical bit for bit, ``inf`` (and the NaN of ``inf - inf``) included.  The only freedom
``np.partition`` has is which of ``-0.0``/``+0.0`` lands on a rank inside a run of zeros;
when that can change the result and the data really mixes both zeros, the affected rows
are computed by ``np.percentile`` itself.  NaN inputs, integer dtypes, array-valued ``q``,
ndarray subclasses and small arrays (< 65536 elements) are delegated to ``np.percentile``.

Reductions over some axes (``axis`` not ``None``) are handled row by row after moving the
reduced axes last: short rows (<= 512 elements, e.g. quantization groups) are sorted with
NumPy's vectorised small-array sort; long rows are bracketed with a per-row sample, except
central ranks of rows too short for a sharp bracket, which are partitioned.  Rows of a
reduction over a leading axis (columns in memory) are transposed block by block in cache.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Iterator

import numpy as np

__all__ = ["abs_percentile", "abs_percentiles", "percentile", "percentiles"]

# Tunables (module level so tests can shrink them to reach every code path on small data).
_SMALL = 1 << 16  # arrays with fewer elements go straight to np.percentile
_BLOCK = 1 << 18  # elements per chunk of the counting pass
_SORT_MAX = 512  # rows up to this length are sorted (NumPy's SIMD small sort is fast)
_FLAT_SAMPLE = 1 << 16  # sample size for a whole-array reduction
_ROW_SAMPLE = 512  # minimum per-row sample size for axis reductions

_FLOAT_TYPES = (np.float16, np.float32, np.float64)
# (z, constant) margins of the sample bracket for attempts 0 and 1; attempt 2 is exact.
_MARGINS_FLAT = ((6.0, 8.0), (40.0, 64.0))
_MARGINS_ROWS = ((4.0, 3.0), (16.0, 24.0))


class _Fallback(Exception):
    """The fast path declines; the caller answers with ``np.percentile``."""


# --------------------------------------------------------------------------------------
# public API


def percentile(
    a: np.ndarray, q: float, axis: int | tuple[int, ...] | None = None, keepdims: bool = False
) -> np.ndarray:
    """``np.percentile(a, q, axis=axis, keepdims=keepdims)``, bit for bit, but faster.

    Same result dtype and type as NumPy (a NumPy scalar when every axis is reduced and
    ``keepdims`` is false; float32 for float32 data and a Python ``float`` ``q``).
    """
    return _dispatch(a, (q,), axis, keepdims, absolute=False)[0]


def percentiles(
    a: np.ndarray,
    qs: tuple[float, float],
    axis: int | tuple[int, ...] | None = None,
    keepdims: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``(percentile(a, qs[0], ...), percentile(a, qs[1], ...))`` in a single data pass.

    Each entry equals ``np.percentile(a, q_i, axis=axis, keepdims=keepdims)`` for the
    *scalar* ``q_i`` (so its dtype follows the scalar-``q`` rules, not the list-``q`` ones).
    Meant for asymmetric range calibration, e.g. ``qs=(0.01, 99.99)``.
    """
    q_lo, q_hi = qs
    lo, hi = _dispatch(a, (q_lo, q_hi), axis, keepdims, absolute=False)
    return lo, hi


def abs_percentile(
    a: np.ndarray, q: float, axis: int | tuple[int, ...] | None = None, keepdims: bool = False
) -> np.ndarray:
    """``np.percentile(np.abs(a), q, ...)`` bit for bit, without materialising ``|a|``."""
    return _dispatch(a, (q,), axis, keepdims, absolute=True)[0]


def abs_percentiles(
    a: np.ndarray,
    qs: tuple[float, float],
    axis: int | tuple[int, ...] | None = None,
    keepdims: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``(abs_percentile(a, qs[0], ...), abs_percentile(a, qs[1], ...))`` in one pass."""
    q_lo, q_hi = qs
    lo, hi = _dispatch(a, (q_lo, q_hi), axis, keepdims, absolute=True)
    return lo, hi


# --------------------------------------------------------------------------------------
# driver


def _dispatch(a, qs, axis, keepdims, absolute):
    def reference(q):
        src = np.abs(a) if absolute else a
        return np.percentile(src, q, axis=axis, keepdims=keepdims)

    try:
        return _fast(a, qs, axis, keepdims, absolute, reference)
    except _Fallback:
        return tuple(reference(q) for q in qs)


def _fast(a, qs, axis, keepdims, absolute, reference):
    if (
        type(a) is not np.ndarray
        or a.dtype.type not in _FLOAT_TYPES
        or not a.dtype.isnative
        or a.ndim == 0
        or a.size == 0
        or a.size < _SMALL
    ):
        raise _Fallback
    nd = a.ndim
    red = tuple(range(nd)) if axis is None else _normalize_axes(axis, nd)
    if len(red) == nd:
        # Whole-array reduction: element order is irrelevant, avoid a copy if possible.
        b = a.ravel(order="K").reshape(1, -1)
        kshape: tuple[int, ...] = ()
    else:
        keep = [i for i in range(nd) if i not in red]
        moved = np.moveaxis(a, keep, range(len(keep)))
        kshape = moved.shape[: len(keep)]
        rows = math.prod(kshape)
        # A view when possible (always for a single axis); transposed rows are copied to a
        # small buffer block by block later, never as a whole (fresh memory is slow).
        b = moved.reshape(rows, a.size // rows)
    rows, m = b.shape

    plans = [_plan(q, m) for q in qs]
    ranks = sorted({r for plan in plans for r in plan[:2]})
    if rows > 1 and m <= _SORT_MAX:
        stats = _sorted_stats(b, ranks, absolute)
    else:
        stats = _bracket_stats(b, ranks, absolute, 0)

    results = []
    for q, (r_prev, r_next, gamma) in zip(qs, plans):
        res = _lerp(stats[r_prev], stats[r_next], gamma)
        if not absolute:  # |x| has no -0.0, so only signed data can be ambiguous
            amb = _ambiguous_zero_rows(stats[r_prev], stats[r_next], gamma, res)
            if amb.size:
                amb = amb[_mixed_zero_rows(b, amb)]
            if amb.size:
                if rows == 1:
                    results.append(reference(q))
                    continue
                res[amb] = np.percentile(b[amb], q, axis=-1)
        out = res.reshape(kshape)
        if not kshape:
            out = out[()]
        if keepdims:
            index = tuple(np.newaxis if i in red else slice(None) for i in range(nd))
            out = out[(Ellipsis,) + index]
        results.append(out)
    return tuple(results)


def _normalize_axes(axis, nd):
    try:
        axes = (operator.index(axis),)
    except TypeError:
        try:
            axes = tuple(operator.index(ax) for ax in axis)
        except TypeError:
            raise _Fallback from None
    if any(not -nd <= ax < nd for ax in axes):
        raise _Fallback  # np.percentile raises the proper AxisError
    red = tuple(ax % nd for ax in axes)
    if len(set(red)) != len(red):
        raise _Fallback
    return red


# --------------------------------------------------------------------------------------
# NumPy's index / interpolation arithmetic (numpy/lib/_function_base_impl.py, NumPy >= 2)

# NumPy >= 2 keeps a float32 q's dtype through the index arithmetic; 1.x code differs there,
# so on 1.x only float64-valued q take the fast path.  Whether a Python float q promotes
# weakly (float32 data -> float32 result) also depends on the version: ask NumPy.
_NUMPY2 = np.lib.NumpyVersion(np.__version__) >= "2.0.0"
_Q_TYPES = (int, float, np.integer, np.float64) + ((np.float32,) if _NUMPY2 else ())


@functools.cache
def _weak_q() -> bool:
    # asked on first use, not at import: np.percentile's first call imports numpy.ma (~15 ms)
    return np.percentile(np.zeros(2, np.float32), 50.0).dtype == np.float32


def _plan(q, n):
    """(rank of previous, rank of next, gamma) exactly as ``np.percentile`` derives them.

    ``gamma`` is a Python float for a Python scalar ``q`` (weak promotion) and a float
    ndarray of shape ``(1,)`` otherwise.
    """
    if isinstance(q, bool) or not isinstance(q, _Q_TYPES):
        raise _Fallback
    weak_q = _weak_q() and type(q) in (int, float)
    quantiles = np.asarray(np.true_divide(q, 100))
    if not (quantiles >= 0 and quantiles <= 1):
        raise _Fallback  # np.percentile raises its ValueError
    virtual = np.asarray((n - 1) * quantiles)
    if virtual >= n - 1:  # q == 100 (q < 0 was rejected above, so never below 0)
        prev = nxt = -1
    else:
        prev = int(np.floor(virtual))
        nxt = prev + 1
    gamma = np.asarray(virtual - np.asarray(prev, dtype=np.intp))
    if _NUMPY2:
        gamma = np.asarray(gamma, dtype=virtual.dtype)
    gamma = float(gamma) if weak_q else gamma.reshape(1)
    return prev % n, nxt % n, gamma


def _lerp(a, b, t):
    """``numpy.lib._function_base_impl._lerp`` (a, b are 1-D arrays here)."""
    diff_b_a = b - a
    lerp_interpolation = np.add(a, diff_b_a * t)
    np.subtract(
        b,
        diff_b_a * (1 - t),
        out=lerp_interpolation,
        where=t >= 0.5,
        casting="unsafe",
        dtype=type(lerp_interpolation.dtype),
    )
    return lerp_interpolation


def _bits(x):
    return x.view(np.dtype(f"u{x.dtype.itemsize}"))


def _ambiguous_zero_rows(va, vb, gamma, res):
    """Rows whose result would change if a zero order statistic had the other sign."""
    zero = (va == 0) | (vb == 0)
    if not zero.any():
        return np.empty(0, np.intp)
    idx = np.flatnonzero(zero)
    sa, sb = va[idx], vb[idx]
    na = np.where(sa == 0, -sa, sa)
    nb = np.where(sb == 0, -sb, sb)
    base = _bits(res[idx])
    amb = np.zeros(idx.size, bool)
    for a2, b2 in ((na, sb), (sa, nb), (na, nb)):
        amb |= _bits(_lerp(a2, b2, gamma)) != base
    return idx[amb]


def _mixed_zero_rows(b, rows):
    """For each of ``rows``: does it hold both -0.0 and +0.0?"""
    if b.shape[0] == 1:
        neg = pos = False
        for _, _, blk, _ in _iter_blocks(b):
            zeros = blk[blk == 0]
            if zeros.size:
                sign = np.signbit(zeros)
                neg = neg or bool(sign.any())
                pos = pos or not bool(sign.all())
        return np.array([neg and pos])
    sub = b[rows]
    zero = sub == 0
    sign = np.signbit(sub)
    return (zero & sign).any(axis=1) & (zero & ~sign).any(axis=1)


# --------------------------------------------------------------------------------------
# order statistics; each returns {rank: 1-D array over rows} (the values of |b| if absolute)


def _sorted_stats(b, ranks, absolute):
    """Sort whole rows (fast for short rows: NumPy's SIMD sort)."""
    return _rowwise_stats(b, ranks, absolute, sort=True)


def _exact_stats(b, ranks, absolute):
    """Order statistics the way NumPy gets them: partition (or sort, for short rows)."""
    return _rowwise_stats(b, ranks, absolute, sort=b.shape[1] <= 4 * _SORT_MAX)


def _rowwise_stats(b, ranks, absolute, sort):
    rows, m = b.shape
    out = {r: np.empty(rows, b.dtype) for r in ranks}
    step = max(1, _BLOCK // m)
    for r0 in range(0, rows, step):
        blk = np.abs(b[r0 : r0 + step]) if absolute else np.array(b[r0 : r0 + step])
        if sort:
            blk.sort(axis=1)
        else:
            blk.partition(ranks, axis=1)
        if np.isnan(blk[:, ranks[-1] :]).any():  # NaN sorts (and partitions) last
            raise _Fallback
        for r in ranks:
            out[r][r0 : r0 + step] = blk[:, r]
    return out


def _blocks(rows, m) -> Iterator[tuple[int, int, int, int]]:
    """(r0, r1, c0, c1) chunks of at most _BLOCK elements, in row-major order."""
    if m >= _BLOCK:
        for r in range(rows):
            for c0 in range(0, m, _BLOCK):
                yield r, r + 1, c0, min(m, c0 + _BLOCK)
    else:
        step = max(1, _BLOCK // m)
        for r0 in range(0, rows, step):
            yield r0, min(rows, r0 + step), 0, m


def _iter_blocks(b, absolute=False):
    """Contiguous blocks of ``b`` (of ``|b|`` if absolute), as (r0, r1, block, rows_done).

    ``rows_done``: the block ends rows r0..r1 (their last columns are in it).

    The blocks share one buffer when ``b`` has to be copied (strided rows) or transformed.
    """
    rows, m = b.shape
    strided = b.strides[1] != b.itemsize
    # e.g. a reduction over axis 0: the rows of b are the columns of the data
    transposed = strided and b.strides[0] == b.itemsize
    buf = np.empty(min(_BLOCK, rows * m), b.dtype) if strided or absolute else None
    for r0, r1, c0, c1 in _blocks(rows, m):
        blk = b[r0:r1, c0:c1]
        if transposed:  # read memory in order, transpose in cache
            blk = np.ascontiguousarray(blk.T).T
        if buf is not None:
            dst = buf[: blk.size].reshape(blk.shape)
            if absolute:
                blk = np.abs(blk, out=dst)
            else:
                np.copyto(dst, blk)
                blk = dst
        yield r0, r1, blk, c1 == m


def _rowcount(mask):
    if mask.shape[0] == 1:
        return np.array([np.count_nonzero(mask)], np.intp)
    return np.count_nonzero(mask, axis=1)


def _prime_at_least(k):
    k = max(2, k)
    while any(k % d == 0 for d in range(2, math.isqrt(k) + 1)):
        k += 1
    return k


def _sample_size(rows):
    return max(_ROW_SAMPLE, _FLAT_SAMPLE // rows)


def _sample(b, absolute):
    """Sorted per-row sample of ``b`` (of ``|b|``), rows of at least 2 * _sample_size.

    The sample is stratified (a prime stride through the row).  Sampling single elements
    with a short stride would touch every cache line, so short strides sample whole
    64-byte lines instead.
    """
    rows, m = b.shape
    target = _sample_size(rows)
    line = max(1, 64 // b.itemsize)
    step = _prime_at_least(m // target)
    if step >= 8 * line or m < 8 * line:
        samp = b[:, step // 2 :: step]
    else:
        n_lines = m // line
        step = _prime_at_least(n_lines * line // target)
        lines = b[:, : n_lines * line].reshape(rows, n_lines, line)
        samp = lines[:, min(step // 2, n_lines - 1) :: step].reshape(rows, -1)
    samp = np.abs(samp) if absolute else np.array(samp)
    samp.sort(axis=1)
    if np.isnan(samp[:, -1]).any():  # NaN sorts last
        raise _Fallback
    return samp


def _brackets(s, m, ranks, margins):
    """Group ``ranks`` into brackets [j_lo, j_hi, ranks] of positions in a sample of s."""
    z, c = margins
    spans = []
    for r in ranks:
        f = (r + 0.5) / m
        centre = f * s - 0.5
        margin = z * math.sqrt(s * f * (1.0 - f)) + c
        spans.append([math.floor(centre - margin), math.ceil(centre + margin), [r]])
    spans.sort(key=lambda span: span[0])
    merged = [spans[0]]
    for span in spans[1:]:
        last = merged[-1]
        if span[0] <= last[1]:
            last[1] = max(last[1], span[1])
            last[2] += span[2]
        else:
            merged.append(span)
    return merged


def _bracket_stats(b, ranks, absolute, attempt):
    rows, m = b.shape
    margins = _MARGINS_FLAT if rows == 1 else _MARGINS_ROWS
    if attempt >= len(margins):
        return _exact_stats(b, ranks, absolute)
    if m < 2 * _sample_size(rows):  # a sample would be most of the row: sort the rows
        return _sorted_stats(b, ranks, absolute)
    samp = _sample(b, absolute)
    s = samp.shape[1]
    spans = _brackets(s, m, ranks, margins[attempt])
    if rows > 1:
        # Central ranks of short samples give wide brackets: copying a good part of every
        # row out and sorting it would cost more than partitioning the rows.
        width = sum(min(j_hi, s - 1) - max(j_lo, 0) + 1 for j_lo, j_hi, _ in spans)
        if width > s // 4:
            return _exact_stats(b, ranks, absolute)
    brackets = []
    for j_lo, j_hi, franks in spans:
        lo = np.ascontiguousarray(samp[:, j_lo]) if j_lo >= 0 else None
        hi = np.ascontiguousarray(samp[:, j_hi]) if j_hi < s else None
        brackets.append(_Bracket(lo, hi, franks, rows))

    # The single pass over the data; rows are resolved as soon as they are complete, so
    # the copied-out candidates stay few and cache-sized.
    out = {r: np.empty(rows, b.dtype) for r in ranks}
    failed = np.zeros(rows, bool)
    size = min(_BLOCK, rows * m)
    masks = np.empty(size, bool), np.empty(size, bool)
    for r0, r1, blk, rows_done in _iter_blocks(b, absolute):
        m1 = masks[0][: blk.size].reshape(blk.shape)
        m2 = masks[1][: blk.size].reshape(blk.shape)
        for br in brackets:
            br.scan(blk, r0, r1, m1, m2)
            if rows_done:
                br.select(r1, out, failed)
    for br in brackets:
        br.resolve_ties(b, m, absolute, out, failed)
    if failed.any():
        idx = np.flatnonzero(failed)
        sub = b if idx.size == rows else b[idx]
        redo = _bracket_stats(sub, ranks, absolute, attempt + 1)
        for r in ranks:
            out[r][idx] = redo[r]
    return out


class _Bracket:
    """Counts ``<= lo`` / ``>= hi`` per row and collects the elements in between."""

    def __init__(self, lo, hi, ranks, rows):
        self.lo, self.hi, self.ranks = lo, hi, ranks
        self.disjoint = lo is not None and hi is not None and bool(np.all(lo < hi))
        self.n_le = np.zeros(rows, np.intp)  # elements <= lo
        self.n_in = np.zeros(rows, np.intp)  # elements strictly inside
        self.values: list[np.ndarray] = []  # those elements of the rows not yet selected
        self.done = 0  # rows before this one are selected

    def scan(self, blk, r0, r1, m1, m2):
        width = blk.shape[1]
        outside = None
        if self.lo is not None:
            np.less_equal(blk, self.lo[r0:r1, None], out=m1)
            n_out = _rowcount(m1)
            self.n_le[r0:r1] += n_out
            outside = m1
        if self.hi is not None:
            np.greater_equal(blk, self.hi[r0:r1, None], out=m2)
            n_ge = _rowcount(m2)
            if outside is None:
                outside, n_out = m2, n_ge
            else:
                np.logical_or(m1, m2, out=m1)
                # <= lo and >= hi overlap only where the sample tied lo and hi
                n_out = n_out + n_ge if self.disjoint else _rowcount(m1)
        if outside is None:  # unbounded bracket: everything is a candidate
            self.n_in[r0:r1] += width
            self.values.append(blk.ravel().copy())
            return
        n_in = width - n_out
        if n_in.any():
            self.n_in[r0:r1] += n_in
            # NaN is neither <= lo nor >= hi, so it always lands here (checked later).
            self.values.append(blk[np.logical_not(outside, out=outside)])

    def select(self, r1, out, failed):
        """Pick the ranks inside the bracket for rows done..r1, whose counts are final."""
        r0, self.done = self.done, r1
        values = np.concatenate(self.values) if self.values else None
        self.values = []
        if values is None:
            return
        if np.isnan(values).any():
            raise _Fallback
        n_le = self.n_le[r0:r1]
        n_in = self.n_in[r0:r1]
        if r1 - r0 == 1:
            rel = {r: int(r - n_le[0]) for r in self.ranks}
            kth = sorted({k for k in rel.values() if 0 <= k < n_in[0]})
            if kth:
                values.partition(kth)
                for r, k in rel.items():
                    if 0 <= k < n_in[0]:
                        out[r][r0] = values[k]
            return
        # Several rows: lay every row's candidates out in a row padded with +inf, sort rows.
        cap = max(_SORT_MAX, 4 * int(np.median(n_in)) + 64)
        big = n_in > cap
        if big.any():  # a misleading sample: leave the row to the next attempt
            failed[r0:r1] |= big
            values = values[np.repeat(~big, n_in)]
            n_in = np.where(big, 0, n_in)
        width = int(n_in.max())
        # destination of candidate i of row k: k * width + (i - start of row k)
        starts = np.cumsum(n_in) - n_in
        nonempty = np.flatnonzero(n_in)
        shift = nonempty * width - starts[nonempty]
        dest = np.zeros(values.size, np.intp)
        dest[starts[nonempty]] = np.diff(shift, prepend=0)
        np.cumsum(dest, out=dest)
        dest += np.arange(values.size)
        padded = np.full((r1 - r0) * width, np.inf, values.dtype)
        padded[dest] = values
        padded = padded.reshape(r1 - r0, width)
        padded.sort(axis=1)
        for r in self.ranks:
            rel = r - n_le
            idx = np.flatnonzero((rel >= 0) & (rel < n_in))
            out[r][r0 + idx] = padded[idx, rel[idx]]

    def resolve_ties(self, b, m, absolute, out, failed):
        """Ranks outside the bracket: tied with lo (hi), or else the sample misled us."""
        for side, bound in (("lt", self.lo), ("gt", self.hi)):
            want = {}
            for r in self.ranks:
                rel = r - self.n_le
                want[r] = rel < 0 if side == "lt" else rel >= self.n_in
            mask = np.logical_or.reduce(list(want.values()))
            if not mask.any():
                continue
            idx = np.flatnonzero(mask)
            strict = _count_rows(b, idx, bound[idx], side, absolute)  # < lo or > hi
            for r in self.ranks:
                w = want[r][idx]
                hit = w & (strict <= r if side == "lt" else r < m - strict)
                out[r][idx[hit]] = bound[idx[hit]]
                failed[idx[w & ~hit]] = True


def _count_rows(b, idx, bound, side, absolute):
    """Per row of ``b[idx]``: number of elements < bound ("lt") or > bound ("gt")."""
    sub = b if idx.size == b.shape[0] else b[idx]
    op = np.less if side == "lt" else np.greater
    counts = np.zeros(idx.size, np.intp)
    for r0, r1, blk, _ in _iter_blocks(sub, absolute):
        counts[r0:r1] += _rowcount(op(blk, bound[r0:r1, None]))
    return counts
