"""Encoders that write llama.cpp's ggml block types with less squared error than its reference.

A GGUF reader sees only a block's bytes: any scale, minimum and code it decodes is valid. The
reference quantizers (``quantize_row_*_ref``, what ``llama-quantize`` runs without an
importance matrix) choose them by rules that are fast but not least-squares: the legacy
types take d from the block's extremes, the K-quants search sub-block scales under weighted
or absolute errors and then round them to 4, 6 or 8 bits against the largest. These encoders
minimise the plain squared error ||x - x_hat||^2 of each block instead, in the same layout:

- legacy symmetric (Q4_0, Q5_0, Q8_0): candidate scales around the largest magnitude (mapped
  to either end of the code range, shrunk or stretched), each refit by least squares
  (d = sum x q / sum q^2) with its codes recomputed after d is rounded to float16;
- legacy affine (Q4_1, Q5_1): candidate inverse scales around the min-max one, each refit
  for d and m jointly, rounded to float16, codes recomputed;
- K-quants: two starting points, the reference's own scales and a plain least-squares
  search of each sub-block's scale (and minimum), then a few rounds of coordinate descent:
  codes given the scales; the super-block d (and dmin) by least squares over the whole
  super-block given the codes and the integer sub-block scales; each sub-block's integer
  scale (and minimum) re-rounded given d (and dmin); codes again.

Every step is measured on the values a decoder computes (float16 fields, integer sub-block
scales), the best state of each block is kept, and at the end each block is compared with
the reference encoder's block on squared error: the reference's bytes stay wherever they are
not beaten, so no block is ever worse than llama.cpp's.

Arrays are element-major as in ``kquant_search``: (n, G) for G groups of n elements, so that
sums over a group are NumPy reductions over axis 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from quantcli.core.ggml import legacy, q2_k, q3_k, q4_k, q6_k
from quantcli.core.ggml.common import F32, f16_bytes, f16_values, pack_bit_planes
from quantcli.core.ggml.kquant_search import element_major, signed_absmax_rows

# rounds of coordinate descent on the K-quants' super-block and sub-block scales
K_ROUNDS = 3


def to_f16(v: np.ndarray) -> np.ndarray:
    """float32 values rounded to float16 and back (inf beyond float16's range)."""
    with np.errstate(over="ignore"):
        return np.asarray(v, np.float32).astype(np.float16).astype(np.float32)


def _inverse(d: np.ndarray) -> np.ndarray:
    """1 / d, 0 where d is 0 or not finite."""
    inv = np.zeros_like(d)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        np.divide(F32(1), d, out=inv, where=(d != 0) & np.isfinite(d))
    inv[~np.isfinite(inv)] = 0
    return inv


def _column_sse(xt: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
    """float64 (G,) sum over axis 0 of (xt - x_hat)^2, both float32 (n, G); overwrites
    x_hat. (Summed in float32, exact enough to rank candidates: the final choice between
    ours and the reference's block is made in float64, ``keep_better``.)"""
    np.subtract(x_hat, xt, out=x_hat)
    return _dot(x_hat, x_hat)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 (G,) sum over axis 0 of a * b, float32 (n, G) each (NumPy's float32 einsum
    is several times faster than one accumulating in float64)."""
    return np.einsum("ij,ij->j", a, b).astype(np.float64)


def _round_clip(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """v (n, G) rounded half to even and clipped to [lo, hi], in place (the bounds as a row:
    NumPy's minimum and maximum are several times slower against a scalar)."""
    np.rint(v, out=v)
    row = np.empty((1, v.shape[-1]), v.dtype)
    row[...] = hi
    np.minimum(v, row, out=v)
    row[...] = lo
    np.maximum(v, row, out=v)
    return v


def block_sse(x: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
    """float64 (n,) squared error of each block, x and x_hat float32 (n, block)."""
    diff = x.astype(np.float64) - x_hat.astype(np.float64)
    return np.einsum("ij,ij->i", diff, diff)


def keep_better(
    x: np.ndarray, ours: np.ndarray, reference: np.ndarray, decode: Callable
) -> np.ndarray:
    """Bytes (n, block_bytes) taking each block from ``ours`` where it decodes with strictly
    less squared error than ``reference`` (or where the reference's is not finite and
    ours is), else from ``reference``. x float32 (n, block)."""
    with np.errstate(all="ignore"):
        mine = np.empty(x.shape, np.float32)
        theirs = np.empty(x.shape, np.float32)
        decode(ours, mine)
        decode(reference, theirs)
        e_ours, e_ref = block_sse(x, mine), block_sse(x, theirs)
    better = (e_ours < e_ref) | (~np.isfinite(e_ref) & np.isfinite(e_ours))
    return np.where(better[:, None], ours, reference)


# --- group fits (legacy blocks, and the K-quants' sub-blocks before their scales are
# rounded to integers) ---


def symmetric_fit(
    xt: np.ndarray, qmin: int, qmax: int, ratios: np.ndarray, f16: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares scale of x ~ d q, q integer in [qmin, qmax], for each column of
    float32 xt (n, G): (d float32 (G,), squared error float64 (G,)).

    Candidates d = peak / (qmin r) and peak / (qmax r) for the column's signed value of
    largest magnitude and each ratio r; each candidate and its least-squares refit from its
    codes are measured (d rounded to float16 first when ``f16``)."""
    peak = signed_absmax_rows(xt)
    codes = np.empty_like(xt)
    tmp = np.empty_like(xt)
    best_d = np.zeros(xt.shape[1], np.float32)
    tmp[...] = 0
    best_err = _column_sse(xt, tmp)  # d = 0: every value 0
    rnd = to_f16 if f16 else (lambda v: v)

    def measure(d):
        nonlocal best_err
        np.multiply(xt, _inverse(d), out=codes)
        _round_clip(codes, qmin, qmax)
        np.multiply(codes, d, out=tmp)
        with np.errstate(invalid="ignore", over="ignore"):
            err = _column_sse(xt, tmp)
        better = err < best_err
        np.putmask(best_d, better, d)
        np.putmask(best_err, better, err)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for end in (qmin, qmax):
            for r in ratios:
                d = rnd(peak / F32(end * r))
                measure(d)
                sxq = _dot(xt, codes)
                sqq = _dot(codes, codes)
                measure(rnd(np.where(sqq > 0, sxq / sqq, d).astype(np.float32)))
    return best_d, best_err


def affine_fit(
    xt: np.ndarray, nmax: int, deltas: np.ndarray, f16: bool, max_offset: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares scale and offset of x ~ d q + m, q integer in [0, nmax], for each
    column of float32 xt (n, G): (d, m float32 (G,), squared error float64 (G,)).

    Candidate inverse scales (nmax + delta) / (max - min) give codes from the column's
    minimum; each is refit for d and m jointly (m at most ``max_offset`` when given, d
    then refit alone), rounded to float16 when ``f16``, and measured with its codes
    recomputed."""
    n = xt.shape[0]
    lo = xt.min(axis=0)
    hi = xt.max(axis=0)
    if max_offset is not None:
        np.minimum(lo, F32(max_offset), out=lo)
    codes = np.empty_like(xt)
    tmp = np.empty_like(xt)
    rnd = to_f16 if f16 else (lambda v: v)
    # start: d from the range, m = min, codes by rounding (llama.cpp's Q4_1 truncates)
    best_d = rnd(((hi - lo) / F32(nmax)).astype(np.float32))
    best_m = rnd(lo)
    best_err = np.full(xt.shape[1], np.inf)
    sum_x = xt.sum(axis=0, dtype=np.float64)

    def measure(d, m):
        np.subtract(xt, m, out=codes)
        np.multiply(codes, _inverse(d), out=codes)
        _round_clip(codes, 0, nmax)
        np.multiply(codes, d, out=tmp)
        np.add(tmp, m, out=tmp)
        err = _column_sse(xt, tmp)
        better = err < best_err
        np.putmask(best_d, better, d)
        np.putmask(best_m, better, m)
        np.putmask(best_err, better, err)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        measure(best_d.copy(), best_m.copy())
        span = hi - lo
        for delta in deltas:
            iscale = np.where(span > 0, F32(nmax + delta) / span, F32(0)).astype(np.float32)
            np.subtract(xt, lo, out=codes)
            np.multiply(codes, iscale, out=codes)
            _round_clip(codes, 0, nmax)
            for _ in range(2):
                sq = codes.sum(axis=0).astype(np.float64)
                sqq = _dot(codes, codes)
                sxq = _dot(xt, codes)
                det = n * sqq - sq * sq
                ok = det > 0
                d = np.where(ok, (n * sxq - sum_x * sq) / np.where(ok, det, 1), 0.0)
                m = np.where(ok, (sum_x - d * sq) / n, sum_x / n)
                if max_offset is not None:
                    over = m > max_offset
                    m[over] = max_offset
                    d[over] = np.where(
                        sqq[over] > 0, (sxq[over] - max_offset * sq[over]) / sqq[over], 0.0
                    )
                d, m = rnd(d.astype(np.float32)), rnd(m.astype(np.float32))
                measure(d, m)
                # the refit's own codes, for a second refit
                np.subtract(xt, m, out=codes)
                np.multiply(codes, _inverse(d), out=codes)
                _round_clip(codes, 0, nmax)
    return best_d, best_m, best_err


# --- legacy types ---

LEGACY_RATIOS = np.linspace(0.7, 1.1, 17)
Q8_RATIOS = np.linspace(0.96, 1.02, 7)
AFFINE_DELTAS = np.round(np.arange(-3.0, 1.01, 0.25), 2)


def _legacy_symmetric(
    x: np.ndarray, qmin: int, qmax: int, ratios: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(d float32 (n,), codes int (n, 32) in [qmin, qmax]) of float32 blocks x (n, 32)."""
    xt = np.ascontiguousarray(x.T)
    d, _ = symmetric_fit(xt, qmin, qmax, ratios, f16=True)
    with np.errstate(invalid="ignore", over="ignore"):
        q = _round_clip(xt * _inverse(d), qmin, qmax)
    return d, np.ascontiguousarray(q.T)


def _legacy_affine(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(d, m float32 (n,), codes (n, 32) in [0, nmax]) of float32 blocks x (n, 32)."""
    xt = np.ascontiguousarray(x.T)
    d, m, _ = affine_fit(xt, nmax, AFFINE_DELTAS, f16=True)
    with np.errstate(invalid="ignore", over="ignore"):
        q = _round_clip((xt - m) * _inverse(d), 0, nmax)
    return d, m, np.ascontiguousarray(q.T)


def search_q8_0(x: np.ndarray, out: np.ndarray) -> None:
    """float32 (n, 32) -> uint8 (n, 34) ``out``, never worse than ``encode_q8_0``."""
    d, q = _legacy_symmetric(x, -128, 127, Q8_RATIOS)
    ours = np.empty_like(out)
    f16_bytes(d, ours[:, :2])
    ours[:, 2:] = q.astype(np.int8).view(np.uint8)
    _finish(x, ours, out, legacy.encode_q8_0, legacy.decode_q8_0)


def _search_symmetric_legacy(x, out, half: int, encode, decode) -> None:
    d, q = _legacy_symmetric(x, -half, half - 1, LEGACY_RATIOS)
    codes = (q + F32(half)).astype(np.uint8)
    ours = np.empty_like(out)
    f16_bytes(d, ours[:, :2])
    _pack_codes(codes, ours[:, 2:], five_bits=half == 16)
    _finish(x, ours, out, encode, decode)


def _pack_codes(codes: np.ndarray, dst: np.ndarray, five_bits: bool) -> None:
    """uint8 codes (n, 32) into a legacy block's bytes after its scales ``dst``: the fifth
    bits (Q5_0, Q5_1) in 4 bytes first, then the low nibbles. ``codes`` is changed."""
    if five_bits:
        legacy.pack_high_bits(codes, dst[:, :4])
        np.bitwise_and(codes, 0x0F, out=codes)
        dst = dst[:, 4:]
    legacy.pack_nibbles(codes, dst)


def search_q4_0(x: np.ndarray, out: np.ndarray) -> None:
    """float32 (n, 32) -> uint8 (n, 18) ``out``, never worse than ``encode_q4_0``."""
    _search_symmetric_legacy(x, out, 8, legacy.encode_q4_0, legacy.decode_q4_0)


def search_q5_0(x: np.ndarray, out: np.ndarray) -> None:
    """float32 (n, 32) -> uint8 (n, 22) ``out``, never worse than ``encode_q5_0``."""
    _search_symmetric_legacy(x, out, 16, legacy.encode_q5_0, legacy.decode_q5_0)


def _search_affine_legacy(x, out, nmax: int, encode, decode) -> None:
    d, m, q = _legacy_affine(x, nmax)
    codes = q.astype(np.uint8)
    ours = np.empty_like(out)
    f16_bytes(d, ours[:, :2])
    f16_bytes(m, ours[:, 2:4])
    _pack_codes(codes, ours[:, 4:], five_bits=nmax == 31)
    _finish(x, ours, out, encode, decode)


def search_q4_1(x: np.ndarray, out: np.ndarray) -> None:
    """float32 (n, 32) -> uint8 (n, 20) ``out``, never worse than ``encode_q4_1``."""
    _search_affine_legacy(x, out, 15, legacy.encode_q4_1, legacy.decode_q4_1)


def search_q5_1(x: np.ndarray, out: np.ndarray) -> None:
    """float32 (n, 32) -> uint8 (n, 24) ``out``, never worse than ``encode_q5_1``."""
    _search_affine_legacy(x, out, 31, legacy.encode_q5_1, legacy.decode_q5_1)


def _finish(x, ours, out, encode, decode) -> None:
    """The reference's bytes into ``out``, replaced by ``ours`` block by block where ours
    have less error."""
    reference = np.empty_like(out)
    encode(x, reference)
    out[...] = keep_better(x, ours, reference, decode)


# --- K-quants ---


@dataclass(frozen=True)
class KLayout:
    """A K-quant's value model, x = d * sc_j * q - dmin * m_j (``affine``) or
    x = d * sc_j * q (symmetric), for sub-blocks j of ``sub`` elements; q integer in
    [qmin, qmax], sc_j in [smin, smax], m_j in [0, mmax]."""

    sub: int
    qmin: int
    qmax: int
    smin: int
    smax: int
    affine: bool
    mmax: int = 0


@dataclass
class KState:
    """A K-quant super-block's fields: d, dmin float32 (B,) (float16 values), sc, m float32
    (B, S) integers."""

    d: np.ndarray
    dmin: np.ndarray
    sc: np.ndarray
    m: np.ndarray

    def copy(self) -> KState:
        return KState(self.d.copy(), self.dmin.copy(), self.sc.copy(), self.m.copy())

    def take(self, other: KState, where: np.ndarray) -> None:
        """Blocks ``where`` (bool (B,)) from ``other``."""
        np.putmask(self.d, where, other.d)
        np.putmask(self.dmin, where, other.dmin)
        self.sc[where] = other.sc[where]
        self.m[where] = other.m[where]


class _KSearch:
    """The coordinate descent on one chunk of super-blocks x float32 (B, 256)."""

    def __init__(self, x: np.ndarray, layout: KLayout):
        self.layout = layout
        self.blocks = x.shape[0]
        self.xt = element_major(x, layout.sub)  # (sub, B * S)
        self.codes = np.empty_like(self.xt)
        self.tmp = np.empty_like(self.xt)
        self.sum_x = self.xt.sum(axis=0, dtype=np.float64)

    def sub_scales(self, s: KState) -> tuple[np.ndarray, np.ndarray]:
        """(d * sc, dmin * m) float32 (B * S,), as the decoders compute them."""
        scale = (s.d[:, None] * s.sc).reshape(-1)
        shift = (s.dmin[:, None] * s.m).reshape(-1)
        return scale, shift

    def quantize(self, s: KState) -> np.ndarray:
        """Codes (sub, B * S) of state ``s`` (nearest level, the best for fixed scales) into
        self.codes; returns the squared error of each super-block, float64 (B,)."""
        return self.sub_errors(s).sum(axis=1)

    def sub_errors(self, s: KState) -> np.ndarray:
        """As ``quantize``, but the squared error of each sub-block, float64 (B, S)."""
        lay = self.layout
        scale, shift = self.sub_scales(s)
        with np.errstate(invalid="ignore", over="ignore"):
            np.add(self.xt, shift, out=self.codes)
            np.multiply(self.codes, _inverse(scale), out=self.codes)
            _round_clip(self.codes, lay.qmin, lay.qmax)
            np.multiply(self.codes, scale, out=self.tmp)
            np.subtract(self.tmp, shift, out=self.tmp)
            err = _column_sse(self.xt, self.tmp).reshape(self.blocks, -1)
        err[~np.isfinite(err)] = np.inf
        return err

    def code_sums(self):
        """Per sub-block float64 (B, S): sum q, sum q^2, sum x q."""
        shape = (self.blocks, -1)
        sq = self.codes.sum(axis=0).astype(np.float64).reshape(shape)
        sqq = _dot(self.codes, self.codes).reshape(shape)
        sxq = _dot(self.xt, self.codes).reshape(shape)
        return sq, sqq, sxq

    def fit_super(self, s: KState) -> KState:
        """d (and dmin) by least squares given the codes and integer sub-block scales."""
        lay = self.layout
        sq, sqq, sxq = self.code_sums()
        sc, m = s.sc.astype(np.float64), s.m.astype(np.float64)
        s_aa = (sc * sc * sqq).sum(axis=1)
        s_xa = (sc * sxq).sum(axis=1)
        new = s.copy()
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if not lay.affine:
                d = np.where(s_aa > 0, s_xa / s_aa, s.d)
            else:
                sx = self.sum_x.reshape(self.blocks, -1)
                s_am = (sc * m * sq).sum(axis=1)
                s_mm = (m * m).sum(axis=1) * lay.sub
                s_xm = (m * sx).sum(axis=1)
                det = s_aa * s_mm - s_am * s_am
                ok = det > 1e-12 * np.maximum(s_aa * s_mm, 1e-300)
                det = np.where(ok, det, 1.0)
                d = np.where(ok, (s_xa * s_mm - s_am * s_xm) / det, s.d)
                dmin = np.where(ok, (s_am * s_xa - s_aa * s_xm) / det, s.dmin)
                new.dmin = to_f16(dmin.astype(np.float32))
        new.d = to_f16(d.astype(np.float32))
        return new

    def fit_sub(self, s: KState) -> KState:
        """Each sub-block's integer scale (and minimum) given d (and dmin) and the codes."""
        lay = self.layout
        sq, sqq, sxq = self.code_sums()
        new = s.copy()
        d = s.d.astype(np.float64)[:, None]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if not lay.affine:
                a = np.where(sqq > 0, sxq / sqq, 0.0)
                sc = np.where(d != 0, a / d, s.sc)
            else:
                n = lay.sub
                sx = self.sum_x.reshape(self.blocks, -1)
                det = n * sqq - sq * sq
                a = np.where(det > 0, (n * sxq - sx * sq) / np.where(det > 0, det, 1), 0.0)
                sc = np.where(d != 0, a / d, s.sc)
                sc = np.clip(np.rint(sc), lay.smin, lay.smax)
                # the minimum given the rounded scale, then the scale given the minimum
                dmin = s.dmin.astype(np.float64)[:, None]
                b = (d * sc * sq - sx) / n
                m = np.clip(np.rint(np.where(dmin != 0, b / dmin, s.m)), 0, lay.mmax)
                sc = np.where(
                    (sqq > 0) & (d != 0),
                    (sxq + dmin * m * sq) / (d * np.where(sqq > 0, sqq, 1)),
                    sc,
                )
                new.m = np.nan_to_num(m).astype(np.float32)
            sc = np.clip(np.rint(np.nan_to_num(sc)), lay.smin, lay.smax)
        new.sc = sc.astype(np.float32)
        return new

    def neighbours(self, s: KState) -> KState:
        """Each sub-block's integer scale (and minimum) moved by one up or down where that
        lowers the sub-block's own error, codes re-chosen (given d and dmin, sub-blocks are
        independent)."""
        lay = self.layout
        best = s.copy()
        best_err = self.sub_errors(best)
        moves = [("sc", 1, lay.smin, lay.smax), ("sc", -1, lay.smin, lay.smax)]
        if lay.affine:
            moves += [("m", 1, 0, lay.mmax), ("m", -1, 0, lay.mmax)]
        for name, step, lo, hi in moves:
            trial = best.copy()
            moved = getattr(trial, name)
            np.clip(moved + F32(step), lo, hi, out=moved)
            err = self.sub_errors(trial)
            better = err < best_err
            getattr(best, name)[better] = moved[better]
            best_err[better] = err[better]
        return best

    def refine(self, start: KState, rounds: int) -> tuple[KState, np.ndarray]:
        """Coordinate descent from ``start``: the best state of each super-block seen and
        its squared error float64 (B,). Each step leaves the codes of the state it returns
        measured in self.codes, which the next step's sums read."""
        best = start.copy()
        best_err = self.quantize(best)
        state = best
        for _ in range(rounds):
            for step in (self.fit_super, self.fit_sub, self.neighbours):
                state = step(state)
                err = self.quantize(state)
                better = err < best_err
                if better.any():
                    best.take(state, better)
                    np.putmask(best_err, better, err)
        return best, best_err

    def plain_start(self) -> KState:
        """Sub-block scales (and minima) fitted by plain least squares, then rounded to
        integers under d (and dmin) from the largest."""
        lay = self.layout
        shape = (self.blocks, -1)
        if lay.affine:
            scale, offset, _ = affine_fit(
                self.xt, lay.qmax, AFFINE_DELTAS, f16=False, max_offset=0.0
            )
            scale, mins = scale.reshape(shape), -offset.reshape(shape)
            d = to_f16(np.maximum(scale.max(axis=1), 0) / F32(lay.smax))
            dmin = to_f16(np.maximum(mins.max(axis=1), 0) / F32(lay.mmax))
            with np.errstate(invalid="ignore"):
                m = np.clip(np.rint(mins * _inverse(dmin)[:, None]), 0, lay.mmax)
        else:
            ratios = np.linspace(0.8, 1.1, 7)
            scale, _ = symmetric_fit(self.xt, lay.qmin, lay.qmax, ratios, f16=False)
            scale = scale.reshape(shape)
            mags = np.abs(scale)
            peak = scale[np.arange(self.blocks), mags.argmax(axis=1)]
            d = to_f16(peak / F32(lay.smin))
            dmin = np.zeros_like(d)
            m = np.zeros_like(scale)
        with np.errstate(invalid="ignore"):
            sc = np.clip(np.rint(scale * _inverse(d)[:, None]), lay.smin, lay.smax)
        return KState(d, dmin, sc.astype(np.float32), m.astype(np.float32))

    def final_codes(self, s: KState) -> np.ndarray:
        """Codes of state ``s`` as int16 (B, 256) in element order."""
        self.quantize(s)
        return np.ascontiguousarray(self.codes.T).reshape(self.blocks, -1).astype(np.int16)


def _k_search(x: np.ndarray, layout: KLayout, reference: KState) -> tuple[KState, np.ndarray]:
    """The best state of each super-block from the reference's and a plain start, with its
    codes int16 (B, 256)."""
    search = _KSearch(x, layout)
    best, err = search.refine(reference, K_ROUNDS)
    other, other_err = search.refine(search.plain_start(), K_ROUNDS)
    best.take(other, other_err < err)
    return best, search.final_codes(best)


# each K-quant: its layout, its reference fields read back from bytes, and its packing


def _q4_k_state(raw: np.ndarray) -> KState:
    sc, m = q4_k.unpack_scales(raw[:, 4:16])
    return KState(
        f16_values(raw[:, 0:2])[:, 0],
        f16_values(raw[:, 2:4])[:, 0],
        sc.astype(np.float32),
        m.astype(np.float32),
    )


def _pack_q4_k_fields(s: KState, out: np.ndarray) -> None:
    f16_bytes(s.d, out[:, 0:2])
    f16_bytes(s.dmin, out[:, 2:4])
    q4_k.pack_scales(s.sc.astype(np.uint8), s.m.astype(np.uint8), out[:, 4:16])


def _pack_nibble_pairs(q: np.ndarray, out: np.ndarray) -> None:
    """Codes uint8 (B, 256) < 16 -> (B, 128): element 64 k + l low, 64 k + 32 + l high."""
    q4 = q.reshape(-1, 4, 2, 32)
    qs = out.reshape(-1, 4, 32)
    np.left_shift(q4[:, :, 1], 4, out=qs)
    qs |= q4[:, :, 0]


def search_q4_k(x: np.ndarray, out: np.ndarray) -> None:
    """float32 (B, 256) -> uint8 (B, 144) ``out``, never worse than ``encode_q4_k``."""
    reference = np.empty_like(out)
    q4_k.encode_q4_k(x, reference)
    state, q = _k_search(x, KLayout(32, 0, 15, 0, 63, True, 63), _q4_k_state(reference))
    ours = np.empty_like(out)
    _pack_q4_k_fields(state, ours)
    _pack_nibble_pairs(q.astype(np.uint8), ours[:, 16:])
    out[...] = keep_better(x, ours, reference, q4_k.decode_q4_k)


def search_q5_k(x: np.ndarray, out: np.ndarray) -> None:
    """float32 (B, 256) -> uint8 (B, 176) ``out``, never worse than ``encode_q5_k``."""
    reference = np.empty_like(out)
    q4_k.encode_q5_k(x, reference)
    state, q = _k_search(x, KLayout(32, 0, 31, 0, 63, True, 63), _q4_k_state(reference))
    ours = np.empty_like(out)
    _pack_q4_k_fields(state, ours)
    q = q.astype(np.uint8)
    ours[:, 16:48] = pack_bit_planes(q.reshape(-1, 8, 32) >> 4)
    _pack_nibble_pairs(q & 0x0F, ours[:, 48:])
    out[...] = keep_better(x, ours, reference, q4_k.decode_q5_k)


def search_q2_k(x: np.ndarray, out: np.ndarray) -> None:
    """float32 (B, 256) -> uint8 (B, 84) ``out``, never worse than ``encode_q2_k``."""
    reference = np.empty_like(out)
    q2_k.encode_q2_k(x, reference)
    scales = reference[:, 0:16]
    start = KState(
        f16_values(reference[:, 80:82])[:, 0],
        f16_values(reference[:, 82:84])[:, 0],
        (scales & 0x0F).astype(np.float32),
        (scales >> 4).astype(np.float32),
    )
    state, q = _k_search(x, KLayout(16, 0, 3, 0, 15, True, 15), start)
    ours = np.empty_like(out)
    ours[:, 0:16] = state.sc.astype(np.uint8) | (state.m.astype(np.uint8) << 4)
    q2_k.pack_2bit(q.astype(np.uint8), ours[:, 16:80])
    f16_bytes(state.d, ours[:, 80:82])
    f16_bytes(state.dmin, ours[:, 82:84])
    out[...] = keep_better(x, ours, reference, q2_k.decode_q2_k)


def search_q3_k(x: np.ndarray, out: np.ndarray) -> None:
    """float32 (B, 256) -> uint8 (B, 110) ``out``, never worse than ``encode_q3_k``."""
    reference = np.empty_like(out)
    q3_k.encode_q3_k(x, reference)
    s = q3_k.unpack_scales(reference[:, 96:108]).astype(np.float32) - F32(32)
    d = f16_values(reference[:, 108:110])[:, 0]
    start = KState(d, np.zeros_like(d), s, np.zeros_like(s))
    state, q = _k_search(x, KLayout(16, -4, 3, -32, 31, False), start)
    ours = np.empty_like(out)
    codes = (q + 4).astype(np.uint8)
    ours[:, 0:32] = pack_bit_planes((codes >> 2).reshape(-1, 8, 32))
    q2_k.pack_2bit(codes & 0x03, ours[:, 32:96])
    q3_k.pack_scales((state.sc + F32(32)).astype(np.uint8), ours[:, 96:108])
    f16_bytes(state.d, ours[:, 108:110])
    out[...] = keep_better(x, ours, reference, q3_k.decode_q3_k)


def search_q6_k(x: np.ndarray, out: np.ndarray) -> None:
    """float32 (B, 256) -> uint8 (B, 210) ``out``, never worse than ``encode_q6_k``."""
    reference = np.empty_like(out)
    q6_k.encode_q6_k(x, reference)
    s = reference[:, 192:208].view(np.int8).astype(np.float32)
    d = f16_values(reference[:, 208:210])[:, 0]
    start = KState(d, np.zeros_like(d), s, np.zeros_like(s))
    state, q = _k_search(x, KLayout(16, -32, 31, -128, 127, False), start)
    ours = np.empty_like(out)
    q6_k.pack_q6((q + 32).astype(np.uint8), ours[:, :192])
    ours[:, 192:208] = state.sc.astype(np.int8).view(np.uint8)
    f16_bytes(state.d, ours[:, 208:210])
    out[...] = keep_better(x, ours, reference, q6_k.decode_q6_k)


SEARCH_ENCODERS: dict[str, Callable[[np.ndarray, np.ndarray], None]] = {
    "Q4_0": search_q4_0,
    "Q4_1": search_q4_1,
    "Q5_0": search_q5_0,
    "Q5_1": search_q5_1,
    "Q8_0": search_q8_0,
    "Q2_K": search_q2_k,
    "Q3_K": search_q3_k,
    "Q4_K": search_q4_k,
    "Q5_K": search_q5_k,
    "Q6_K": search_q6_k,
}
