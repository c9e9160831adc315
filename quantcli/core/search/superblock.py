"""Two-level group parameters, as llama.cpp's Q4_K stores them: the groups' float scales and
(non-positive) offsets quantized to ``level_bits``-bit codes under one float16 scale pair per
super-block of ``groups_per_block`` groups:

    group scale  = d * sc,      sc in 0..2^level_bits - 1
    group offset = -dmin * mc,  mc in 0..2^level_bits - 1
    x_hat        = scale * q + offset,  q = clip(rint((x - offset) / scale), 0, 2^b - 1)

Q4_K: groups of 32, 8 groups a super-block, 6-bit codes: 4 + (6 + 6) / 32 + 2 * 16 / 256
= 4.5 bits a weight.

``superblock_params`` starts from llama.cpp's rule (d = max scale / 63, dmin = max -offset /
63, codes rounded to nearest) and improves it, per super-block, by alternating two exact
steps: each group's pair of codes is chosen among the floor and ceiling of its float scale
and offset over d and dmin (four pairs, each measured on the group's own weights), then
(d, dmin) is refit by least squares to the weights with those codes. A super-block keeps
a step only where its error falls, and the result is never worse than llama.cpp's rule.

``quant compress --scale-dtype k4 / k6 / k8 --search mse`` chooses its two-level scales with
it (``core/two_level.py``; with ``--search none``, llama.cpp's rule alone: refinements=0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantcli.core.search.affine import AffineParams, chunk_error
from quantcli.core.search.chunks import (
    SEARCH_CHUNK_ELEMENTS,
    buffer,
    check_groups,
    check_weights,
    float64_copy,
    transposed,
    transposed_weights,
)
from quantcli.core.search.grids import check_bits
from quantcli.errors import InputError, SpecError


@dataclass
class SuperBlockParams:
    """Two-level parameters of G groups in S = G / groups_per_block super-blocks.

    d, dmin: float16 (S,), >= 0. scale_codes, min_codes: uint8 (G,).
    """

    d: np.ndarray
    dmin: np.ndarray
    scale_codes: np.ndarray
    min_codes: np.ndarray

    def affine(self) -> AffineParams:
        """The groups' float32 (scale, offset), as a decoder computes them."""
        per = self.scale_codes.size // max(self.d.size, 1)
        d = np.repeat(self.d.astype(np.float32), per)
        dmin = np.repeat(self.dmin.astype(np.float32), per)
        scale = d * self.scale_codes.astype(np.float32)
        offset = -(dmin * self.min_codes.astype(np.float32))
        return AffineParams(scale, offset=offset)


