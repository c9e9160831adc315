"""Scale search for symmetric formats: x ~ s * L[q], one scale s per group.

The objective of a group, for a scale s (codes q = the level nearest to x / s, x / s
computed in float32 as an encoder does; w the error weights)::

    E(s) = sum_i w_i * (x_i - s * L[q_i])^2

``mse_scales`` tries candidate scales around round-to-nearest's, as llama.cpp's
make_qx_quants does: for each candidate inverse scale, codes = nearest level of x * iscale,
then the least-squares scale for those codes, s* = sum(w x L[q]) / sum(w L[q]^2), whose error
is sum(w x^2) - sum(w x L[q])^2 / sum(w L[q]^2): the best candidate maximizes the last term.
A few refinement steps follow (codes nearest to x / s*, refit): each step can only lower E.
At the end E of the chosen scale and of round-to-nearest's are computed exactly (float64)
with the encoder's own rounding, and a group keeps round-to-nearest's scale unless the search
is strictly better: the result is never worse than round-to-nearest on E, group by group.
"""

from __future__ import annotations

import numpy as np

from quantcli.core.search.chunks import (
    best_rows,
    buffer,
    check_finite,
    check_groups,
    check_weights,
    column_max,
    column_min,
    float64_copy,
    group_slices,
    round_to,
    transposed,
    transposed_weights,
    weighted_sq_error,
)
from quantcli.core.search.grids import Grid
from quantcli.errors import InputError, SpecError


def symmetric_rtn_scales(x, grid: Grid, mirror: bool = False, scale_dtype=np.float32):
    """Round-to-nearest scales: float32 (G,) for x float (G, n).

    amax / grid.reach (every value coded without clipping: amax / qmax for int, amax for NF4,
    amax / 6 for E2M1); 1 for an all-zero group. ``mirror`` (grids whose two sides differ, as
    full-range int): the value of largest magnitude is mapped onto the longer side's end, so
    the scale may be negative (llama.cpp's Q4_0: d = max / -8).
    Rounded to ``scale_dtype`` (the dtype the scales are stored in).
    """
    x = check_groups(x)
    if x.shape[0] == 0:
        return np.ones(0, np.float32)
    hi, lo = x.max(axis=1), x.min(axis=1)
    return _rtn_scales(lo, hi, grid, mirror, scale_dtype)


def mse_scales(
    x,
    grid: Grid,
    *,
    weights="rms_abs",
    rtn=None,
    scale_dtype=np.float32,
    mirror: bool = False,
    candidates: int = 10,
    refinements: int = 1,
    never_worse: bool = True,
    name: str = "tensor",
) -> np.ndarray:
    """Scales of every group that lower E below round-to-nearest's: float32 (G,).

    x: float (G, n), finite; the groups (a ragged last group is the caller's to pad or search
    apart). grid: the format's levels (``grids.int_grid``, ``NF4``, ``E2M1``...).
    weights: ``"rms_abs"`` (default: rms(group) + |x|, llama.cpp's Q4_K weighting),
    ``"square"`` (x^2, as Q6_K), ``"plain"`` (1: the least plain squared error), or a float32
    (G, n) array of non-negative weights.
    rtn: the scales to beat, float32 (G,); default ``symmetric_rtn_scales``.
    scale_dtype: the dtype scales are stored in; the search compares the rounded scales.
    mirror: allow a negative scale as ``symmetric_rtn_scales`` does.
    candidates: how many inverse scales to try, spread over a range that narrows as the grid
    has more levels; refinements: how many least-squares steps follow.
    never_worse: compare each group's result with round-to-nearest's and keep the better
    (False: for a caller that makes that comparison itself, as ``quantize`` does with the
    scheme's own encoder; the search's result may then be worse where it is not strictly
    better).

    Results do not depend on how many groups are passed at once.
    """
    x = check_groups(x, name)
    if not (isinstance(candidates, int) and candidates >= 1):
        raise SpecError(f"candidates {candidates!r} in scale search: use 1 or more")
    if not (isinstance(refinements, int) and refinements >= 0):
        raise SpecError(f"refinements {refinements!r} in scale search: use 0 or more")
    weights = check_weights(weights, x.shape, name)
    n_groups, n = x.shape
    if rtn is not None:
        rtn = np.asarray(rtn, np.float32).reshape(-1)
        if rtn.shape != (n_groups,):
            raise InputError(f"rtn scales in {name}: shape {rtn.shape}, need ({n_groups},)")
    out = np.empty(n_groups, np.float32)
    multipliers = candidate_multipliers(grid, mirror, candidates)
    for part in group_slices(n_groups, n):
        g = part.stop - part.start
        given = None if rtn is None else rtn[part]
        out[part] = _search_chunk(
            x[part],
            grid,
            weights,
            part,
            given,
            scale_dtype,
            mirror,
            multipliers,
            refinements,
            never_worse,
            name,
        )[:g]
    return out


