"""Scale and offset search for affine formats: codes q in 0..2^b - 1, and either

- a float offset m (GGUF's Q4_1 / Q4_K store a float min): x_hat = s * q + m, encoded as
  q = clip(rint((x - m) / s), 0, 2^b - 1); or
- an integer zero point z (quant's zeropoint scheme): x_hat = s * (q - z), encoded as
  q = clip(rint(x / s) + z, 0, 2^b - 1), z in 0..2^b - 1.

The objective of a group is E = sum_i w_i * (x_i - x_hat_i)^2 with the encoder's codes.

``affine_search`` is make_qkx2_quants' idea (llama.cpp's K-quants) made two-dimensional:
candidate codes come from a grid of inverse scales (around (2^b - 1) / (max - min)) and
offsets (the codes' grid shifted by a fraction of a step, around the group's centre: clipping
both ends, not only the top as an anchor at the minimum does), each refit by weighted least
squares (scale and offset jointly for the float variant; the scale, for the zero point the
candidate implies, for the integer one), then a few refinement steps (codes from the best
fit, refit), each of which can only lower E. The float offset is kept <= 0 by default, as
llama.cpp does (its K-quants store -m as an unsigned 6-bit code). As for the symmetric
search, the result is compared exactly with round-to-nearest's and never worse on E.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantcli.core.search.chunks import (
    best_rows,
    buffer,
    check_finite,
    check_groups,
    check_weights,
    column_max,
    column_min,
    dot,
    float64_copy,
    group_slices,
    round_to,
    transposed,
    transposed_weights,
    weighted_sq_error,
)
from quantcli.core.search.grids import check_bits
from quantcli.errors import InputError, SpecError

OFFSETS = ("float", "integer")


@dataclass
class AffineParams:
    """Parameters of G groups of an affine format.

    scale: float32 (G,), > 0.
    offset: float32 (G,) for the float variant (x_hat = scale * q + offset), else None.
    zero_point: uint8 (G,) for the integer variant (x_hat = scale * (q - zero_point)), else
    None.
    """

    scale: np.ndarray
    offset: np.ndarray | None = None
    zero_point: np.ndarray | None = None

    @property
    def kind(self) -> str:
        return "float" if self.offset is not None else "integer"

    def select(self, take: np.ndarray, other: AffineParams) -> AffineParams:
        """These parameters where ``take`` (bool (G,)), ``other``'s elsewhere."""
        scale = np.where(take, self.scale, other.scale)
        if self.offset is not None:
            return AffineParams(scale, offset=np.where(take, self.offset, other.offset))
        return AffineParams(scale, zero_point=np.where(take, self.zero_point, other.zero_point))


def affine_rtn(
    x, bits: int, offset: str = "float", *, nonpositive_offset: bool = True, scale_dtype=np.float32
) -> AffineParams:
    """Round-to-nearest (min-max) parameters of every group of x float (G, n).

    integer: quant's zeropoint rule: lo = min(min x, 0), hi = max(max x, 0),
    scale = (hi - lo) / (2^b - 1), zero point = clip(rint(-lo / scale), 0, 2^b - 1).
    float: scale = (max x - lo) / (2^b - 1), offset = lo, with lo = min(min x, 0) when
    ``nonpositive_offset`` (else min x, GGUF's Q4_1). A group with one value gets scale 1.
    Scale (and offset) rounded to ``scale_dtype``.
    """
    x = check_groups(x)
    check_bits(bits, 2, 8)
    check_offset(offset)
    if x.shape[0] == 0:
        return _empty(offset)
    return rtn_params(x.min(axis=1), x.max(axis=1), bits, offset, nonpositive_offset, scale_dtype)