def superblock_params(
    x,
    params: AffineParams,
    bits: int,
    *,
    groups_per_block: int = 8,
    level_bits: int = 6,
    weights="plain",
    refinements: int = 2,
    name: str = "tensor",
) -> SuperBlockParams:
    """Quantize float group parameters into super-block codes, then refit.

    x: float (G, n), the groups (G a multiple of ``groups_per_block``: pad the last
    super-block with zero groups); params: float-offset parameters of those groups (from
    ``affine_search`` or ``affine_rtn``, offsets <= 0); bits: the weight codes' bits.
    weights: the error weights (as ``affine_search``); refinements: rounds of the two steps.
    Groups whose scale codes come out 0 decode as scale 0: every weight of such a group
    becomes its offset.
    """
    x = check_groups(x, name)
    check_bits(bits, 2, 8)
    if not (isinstance(level_bits, int) and 2 <= level_bits <= 8):
        raise SpecError(f"level_bits {level_bits!r} in super-block scales: use 2 to 8")
    if not (isinstance(groups_per_block, int) and groups_per_block >= 1):
        raise SpecError(f"groups_per_block {groups_per_block!r}: use 1 or more")
    n_groups, n = x.shape
    if n_groups % groups_per_block:
        raise InputError(
            f"groups in {name}: {n_groups} is not a multiple of {groups_per_block} groups a "
            "super-block; pad the last super-block with zero groups"
        )
    if params.offset is None or params.scale.shape != (n_groups,):
        raise InputError(f"parameters in {name}: need float offsets and scales of ({n_groups},)")
    if np.any(params.offset > 0):
        raise InputError(f"offsets in {name}: must be <= 0 (use nonpositive_offset=True)")
    weights = check_weights(weights, x.shape, name)
    n_blocks = n_groups // groups_per_block
    top = 2**level_bits - 1
    result = SuperBlockParams(
        np.zeros(n_blocks, np.float16),
        np.zeros(n_blocks, np.float16),
        np.zeros(n_groups, np.uint8),
        np.zeros(n_groups, np.uint8),
    )
    per_chunk = max(1, SEARCH_CHUNK_ELEMENTS // (n * groups_per_block)) * groups_per_block
    for start in range(0, n_groups, per_chunk):
        part = slice(start, min(start + per_chunk, n_groups))
        blocks = slice(part.start // groups_per_block, part.stop // groups_per_block)
        found = _chunk(
            x[part],
            params.scale[part],
            params.offset[part],
            bits,
            groups_per_block,
            top,
            weights,
            part,
            refinements,
        )
        result.d[blocks], result.dmin[blocks] = found[0], found[1]
        result.scale_codes[part], result.min_codes[part] = found[2], found[3]
    return result


def _chunk(part, scale, offset, bits, per, top, weights, index, refinements):
    g = part.shape[0]
    xt = transposed(part)  # a lone group gets a zero companion
    width = xt.shape[1]
    nmax = 2**bits - 1
    w = transposed_weights(weights, index, xt)
    w = float64_copy(w)  # the errors' weights, once
    t, e64 = buffer("t", xt.shape), buffer("e64", xt.shape, np.float64)
    blocks = g // per
    target_s = scale.astype(np.float64)
    target_m = -offset.astype(np.float64)

    def pad(values, fill):
        return values if width == g else np.append(values, np.full(width - g, fill))

    def group_errors(d, dmin, sc, mc) -> np.ndarray:
        """E of every group of the chunk, float64 (g,)."""
        s = np.repeat(d.astype(np.float32), per) * sc.astype(np.float32)
        m = -(np.repeat(dmin.astype(np.float32), per) * mc.astype(np.float32))
        # a group with scale 0 decodes as its offset alone (it cannot be encoded by
        # division): measured apart
        safe = np.where(s > 0, s, np.float32(1))
        p = AffineParams(pad(safe, 1).astype(np.float32), offset=pad(m, 0).astype(np.float32))
        e = chunk_error(xt, p, nmax, w, t, e64)[:g]
        zero = s == 0
        if zero.any():
            e = np.where(zero, _offset_only(xt, m, w, e64)[:g], e)
        return e

    def floor_and_ceiling(target, step):
        step = np.repeat(step, per)
        ratio = np.where(step > 0, target / np.where(step > 0, step, 1), 0)
        low = np.clip(np.floor(ratio), 0, top)
        return low, np.minimum(low + 1, top)

    def block_sums(e):
        return e.reshape(blocks, per).sum(axis=1)

    # llama.cpp's rule: d = max / 63 in float16, codes rounded to nearest
    d = _f16(target_s.reshape(blocks, per).max(axis=1) / top)
    dmin = _f16(target_m.reshape(blocks, per).max(axis=1) / top)
    sc = _nearest_codes(target_s, d, per, top)
    mc = _nearest_codes(target_m, dmin, per, top)
    e = group_errors(d, dmin, sc, mc)
    e_block = block_sums(e)
    for _ in range(refinements):
        # step 1: each group's codes among floor / ceiling of its targets
        s_lo, s_hi = floor_and_ceiling(target_s, d)
        m_lo, m_hi = floor_and_ceiling(target_m, dmin)
        best_sc, best_mc, best_e = sc, mc, e
        for a in (s_lo, s_hi):
            for b in (m_lo, m_hi):
                e_ab = group_errors(d, dmin, a, b)
                better = e_ab < best_e
                best_sc = np.where(better, a, best_sc)
                best_mc = np.where(better, b, best_mc)
                best_e = np.where(better, e_ab, best_e)
        sc, mc, e = best_sc, best_mc, best_e
        e_block = block_sums(e)
        # step 2: (d, dmin) by least squares for these codes and the weight codes they give
        d_new, dmin_new = _refit(xt, w, d, dmin, sc, mc, per, nmax, g, t)
        e_new = group_errors(d_new, dmin_new, sc, mc)
        e_block_new = block_sums(e_new)
        keep = e_block_new < e_block
        d, dmin = np.where(keep, d_new, d), np.where(keep, dmin_new, dmin)
        e = np.where(np.repeat(keep, per), e_new, e)
        e_block = np.where(keep, e_block_new, e_block)
    return (
        d.astype(np.float16),
        dmin.astype(np.float16),
        sc.astype(np.uint8),
        mc.astype(np.uint8),
    )


def _f16(values: np.ndarray) -> np.ndarray:
    """float64 values rounded to float16 and back to float64."""
    with np.errstate(over="ignore"):
        return np.minimum(values, 65504).astype(np.float16).astype(np.float64)


def _nearest_codes(target, step, per, top):
    step = np.repeat(step, per)
    return np.clip(np.rint(np.where(step > 0, target / np.where(step > 0, step, 1), 0)), 0, top)


def _offset_only(xt, m, w, e64) -> np.ndarray:
    """E when every weight decodes as its group's offset m (float32 (g,))."""
    padded = np.zeros(xt.shape[1], np.float32)
    padded[: m.size] = m
    np.subtract(xt, padded, out=e64, dtype=np.float64)
    np.multiply(e64, e64, out=e64)
    if w is not None:
        np.multiply(e64, w, out=e64)
    return np.add.reduce(e64, axis=0)


def _refit(xt, w, d, dmin, sc, mc, per, nmax, g, t):
    """Least-squares (d, dmin >= 0) of every super-block for the group codes (sc, mc) and
    the weight codes the current (d, dmin) give: x ~ d * sc * q - dmin * mc. float16-rounded
    float64 (S,) each; a super-block whose system is singular keeps its pair."""
    width = xt.shape[1]
    s = np.repeat(d.astype(np.float32), per) * sc.astype(np.float32)
    m = -(np.repeat(dmin.astype(np.float32), per) * mc.astype(np.float32))
    s_pad = np.ones(width, np.float32)
    m_pad = np.zeros(width, np.float32)
    s_pad[:g] = np.where(s > 0, s, 1)
    m_pad[:g] = m
    np.subtract(xt, m_pad, out=t)
    np.divide(t, s_pad, out=t)
    np.rint(t, out=t)
    np.clip(t, 0, nmax, out=t)
    t[:, :g] *= (s > 0).astype(np.float32)  # a zero scale codes 0
    wq = t if w is None else w * t
    ones = None if w is None else w
    # per group: sum w q^2, sum w q, sum w x q, sum w, sum w x
    sqq = np.einsum("ij,ij->j", wq, t)[:g].astype(np.float64)
    sq = np.add.reduce(wq, axis=0)[:g].astype(np.float64)
    sxq = np.einsum("ij,ij->j", wq, xt)[:g].astype(np.float64)
    if ones is None:
        sw = np.full(g, float(xt.shape[0]))
        sx = np.add.reduce(xt, axis=0)[:g].astype(np.float64)
    else:
        sw = np.add.reduce(ones, axis=0)[:g].astype(np.float64)
        sx = np.einsum("ij,ij->j", ones, xt)[:g].astype(np.float64)
    a = sc.astype(np.float64)
    b = mc.astype(np.float64)
    blocks = g // per

    def total(v):
        return v.reshape(blocks, per).sum(axis=1)

    # x ~ d * (a q) - dmin * b: normal equations in (d, dmin)
    a11 = total(a * a * sqq)
    a12 = -total(a * b * sq)
    a22 = total(b * b * sw)
    r1 = total(a * sxq)
    r2 = -total(b * sx)
    det = a11 * a22 - a12 * a12
    ok = det > 1e-300
    det = np.where(ok, det, 1)
    d_new = np.where(ok, (r1 * a22 - r2 * a12) / det, d)
    dmin_new = np.where(ok, (a11 * r2 - a12 * r1) / det, dmin)
    # dmin must stay >= 0 (mins are stored as unsigned codes): then refit d alone
    negative = dmin_new < 0
    d_alone = np.where(a11 > 0, r1 / np.where(a11 > 0, a11, 1), d)
    d_new = np.where(negative, d_alone, d_new)
    dmin_new = np.where(negative, 0.0, dmin_new)
    d_new = np.where(d_new > 0, d_new, d)
    return _f16(d_new), _f16(dmin_new)


@dataclass
class SymmetricSuperBlockParams:
    """Two-level scales without mins of G groups in S super-blocks: d float16 (S,) > 0,
    scale_codes uint8 (G,) >= 1 (a group's scale d * sc is never 0)."""

    d: np.ndarray
    scale_codes: np.ndarray


def superblock_scales(
    x,
    scale,
    bits: int,
    *,
    groups_per_block: int = 8,
    level_bits: int = 6,
    weights="plain",
    refinements: int = 2,
    name: str = "tensor",
) -> SymmetricSuperBlockParams:
    """Symmetric group scales (absmax codes q in [-qmax, qmax], qmax = 2^(b-1) - 1,
    x_hat = d * sc * q) quantized into ``level_bits``-bit codes sc in 1..2^level_bits - 1
    under a float16 d per super-block, then refit.

    x: float (G, n), G a multiple of ``groups_per_block``; scale: float (G,) >= 0, the
    groups' float scales (``mse_scales`` or amax / qmax). Starts from llama.cpp's rule
    (d = max scale / (2^level_bits - 1) in float16, codes rounded to nearest, at least 1) and
    alternates, keeping what lowers a super-block's error: each group's code among the floor
    and ceiling of its scale over d, and d refit by least squares for the codes. A
    super-block of zeros gets the smallest float16 d, so no scale is 0.
    """
    x = check_groups(x, name)
    check_bits(bits, 2, 8)
    if not (isinstance(level_bits, int) and 2 <= level_bits <= 8):
        raise SpecError(f"level_bits {level_bits!r} in super-block scales: use 2 to 8")
    n_groups, n = x.shape
    per = groups_per_block
    if not (isinstance(per, int) and per >= 1) or n_groups % per:
        raise InputError(
            f"groups in {name}: {n_groups} is not a multiple of {per} groups a super-block; "
            "pad the last super-block with zero groups"
        )
    w = _group_weights(check_weights(weights, x.shape, name), x)
    x64 = x.astype(np.float64)
    qmax = 2 ** (bits - 1) - 1
    top = 2**level_bits - 1
    blocks = n_groups // per
    target = np.asarray(scale, np.float64)
    tiny = float(np.finfo(np.float16).smallest_subnormal)

    def errors(d, sc) -> np.ndarray:
        """E of every group, float64 (G,), codes and reconstruction in float32."""
        s = (np.repeat(d.astype(np.float32), per) * sc.astype(np.float32))[:, None]
        q = np.clip(np.rint(x / s), -qmax, qmax)
        e = np.square(x64 - (q * s).astype(np.float32))
        return (e if w is None else e * w).sum(axis=1)

    def block_sums(e):
        return e.reshape(blocks, per).sum(axis=1)

    d = np.maximum(_f16(target.reshape(blocks, per).max(axis=1) / top), tiny)
    sc = np.clip(np.rint(target / np.repeat(d, per)), 1, top)
    e = errors(d, sc)
    for _ in range(refinements):
        low = np.clip(np.floor(target / np.repeat(d, per)), 1, top)
        high = np.minimum(low + 1, top)
        for candidate in (low, high):
            e_c = errors(d, candidate)
            better = e_c < e
            sc, e = np.where(better, candidate, sc), np.where(better, e_c, e)
        # d by least squares for these codes and the weight codes the current d gives
        s = (np.repeat(d.astype(np.float32), per) * sc.astype(np.float32))[:, None]
        q = np.clip(np.rint(x / s), -qmax, qmax).astype(np.float64) * sc[:, None]
        wq = q if w is None else w * q
        num = block_sums((wq * x64).sum(axis=1))
        den = block_sums((wq * q).sum(axis=1))
        d_new = np.where(den > 0, num / np.where(den > 0, den, 1), d)
        d_new = np.maximum(_f16(np.where(d_new > 0, d_new, d)), tiny)
        e_new = errors(d_new, sc)
        keep = block_sums(e_new) < block_sums(e)
        d = np.where(keep, d_new, d)
        e = np.where(np.repeat(keep, per), e_new, e)
    return SymmetricSuperBlockParams(d.astype(np.float16), sc.astype(np.uint8))


def _group_weights(weights, x: np.ndarray) -> np.ndarray | None:
    """The error weights of groups x (G, n) as float64 (G, n), or None for plain."""
    if not isinstance(weights, str):
        return weights.astype(np.float64)
    if weights == "plain":
        return None
    x64 = x.astype(np.float64)
    if weights == "square":
        return x64 * x64
    return np.sqrt(np.mean(x64 * x64, axis=1, keepdims=True)) + np.abs(x64)  # rms_abs
