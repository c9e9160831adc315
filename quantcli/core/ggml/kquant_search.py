"""The scale searches of llama.cpp's K-quant reference quantizers, vectorised over sub-blocks.

Each function takes the values of many sub-blocks at once as a C-contiguous float32 array
(n, S): element i of sub-block s at [i, s] ("element-major"). In that layout a sum over a
sub-block is NumPy's reduction over axis 0, which adds rows in index order exactly as the C
loops do (``common.sum_rows``), and a per-sub-block value of shape (S,) broadcasts along
axis 0. The searches loop in Python over their ~20 candidate scales, never over sub-blocks.

They follow ggml-quants.c (``make_qkx2_quants``, ``make_qx_quants``, ``make_q3_quants``)
operation by operation in float32, so that ties and near-ties between candidates resolve as
in C: ``nearest_int`` is round half to even (C adds 1.5 * 2**23 and reads the mantissa;
``np.rint`` rounds the same way), ``a*b*c`` is ``(a*b)*c``, and sums accumulate in order.
"""

from __future__ import annotations

import numpy as np

from quantcli.core.ggml.common import F32, dot_rows, nearest_int, sum_rows

GROUP_MAX_EPS = F32(1e-15)  # ggml-quants.c: below this largest magnitude a group is zero


def make_qkx2_quants(
    x: np.ndarray,
    weights: np.ndarray,
    nmax: int,
    rmin: float,
    rdelta: float,
    nstep: int,
    use_mad: bool,
    exact: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric codes 0..nmax with a scale and a minimum chosen by weighted least squares.

    x, weights: float32 (n, S). Returns (scale float32 (S,), the_min float32 (S,) (the
    minimum negated: x ~ scale * L - the_min), L float32 (n, S) integer codes).

    Candidate inverse scales (rmin + rdelta * k + nmax) / (max - min), k = 0..nstep, after
    the min-max one; each is refit for scale and min jointly, min clamped to <= 0, and kept
    when its weighted error (squared, or absolute with ``use_mad``) is lower. As in C, a kept
    candidate's min becomes the origin of the following candidates' codes.

    exact: round with ``nearest_int``'s bit trick instead of ``np.rint``; they differ only
    on NaN and beyond +-4194303, which happens when max - min overflows float32.
    """
    nmax_f = F32(nmax)
    lo = x.min(axis=0)
    hi = x.max(axis=0)
    tmp = np.empty_like(x)
    codes = np.empty_like(x)
    sum_w = sum_rows(weights)
    sum_x = dot_rows(weights, x)
    np.minimum(lo, F32(0), out=lo)
    flat = hi == lo
    bounds = (np.zeros_like(x), np.full_like(x, nmax_f))

    def quantize(iscale, origin):
        np.subtract(x, origin, out=codes)
        np.multiply(codes, iscale, out=codes)
        _round_clip(codes, bounds, exact)

    def weighted_error(scale, mn):
        np.multiply(codes, scale, out=tmp)
        np.add(tmp, mn, out=tmp)
        np.subtract(tmp, x, out=tmp)
        if use_mad:
            np.abs(tmp, out=tmp)
            return dot_rows(weights, tmp)
        # w * (d * d), one rounded product after the other
        return dot_rows(tmp, tmp, weights)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = nmax_f / (hi - lo)
        scale = F32(1) / iscale
        mn = lo.copy()
        # the first candidate: the min-max scale
        quantize(iscale, mn)
        best_error = weighted_error(scale, mn)
        best_iscale = iscale
        best_origin = mn.copy()
        for k in range(nstep + 1):
            cand = (F32(rmin) + F32(rdelta) * F32(k) + nmax_f) / (hi - mn)
            quantize(cand, mn)
            sum_l = dot_rows(weights, codes)
            sum_l2 = dot_rows(weights, codes, codes)
            sum_xl = dot_rows(weights, codes, x)
            det = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            clamp = this_min > 0
            if clamp.any():
                np.putmask(this_min, clamp, F32(0))
                np.putmask(this_scale, clamp, sum_xl / sum_l2)
            error = weighted_error(this_scale, this_min)
            better = (det > 0) & (error < best_error)
            if better.any():
                np.putmask(best_error, better, error)
                np.putmask(best_iscale, better, cand)
                np.putmask(best_origin, better, mn)
                np.putmask(scale, better, this_scale)
                np.putmask(mn, better, this_min)
        # the kept candidate's codes, recomputed from its inverse scale and origin
        quantize(best_iscale, best_origin)
    if flat.any():
        scale[flat] = 0
        mn[flat] = lo[flat]
        codes[:, flat] = 0
    return scale, -mn, codes


def _round_clip(v: np.ndarray, bounds: tuple[np.ndarray, np.ndarray], exact: bool) -> None:
    """In place: ``MAX(lo, MIN(hi, nearest_int(v)))`` with bounds given as full arrays (NumPy's
    minimum and maximum are several times faster against an array than a scalar)."""
    if exact:
        v[...] = nearest_int(v)
    else:
        np.rint(v, out=v)
    np.minimum(v, bounds[1], out=v)
    np.maximum(v, bounds[0], out=v)


def signed_absmax_rows(x: np.ndarray) -> np.ndarray:
    """The first value of largest magnitude of each column, float32 (n, S) -> (S,)."""
    hi = x.max(axis=0)
    lo = x.min(axis=0)
    neg_lo = -lo
    peak = np.where(hi >= neg_lo, hi, lo)
    # +a and -a both present (or all zero): the first one decides
    even = np.flatnonzero(hi == neg_lo)
    if even.size:
        cols = x[:, even]
        peak[even] = cols[np.argmax(np.abs(cols), axis=0), np.arange(even.size)]
    return peak


def make_qx_quants_rmse(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric codes -nmax..nmax-1 (stored + nmax) with a least-squares scale, weights x^2
    (``make_qx_quants`` with rmse_type 1 and no importance weights).

    x: float32 (n, S). Returns (scale float32 (S,), L float32 (n, S) codes 0..2*nmax-1).
    Candidates: inverse scales -(nmax + 0.1 k) / max for k = -9..9, k = 0 first; one is kept
    when it raises sumlx^2 / suml2 strictly.
    """
    nmax_f = F32(nmax)
    peak = signed_absmax_rows(x)
    zero = np.abs(peak) < GROUP_MAX_EPS
    w = x * x
    wx = w * x
    codes = np.empty_like(x)
    bounds = (np.full_like(x, -nmax_f), np.full_like(x, nmax_f - 1))

    def sums(iscale):
        np.multiply(x, iscale, out=codes)
        _round_clip(codes, bounds, False)
        return dot_rows(wx, codes), dot_rows(w, codes, codes)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        best_iscale = -nmax_f / peak
        sumlx, suml2 = sums(best_iscale)
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
        best = scale * sumlx
        for k in range(-9, 10):
            if k == 0:
                continue
            iscale = -(nmax_f + F32(0.1) * F32(k)) / peak
            sumlx, suml2 = sums(iscale)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            if better.any():
                np.putmask(best_iscale, better, iscale)
                np.putmask(scale, better, sumlx / suml2)
                np.putmask(best, better, scale * sumlx)
        np.multiply(x, best_iscale, out=codes)
        _round_clip(codes, bounds, False)
    np.add(codes, nmax_f, out=codes)
    if zero.any():
        scale[zero] = 0
        codes[:, zero] = 0
    return scale, codes


def make_q3_quants_rmse(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric codes -nmax..nmax-1 (stored + nmax), refined by coordinate descent on the
    weighted (x^2) least-squares fit (``make_q3_quants`` with do_rmse).

    x: float32 (n, S). Returns (scale float32 (S,), L float32 (n, S) codes 0..2*nmax-1).
    Up to 5 passes over the elements in order; an element's code changes when the fit's
    sumlx^2 / suml2 strictly improves. A pass that changes nothing in a sub-block would
    change nothing again (C stops there), so later passes run on the sub-blocks that changed.
    """
    peak = signed_absmax_rows(x)
    zero = np.abs(peak) < GROUP_MAX_EPS
    lo, hi = F32(-nmax), F32(nmax - 1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        codes = np.multiply(x, -F32(nmax) / peak)
        # bounds as rows: broadcast along axis 0, as fast as full arrays and nothing to fill
        bounds = (np.full((1, x.shape[1]), lo), np.full((1, x.shape[1]), hi))
        _round_clip(codes, bounds, False)
        w = x * x
        wx = w * x
        sumlx = dot_rows(wx, codes)
        suml2 = dot_rows(w, codes, codes)
        # the first pass works on the full arrays in place; later ones on gathered copies of
        # the columns (sub-blocks) that changed in the pass before, written back after it
        active = None
        xa, wa, wxa, la, slxa, sl2a = x, w, wx, codes, sumlx, suml2
        for _ in range(5):
            changed = _q3_pass(xa, wa, wxa, la, slxa, sl2a, lo, hi)
            if active is not None:
                codes[:, active] = la
                sumlx[active] = slxa
                suml2[active] = sl2a
            if not changed.any():
                break
            active = np.flatnonzero(changed) if active is None else active[changed]
            xa, wa, wxa = x[:, active], w[:, active], wx[:, active]
            la, slxa, sl2a = codes[:, active], sumlx[active], suml2[active]
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
    np.add(codes, F32(nmax), out=codes)
    if zero.any():
        scale[zero] = 0
        codes[:, zero] = 0
    return scale, codes


def _q3_pass(x, w, wx, codes, sumlx, suml2, lo, hi) -> np.ndarray:
    """One pass of ``make_q3_quants``' coordinate descent over the elements (rows) of the
    sub-blocks (columns) x, w = x*x, wx = w*x float32 (n, S), updating codes (n, S) and
    sumlx, suml2 (S,) in place; returns which sub-blocks changed, bool (S,).

    Each element's new code is computed for every sub-block, but the trial sums and the
    acceptance test only where it differs from the old code and slx > 0 (a small fraction:
    C skips the others too), on gathered copies, with the same float operations."""
    m = x.shape[1]
    changed = np.zeros(m, bool)
    slx = np.empty(m, np.float32)
    sl2 = np.empty(m, np.float32)
    new = np.empty(m, np.float32)
    quotient = np.empty(m, np.float32)
    bits = quotient.view(np.int32)
    cand = np.empty(m, bool)
    flag = np.empty(m, bool)
    low, high = np.full(m, lo), np.full(m, hi)
    for i in range(x.shape[0]):
        li, wi, wxi = codes[i], w[i], wx[i]
        # slx = sumlx - (w x) L; sl2 = suml2 - (w L) L
        np.multiply(wxi, li, out=slx)
        np.subtract(sumlx, slx, out=slx)
        np.multiply(wi, li, out=sl2)
        np.multiply(sl2, li, out=sl2)
        np.subtract(suml2, sl2, out=sl2)
        # the quotient is unbounded where slx nears 0: nearest_int wraps there as in C
        np.multiply(x[i], sl2, out=quotient)
        np.divide(quotient, slx, out=quotient)
        # nearest_int, in place: add 1.5 * 2**23, read the low 22 mantissa bits
        np.add(quotient, F32(12582912.0), out=quotient)
        np.bitwise_and(bits, 0x007FFFFF, out=bits)
        np.subtract(bits, 0x00400000, out=bits)
        new[...] = bits
        np.minimum(new, high, out=new)
        np.maximum(new, low, out=new)
        np.greater(slx, 0, out=cand)
        np.not_equal(new, li, out=flag)
        cand &= flag
        idx = np.flatnonzero(cand)
        if idx.size == 0:
            continue
        l_new = new[idx]
        # slx += (w x) new; sl2 += (w new) new; then C's test
        t_lx = slx[idx] + wxi[idx] * l_new
        t_l2 = sl2[idx] + (wi[idx] * l_new) * l_new
        a_lx, a_l2 = sumlx[idx], suml2[idx]
        take = t_l2 > 0
        take &= (t_lx * t_lx) * a_l2 > (a_lx * a_lx) * t_l2
        if take.any():
            j = idx[take]
            li[j] = l_new[take]
            sumlx[j] = t_lx[take]
            suml2[j] = t_l2[take]
            changed[j] = True
    return changed


def element_major(x: np.ndarray, n: int) -> np.ndarray:
    """Super-blocks float32 (B, 256) -> sub-blocks of n, element-major (n, B * 256 // n):
    sub-block j of super-block b is column b * (256 // n) + j."""
    return np.ascontiguousarray(x.reshape(-1, n).T)


def largest_scale(scales: np.ndarray) -> np.ndarray:
    """The first sub-block scale of largest magnitude of each super-block, (B, k) -> (B,);
    0 when all are 0. NaN scales (from sums that overflowed for weights near 1e13 and
    beyond) never win, as in C's ``if (fabsf(s) > amax)`` loop."""
    mags = np.abs(scales)
    mags[np.isnan(mags)] = 0
    first = np.argmax(mags, axis=1)
    rows = np.arange(scales.shape[0])
    return np.where(mags[rows, first] > 0, scales[rows, first], F32(0))


def largest_positive(values: np.ndarray) -> np.ndarray:
    """max(0, max of each row) ignoring NaN, (B, k) -> (B,): C's ``if (v > m) m = v`` from 0."""
    return np.fmax(np.fmax.reduce(values, axis=1), F32(0))


def block_major(codes: np.ndarray, blocks: int) -> np.ndarray:
    """Codes (n, S) of ``element_major`` -> uint8 (blocks, 256) in element order."""
    return np.ascontiguousarray(codes.T.astype(np.uint8)).reshape(blocks, -1)