def affine_search(
    x,
    bits: int,
    offset: str = "float",
    *,
    weights="rms_abs",
    rtn: AffineParams | None = None,
    nonpositive_offset: bool = True,
    scale_dtype=np.float32,
    candidates: int = 6,
    shifts: int = 4,
    refinements: int = 2,
    never_worse: bool = True,
    name: str = "tensor",
) -> AffineParams:
    """Parameters of every group that lower E below round-to-nearest's.

    x: float (G, n), finite. bits: 2..8. offset: ``"float"`` or ``"integer"`` (see the
    module docstring). weights: as ``symmetric.mse_scales`` (default rms(group) + |x|).
    rtn: the parameters to beat (default ``affine_rtn``). nonpositive_offset: keep the float
    offset <= 0. scale_dtype: the dtype scales and float offsets are stored in.
    candidates x shifts: the grid of inverse scales and code shifts tried; refinements: the
    least-squares steps after it. never_worse: as ``symmetric.mse_scales``.

    Results do not depend on how many groups are passed at once.
    """
    x = check_groups(x, name)
    check_bits(bits, 2, 8)
    check_offset(offset)
    for label, value, least in (
        ("candidates", candidates, 1),
        ("shifts", shifts, 1),
        ("refinements", refinements, 0),
    ):
        if not (isinstance(value, int) and value >= least):
            raise SpecError(f"{label} {value!r} in scale search: use {least} or more")
    weights = check_weights(weights, x.shape, name)
    n_groups, n = x.shape
    if rtn is not None and rtn.scale.shape != (n_groups,):
        raise InputError(f"rtn parameters in {name}: shape {rtn.scale.shape}, need ({n_groups},)")
    nmax = 2**bits - 1
    grid = _candidate_grid(nmax, candidates, shifts)
    result = empty_params(offset, n_groups)
    for part in group_slices(n_groups, n):
        g = part.stop - part.start
        given = None if rtn is None else part_of(rtn, part)
        found = _search_chunk(
            x[part],
            nmax,
            offset,
            weights,
            part,
            given,
            nonpositive_offset,
            scale_dtype,
            grid,
            refinements,
            never_worse,
            name,
        )
        result.scale[part] = found.scale[:g]
        if offset == "float":
            result.offset[part] = found.offset[:g]
        else:
            result.zero_point[part] = found.zero_point[:g]
    return result


def affine_error(x, params: AffineParams, bits: int, weights="plain") -> np.ndarray:
    """E of every group for the given parameters: float64 (G,), codes as the encoder makes
    them, reconstruction in float32, errors summed in float64."""
    x = check_groups(x)
    weights = check_weights(weights, x.shape)
    nmax = 2**bits - 1
    out = np.empty(x.shape[0], np.float64)
    for part in group_slices(*x.shape):
        g = part.stop - part.start
        xt = transposed(x[part])
        w = transposed_weights(weights, part, transposed(x[part], "x64", np.float64), "w64")
        p = padded(part_of(params, part), xt.shape[1])
        t, e64 = buffer("t", xt.shape), buffer("e64", xt.shape, np.float64)
        out[part] = chunk_error(xt, p, nmax, w, t, e64)[:g]
    return out


def candidate_grid(bits: int, candidates: int = 6, shifts: int = 4):
    """The (multiplier, shift) pairs tried: float64 (candidates * shifts, 2). Multipliers
    scale the min-max inverse scale (2^b - 1) / (max - min) over [0.9, 1 + 2 / (2^b-1)^0.8]
    (measured: docs/SEARCH.md); shifts move the codes' grid by a fraction of a step."""
    return _candidate_grid(2**bits - 1, candidates, shifts)


def _candidate_grid(nmax: int, candidates: int, shifts: int) -> np.ndarray:
    hi = 1 + 2 / nmax**0.8
    mults = np.linspace(0.9, hi, candidates) if candidates > 1 else np.array([1.0])
    steps = (np.arange(shifts) + 0.5) / shifts - 0.5  # 3 -> -1/3, 0, 1/3
    return np.array([(m, s) for m in mults for s in steps])


def check_offset(offset: str) -> None:
    if offset not in OFFSETS:
        raise SpecError(f"unknown offset {offset!r} in scale search: choose float or integer")


def _empty(offset: str) -> AffineParams:
    return empty_params(offset, 0)


def empty_params(offset: str, n: int) -> AffineParams:
    scale = np.ones(n, np.float32)
    if offset == "float":
        return AffineParams(scale, offset=np.zeros(n, np.float32))
    return AffineParams(scale, zero_point=np.zeros(n, np.uint8))