def symmetric_error(x, scale, grid: Grid, weights="plain") -> np.ndarray:
    """E of every group for the given scales: float64 (G,).

    x float (G, n); scale float32 (G,) (nonzero); weights as ``mse_scales`` (computed from
    x itself). Codes are the levels nearest to x / scale (float32), the reconstruction is
    float32 scale * level, and the error is summed in float64.
    """
    x = check_groups(x)
    weights = check_weights(weights, x.shape)
    scale = np.asarray(scale, np.float32).reshape(-1)
    out = np.empty(x.shape[0], np.float64)
    for part in group_slices(*x.shape):
        g = part.stop - part.start
        xt = transposed(x[part])
        w = transposed_weights(weights, part, transposed(x[part], "x64", np.float64), "w64")
        s = np.ones(xt.shape[1], np.float32)
        s[:g] = scale[part]
        t, work = buffer("t", xt.shape), buffer("work", xt.shape)
        out[part] = _error(xt, s, grid, w, t, work, buffer("e64", xt.shape, np.float64))[:g]
    return out


def power_of_two_scales(x, grid: Grid, rtn, *, weights="plain") -> np.ndarray:
    """The best of rtn / 2, rtn and 2 rtn for every group, float32 (G,): the scales a
    power-of-two format (E8M0, as MXFP4's) can store near round-to-nearest's, each group's
    error measured exactly (``symmetric_error``); rtn on ties. x float (G, n); rtn float32
    (G,) powers of two."""
    rtn = np.asarray(rtn, np.float32).reshape(-1)
    best, best_error = rtn, symmetric_error(x, rtn, grid, weights)
    for factor in (np.float32(2), np.float32(0.5)):
        with np.errstate(over="ignore", under="ignore"):
            scale = rtn * factor
        ok = np.isfinite(scale) & (scale > 0)
        scale = np.where(ok, scale, rtn).astype(np.float32)
        error = symmetric_error(x, scale, grid, weights)
        better = error < best_error
        best = np.where(better, scale, best).astype(np.float32)
        best_error = np.where(better, error, best_error)
    return best


def candidate_multipliers(grid: Grid, mirror: bool, count: int) -> np.ndarray:
    """Inverse scales to try, as multiples of round-to-nearest's: float64 (count,).

    Measured on Gaussian and Student-t(5) groups of 64 (docs/SEARCH.md): the best multiple
    lies in [0.87 + 0.6 p^-1.5, 1 + 2 / p] for 98% of groups, p the number of levels on a
    side (p = 7 at 4 bits: 0.90..1.29; p = 1, ternary: 1.47..3; p = 127: 0.87..1.016).
    """
    p = grid.positive_levels if mirror else _reach_levels(grid)
    lo, hi = 0.87 + 0.6 * p**-1.5, 1 + 2 / p
    if count == 1:
        return np.array([1.0])
    return np.linspace(lo, hi, count)


def _reach_levels(grid: Grid) -> int:
    reach = grid.reach
    return int(max(np.sum((grid.levels > 0) & (grid.levels <= reach)), 1))


def _rtn_scales(lo, hi, grid: Grid, mirror: bool, scale_dtype) -> np.ndarray:
    amax = np.maximum(hi, -lo)
    if mirror and -grid.lowest != grid.highest:
        # the extreme value on the longer side's end: Q4_0's d = max / -8
        extreme = np.where(-lo > hi, lo, hi)
        end = grid.lowest if -grid.lowest > grid.highest else grid.highest
        scale = (extreme / np.float32(end)).astype(np.float32)
    else:
        scale = (amax / np.float32(grid.reach)).astype(np.float32)
    scale = round_to(scale, scale_dtype)
    bad = (scale == 0) | ~np.isfinite(scale)
    return np.where(bad, np.float32(1), scale).astype(np.float32)