def part_of(p: AffineParams, part: slice) -> AffineParams:
    return AffineParams(
        p.scale[part],
        None if p.offset is None else p.offset[part],
        None if p.zero_point is None else p.zero_point[part],
    )


def padded(p: AffineParams, g: int) -> AffineParams:
    """p with its arrays padded to g groups (scale 1, offset / zero point 0)."""
    if p.scale.size == g:
        return p
    extra = g - p.scale.size
    scale = np.concatenate([p.scale, np.ones(extra, np.float32)])
    if p.offset is not None:
        return AffineParams(scale, offset=np.concatenate([p.offset, np.zeros(extra, np.float32)]))
    return AffineParams(scale, zero_point=np.concatenate([p.zero_point, np.zeros(extra, np.uint8)]))


def rtn_params(lo, hi, bits, offset, nonpositive_offset, scale_dtype) -> AffineParams:
    nmax = 2**bits - 1
    if offset == "integer" or nonpositive_offset:
        lo = np.minimum(lo, np.float32(0))
    if offset == "integer":
        hi = np.maximum(hi, np.float32(0))
    span = hi.astype(np.float64) - lo.astype(np.float64)
    scale = round_to((span / nmax).astype(np.float32), scale_dtype)
    bad = (scale == 0) | ~np.isfinite(scale)
    scale = np.where(bad, np.float32(1), scale).astype(np.float32)
    if offset == "float":
        return AffineParams(scale, offset=round_to(lo.astype(np.float32), scale_dtype))
    with np.errstate(over="ignore", invalid="ignore"):
        zp = np.clip(np.rint(-lo / scale), 0, nmax)
    return AffineParams(scale, zero_point=np.where(bad, 0, zp).astype(np.uint8))


def _search_chunk(
    part, nmax, offset, weights, index, rtn, nonpositive, scale_dtype, grid, steps, never_worse,
    name,
) -> AffineParams:  # fmt: skip
    xt = transposed(part)
    g = xt.shape[1]
    hi, lo = column_max(xt), column_min(xt)
    check_finite(lo, hi, name)
    bits = int(nmax).bit_length()
    base = rtn_params(lo, hi, bits, offset, nonpositive, scale_dtype)
    if rtn is not None:
        given = padded(rtn, g)
        base = AffineParams(given.scale.copy(), given.offset, given.zero_point)
    if offset == "integer" or nonpositive:
        lo = np.minimum(lo, np.float32(0))
    if offset == "integer":
        hi = np.maximum(hi, np.float32(0))
    span = hi.astype(np.float64) - lo.astype(np.float64)
    live = span > 0
    # normalized by half the range (which, unlike the range, fits in float32): the range
    # has width 2 (centred on 0 for the float variant), so candidate inverse scales and
    # shifts are scalars and no sum overflows
    unit = np.where(live, span / 2, 1.0)
    centre = (hi.astype(np.float64) + lo) / 2 if offset == "float" else np.zeros(g)
    y = np.divide(xt, unit.astype(np.float32), out=buffer("y", xt.shape))
    # the weights of x / unit: one positive factor per group from x's own, which leaves
    # the comparison of two parameter sets of a group unchanged (not so after centring)
    w = transposed_weights(weights, index, y)
    if offset == "float":
        np.subtract(y, (centre / unit).astype(np.float32), out=y)
        found = _search_float(y, w, nmax, grid, steps, -centre / unit, nonpositive)
        s_n, m_n = found
        with np.errstate(over="ignore", invalid="ignore"):
            scale = round_to((s_n * unit).astype(np.float32), scale_dtype)
            off = round_to((centre + m_n * unit).astype(np.float32), scale_dtype)
        if nonpositive:
            off = np.minimum(off, np.float32(0))
        usable = live & np.isfinite(scale) & (scale > 0) & np.isfinite(off)
        candidate = AffineParams(np.where(usable, scale, 1).astype(np.float32), offset=off)
    else:
        s_n, zp = _search_integer(y, w, nmax, grid, steps, (hi / unit, lo / unit))
        with np.errstate(over="ignore", invalid="ignore"):
            scale = round_to((s_n * unit).astype(np.float32), scale_dtype)
        usable = live & np.isfinite(scale) & (scale > 0)
        candidate = AffineParams(np.where(usable, scale, 1).astype(np.float32), zero_point=zp)
    if not never_worse:
        return candidate.select(usable, base)
    t, e64 = buffer("t", xt.shape), buffer("e64", xt.shape, np.float64)
    w = float64_copy(w)  # once, for both errors
    e_base = chunk_error(xt, base, nmax, w, t, e64)
    e_found = chunk_error(xt, candidate, nmax, w, t, e64)
    return candidate.select(usable & (e_found < e_base), base)


def _search_float(y, w, nmax, grid, steps, offset_cap, nonpositive):
    """Least-squares (scale, offset) in normalized units for y (n, g): float64 (g,) each."""
    n, g = y.shape
    if w is None:
        sw, wy = np.full(g, float(n)), y
    else:
        sw, wy = _colsum(w).astype(np.float64), np.multiply(w, y, out=buffer("wy", y.shape))
    moments = (sw, _colsum(wy).astype(np.float64), dot(wy, y).astype(np.float64))
    cap = offset_cap if nonpositive else np.full(g, np.inf)
    t = buffer("t", y.shape)
    wq = None if w is None else buffer("wq", y.shape)
    # the sums of every candidate, then one vectorized choice (the first best on ties)
    sums = buffer("sums", (3, len(grid), g))
    scaled = buffer("scaled", y.shape)
    for k, (mult, shift) in enumerate(grid):
        # codes of a grid centred on the group's centre: y * iscale + nmax / 2 + shift
        if k == 0 or mult != grid[k - 1][0]:
            np.multiply(y, np.float32(mult * nmax / 2), out=scaled)
        np.add(scaled, np.float32(nmax / 2 + shift), out=t)
        np.rint(t, out=t)
        np.clip(t, 0, nmax, out=t)
        _float_sums(y, t, w, wq, sums[:, k])
    best_s, best_m, best_e = _fit_float(sums, moments, cap, nmax)
    for _ in range(steps):
        np.subtract(y, best_m.astype(np.float32), out=t)
        np.multiply(t, (1 / best_s).astype(np.float32), out=t)
        np.rint(t, out=t)
        np.clip(t, 0, nmax, out=t)
        _float_sums(y, t, w, wq, sums[:, 0])
        s, m, e = _fit_float(sums[:, :1], moments, cap, nmax)
        better = e < best_e
        best_s, best_m = np.where(better, s, best_s), np.where(better, m, best_m)
        best_e = np.where(better, e, best_e)
    return best_s, best_m


def _float_sums(y, t, w, wq, out) -> None:
    """sum(w q), sum(w q^2), sum(w y q) of every column of codes t into out (3, g)."""
    if w is None:
        np.add.reduce(t, axis=0, out=out[0])
        np.einsum("ij,ij->j", t, t, out=out[1])
        np.einsum("ij,ij->j", y, t, out=out[2])
    else:
        np.multiply(w, t, out=wq)
        np.add.reduce(wq, axis=0, out=out[0])
        np.einsum("ij,ij->j", wq, t, out=out[1])
        np.einsum("ij,ij->j", wq, y, out=out[2])