def _search_chunk(
    part, grid, weights, index, rtn, scale_dtype, mirror, multipliers, steps, never_worse, name
):
    """The search on one chunk of groups (float32 (g, n)): float32 (g or 2,) scales."""
    xt = transposed(part)  # (n, g)
    n, g = xt.shape
    hi, lo = column_max(xt), column_min(xt)
    check_finite(lo, hi, name)
    rtn_full = _rtn_scales(lo, hi, grid, mirror, scale_dtype)
    if rtn is not None:
        rtn_full[: rtn.size] = rtn
    amax = np.maximum(hi, -lo)
    live = amax > 0
    # orientation: the sign of round-to-nearest's scale (always +1 without mirror)
    sign = np.where(rtn_full < 0, np.float32(-1), np.float32(1))
    reach = grid.reach
    if mirror and -grid.lowest != grid.highest:
        reach = max(-grid.lowest, grid.highest)
    # y = x * sign / amax: every group in [-1, 1], so candidate inverse scales are scalars and
    # no sum can overflow or underflow
    norm = np.where(live, amax, np.float32(1)) * sign
    y = np.divide(xt, norm, out=buffer("y", xt.shape))
    w = transposed_weights(weights, index, y)
    t, work = buffer("t", xt.shape), buffer("work", xt.shape)
    # sum(w y L) = sum((w y) L)
    wq = None if w is None else np.multiply(w, y, out=buffer("wy", xt.shape))

    # the sums of every candidate, then one vectorized choice (the first best on ties)
    count = len(multipliers)
    sums = buffer("sums", (2, count, g))
    for k, m in enumerate(multipliers):
        iscale = np.float32(m * reach)
        np.multiply(y, iscale, out=t)
        grid.nearest(t, t, work, bound=float(iscale) * (1 + 1e-6))  # |y| <= 1
        _sums(y, t, w, wq, sums[0, k], sums[1, k])
    best, best_score = _least_squares(sums[0], sums[1], 1 / reach)
    for _ in range(steps):
        np.multiply(y, (1 / best).astype(np.float32), out=t)
        grid.nearest(t, t, work)
        _sums(y, t, w, wq, sums[0, 0], sums[1, 0])
        scale, score = _least_squares(sums[0, :1], sums[1, :1], 1 / reach)
        better = score > best_score
        best = np.where(better, scale, best)
        best_score = np.where(better, score, best_score)

    with np.errstate(over="ignore", under="ignore"):
        found = (best * norm).astype(np.float32)
    found = round_to(found, scale_dtype)
    usable = live & np.isfinite(found) & (found != 0)
    found = np.where(usable, found, rtn_full)
    options = [rtn_full, found] if never_worse else [found]
    if -grid.lowest != grid.highest:
        # a grid whose ends differ (full-range int): round-to-nearest puts only one end on a
        # group's extreme value; the scales that put the minimum on the lowest level and
        # the maximum on the highest are tried too, so that weights the format represents
        # come back exactly (a least-squares scale is exact only up to float rounding)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for end, value in ((grid.lowest, lo), (grid.highest, hi)):
                anchor = round_to((value / np.float32(end)).astype(np.float32), scale_dtype)
                ok = live & np.isfinite(anchor) & (anchor != 0) & (value * end > 0)
                options.append(np.where(ok, anchor, rtn_full))
    if len(options) == 1:
        return found
    e64 = buffer("e64", xt.shape, np.float64)
    # w was computed on y = x * sign / amax: one positive factor per group, the same for all
    w = float64_copy(w)  # once, for every error below
    chosen, e_chosen = options[0], _error(xt, options[0], grid, w, t, work, e64)
    for option in options[1:]:
        e_option = _error(xt, option, grid, w, t, work, e64)
        better = e_option < e_chosen
        chosen = np.where(better, option, chosen)
        e_chosen = np.where(better, e_option, e_chosen)
    return chosen


def _sums(y, t, w, wy, sxl, sll) -> None:
    """sum(w y t) and sum(w t t) of every column into sxl and sll (float32 (g,)); wy = w y."""
    if w is None:
        np.einsum("ij,ij->j", y, t, out=sxl)
        np.einsum("ij,ij->j", t, t, out=sll)
    else:
        np.einsum("ij,ij->j", wy, t, out=sxl)
        np.einsum("ij,ij,ij->j", w, t, t, out=sll)


def _least_squares(sxl, sll, fallback: float):
    """The best of candidates (rows) per group (columns) of float32 sums (k, g): its
    least-squares scale sum(w y L) / sum(w L^2), float64 (g,), and score
    sum(w y L)^2 / sum(w L^2), float32 (g,); the first best on ties; ``fallback`` and a
    score of 0 where no candidate has a code other than 0. (sum(w y L) >= 0: a level has
    the sign of its value.)"""
    score = np.multiply(sxl, sxl)
    np.divide(score, np.maximum(sll, np.float32(1e-30)), out=score)
    k = best_rows(score)
    columns = np.arange(score.shape[1])
    best_score = score[k, columns]
    found = best_score > 0
    top, bottom = sxl[k, columns].astype(np.float64), sll[k, columns].astype(np.float64)
    scale = np.where(found, top / np.where(found, bottom, 1), fallback)
    return scale, np.where(found, best_score, np.float32(0))


def _error(xt, scale, grid, w, t, work, e64) -> np.ndarray:
    """E of every group of xt (n, g) for float32 scales (g,): float64 (g,)."""
    with np.errstate(over="ignore", invalid="ignore"):
        np.divide(xt, scale, out=t)
        grid.nearest(t, t, work)
        np.multiply(t, scale, out=t)
    return weighted_sq_error(xt, t, w, e64)