def _fit_float(sums, moments, cap, nmax):
    """Weighted least squares y ~ s q + m (m <= cap) of every candidate (rows of float32
    sums (3, k, g): sum w q, sum w q^2, sum w y q), and the best per group: s, m and E,
    float64 (g,) each.

    The candidates are compared in float32, in place (a few dozen operations on every
    candidate of every group: their memory traffic is the fit's cost). With det = sw sll -
    sl^2 > 0, the unconstrained optimum s = (sw syl - sy sl) / det, m = (sll sy - sl syl) /
    det has the error syy - (s syl + m sy): the best candidate maximizes the last term. Its
    fit and E are then computed in float64; groups where it breaks m <= cap (few: a group's
    offset rarely reaches above its own minimum) compare all their candidates again in
    float64, each at its optimum on the boundary where the free one is out of bounds.
    """
    sw, sy, syy = moments
    sl, sll, syl = sums
    shape = sl.shape
    det, ns, nm, gain, tmp = (buffer(f"fit-{n}", shape) for n in ("det", "s", "m", "g", "t"))
    sw32, sy32 = sw.astype(np.float32), sy.astype(np.float32)
    np.multiply(sll, sw32, out=det)
    np.subtract(det, np.multiply(sl, sl, out=tmp), out=det)  # sw sll - sl^2
    np.multiply(syl, sw32, out=ns)
    np.subtract(ns, np.multiply(sl, sy32, out=tmp), out=ns)  # s * det
    np.multiply(sll, sy32, out=nm)
    np.subtract(nm, np.multiply(sl, syl, out=tmp), out=nm)  # m * det
    np.multiply(nm, sy32, out=gain)
    np.add(gain, np.multiply(ns, syl, out=tmp), out=gain)
    bad = det <= 0
    bad |= ns <= 0  # a scale must be positive
    np.divide(gain, np.maximum(det, np.float32(1e-30), out=det), out=gain)
    gain[bad] = -np.inf
    k = best_rows(gain)
    columns = np.arange(shape[1])
    found = gain[k, columns] > -np.inf
    best_s, best_m, best_e = _fit_one(sl[k, columns], sll[k, columns], syl[k, columns], moments)
    outside = np.flatnonzero(found & (best_m > cap))
    if outside.size:
        sub = tuple(np.asarray(a)[:, outside] for a in sums)
        sub_moments = tuple(v[outside] for v in moments)
        s_all, m_all, e_all = _fit_one(*sub, sub_moments)
        syl_m = sub[2] - cap[outside] * sub[0]  # on the boundary m = cap
        s_cap = syl_m / np.where(sub[1] > 0, sub[1], 1)
        e_cap = (
            sub_moments[2]
            - 2 * cap[outside] * sub_moments[1]
            + cap[outside] ** 2 * sub_moments[0]
            - s_cap * syl_m
        )
        over = m_all > cap[outside]
        s_all, e_all = np.where(over, s_cap, s_all), np.where(over, e_cap, e_all)
        m_all = np.where(over, cap[outside], m_all)
        e_all = np.where(np.isfinite(e_all) & (s_all > 0), e_all, np.inf)
        j = np.argmin(e_all, axis=0)
        picked = np.arange(outside.size)
        best_s[outside], best_m[outside] = s_all[j, picked], m_all[j, picked]
        best_e[outside] = e_all[j, picked]
        found[outside] = e_all[j, picked] < np.inf
    best_s = np.where(found, best_s, 2.0 / nmax)
    best_m = np.where(found, best_m, -1.0)
    return best_s, best_m, np.where(found, best_e, np.inf)


def _fit_one(sl, sll, syl, moments):
    """The unconstrained weighted least-squares fit y ~ s q + m in float64 from float32
    sums of any shape (..., g): s, m and E, float64, inf / nan-free (E inf where singular)."""
    sw, sy, syy = moments
    sl, sll, syl = (np.asarray(a, np.float64) for a in (sl, sll, syl))
    det = sw * sll - sl * sl
    ok = det > 0
    det = np.where(ok, det, 1)
    s = (sw * syl - sy * sl) / det
    m = (sll * sy - sl * syl) / det
    e = syy - s * syl - m * sy
    return s, m, np.where(ok, e, np.inf)


def _search_integer(y, w, nmax, grid, steps, bounds):
    """Least-squares scale, and zero point, in normalized units (y = x / unit): float64
    (g,) and uint8 (g,). The zero point of a candidate is where its grid puts x = 0."""
    hi_n, lo_n = bounds
    centre = (hi_n.astype(np.float64) + lo_n) / 2
    n, g = y.shape
    t = buffer("t", y.shape)
    wk = None if w is None else buffer("wq", y.shape)
    sums = buffer("sums", (2, len(grid), g))

    rounded = buffer("rounded", y.shape)
    iscales = grid[:, 0] * nmax / 2
    # the candidates' codes are small integers, clipped in int8 (int16 at 7 and 8 bits), 2-3x
    # faster than in float32: |y| <= 2 (x over half its range, which includes 0), so
    # |rint(y * iscale)| <= 2 iscale + 1, which the small dtype holds exactly
    small = np.int8 if 2 * iscales.max() + 1 <= 127 else np.int16
    rounded_int = buffer("rounded-int", y.shape, small)
    codes_int = buffer("codes-int", y.shape, small)

    def codes(z) -> None:
        """t <- clip(rint(y * iscale) + z, 0, nmax) - z, the codes around the zero point, from
        ``rounded`` = rint(y * iscale) (the candidates of one multiplier share it)."""
        zf = z.astype(np.float32)
        np.add(rounded, zf, out=t)
        np.clip(t, 0, nmax, out=t)
        np.subtract(t, zf, out=t)

    zs = np.clip(np.rint(nmax / 2 + grid[:, 1:] - centre * iscales[:, None]), 0, nmax)
    z_ints = zs.astype(small)
    for k, (mult, _) in enumerate(grid):
        if k == 0 or mult != grid[k - 1][0]:  # the shifts of one multiplier share the rounding
            np.multiply(y, np.float32(iscales[k]), out=rounded)
            np.rint(rounded, out=rounded)
            np.copyto(rounded_int, rounded, casting="unsafe")
        z_int = z_ints[k]
        np.maximum(rounded_int, -z_int, out=codes_int)
        np.minimum(codes_int, nmax - z_int, out=codes_int)
        np.copyto(t, codes_int)
        _integer_sums(y, t, w, wk, sums[:, k])
    best_s, best_score, k = _fit_integer(sums)
    fallback = np.clip(np.rint(-lo_n * nmax / 2), 0, nmax)
    best_z = np.where(best_score > 0, zs[k, np.arange(g)], fallback)
    for _ in range(steps):
        np.multiply(y, (1 / best_s).astype(np.float32), out=rounded)
        np.rint(rounded, out=rounded)
        codes(best_z)
        _integer_sums(y, t, w, wk, sums[:, 0])
        s, score, _ = _fit_integer(sums[:, :1])
        better = score > best_score
        best_s, best_score = np.where(better, s, best_s), np.where(better, score, best_score)
    return best_s, best_z.astype(np.uint8)


def _integer_sums(y, t, w, wk, out) -> None:
    if w is None:
        np.einsum("ij,ij->j", y, t, out=out[0])
        np.einsum("ij,ij->j", t, t, out=out[1])
    else:
        np.multiply(w, t, out=wk)
        np.einsum("ij,ij->j", wk, y, out=out[0])
        np.einsum("ij,ij->j", wk, t, out=out[1])


def _fit_integer(sums):
    """Least-squares scale sum(w y k) / sum(w k^2) of every candidate (rows of float32 sums
    (2, k, g)): the best per group (scale float64 (g,), score float32 (g,) (0 where no
    candidate has a code other than 0 or a positive scale), row intp (g,))."""
    syk, skk = sums
    score = np.multiply(syk, np.abs(syk))  # a negative sum(w y k) scores below 0
    np.divide(score, np.maximum(skk, np.float32(1e-30)), out=score)
    k = best_rows(score)
    columns = np.arange(score.shape[1])
    best_score = score[k, columns]
    found = best_score > 0
    top, bottom = syk[k, columns].astype(np.float64), skk[k, columns].astype(np.float64)
    best_s = np.where(found, top / np.where(found, bottom, 1), 1.0)
    return best_s, np.where(found, best_score, np.float32(0)), k


def _colsum(a: np.ndarray) -> np.ndarray:
    return np.add.reduce(a, axis=0)


def chunk_error(xt, p: AffineParams, nmax, w, t, e64) -> np.ndarray:
    """E of every group of xt (n, g) for parameters p (g,): float64 (g,)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if p.offset is not None:
            np.subtract(xt, p.offset, out=t)
            np.divide(t, p.scale, out=t)
            np.rint(t, out=t)
            np.clip(t, 0, nmax, out=t)
            np.multiply(t, p.scale, out=t)
            np.add(t, p.offset, out=t)
        else:
            z = p.zero_point.astype(np.float32)
            np.divide(xt, p.scale, out=t)
            np.rint(t, out=t)
            np.add(t, z, out=t)
            np.clip(t, 0, nmax, out=t)
            np.subtract(t, z, out=t)
            np.multiply(t, p.scale, out=t)
    return weighted_sq_error(xt, t, w, e64)
