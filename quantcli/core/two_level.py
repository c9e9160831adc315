"""Two-level group scales for the quantizer (``--scale-dtype k4 / k6 / k8``): how a chunk of
whole rows gets its groups' scales and mins, stored as codes under a float16 pair per
super-block (``scales.SuperBlockScales``), and the float32 values its codes are encoded with.

Per row of n weights (n a multiple of the group size g): G = n / g groups, in super-blocks
of ``spec.super_block`` consecutive groups (the last super-block of a row may hold fewer).
For each group a float scale s and min m >= 0 are chosen first, then coded:

- ``--search none`` (round to nearest): s = (max x - lo) / (2^b - 1), m = -lo with
  lo = min(min x, 0) (0 for a constant group, which its min alone restores); then llama.cpp's
  rule for Q4_K's scales: d = max s / (2^k - 1) and dmin = max m / (2^k - 1) in float16,
  sc = rint(s / d), mc = rint(m / dmin), clipped to 0..2^k - 1;
- ``mse`` / ``wmse``: s and m from ``search.affine_search`` (float offset, plain or rms + |x|
  weights), then ``search.superblock_params``: the same rule, improved by choosing each
  group's codes among floor and ceiling and refitting (d, dmin) by least squares. With
  ``mse`` a super-block keeps round to nearest's codes unless the search's have a strictly
  smaller squared error there.

The codes are then encoded with the decoded values, scale = float32(d) * sc and
min = float32(dmin) * mc (q = clip(rint((x + min) / scale), 0, 2^b - 1), codes 0 where the
scale is 0), as llama.cpp's Q4_K encoder does. Every super-block's result depends on its
own weights alone, so chunking and threads change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantcli.core.scales import SCALE_KINDS, SuperBlockScales
from quantcli.core.spec import QuantSpec
from quantcli.errors import SpecError

F16_MAX = float(np.finfo(np.float16).max)

WEIGHTS = {"none": "plain", "mse": "plain", "wmse": "rms_abs"}


@dataclass
class TwoLevelParams:
    """The parameters the quantizer encodes a chunk with, float32 (rows, G) each: the range
    [lo, hi] the codes span, the group scale and its min (the zero point's place:
    x_hat = scale * q - min)."""

    lo: np.ndarray
    hi: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None  # None for absmax

    @property
    def empty(self) -> np.ndarray:
        if self.zero_point is None:
            return self.scale == 0
        return (self.scale == 0) & (self.zero_point == 0)


def two_level_params(
    part: np.ndarray, spec: QuantSpec, name: str = "tensor"
) -> tuple[TwoLevelParams, SuperBlockScales]:
    """Parameters of the rows ``part`` (float32 (rows, n), finite, n a multiple of
    ``spec.group_size``) and their stored form (``SuperBlockScales`` with lead (rows,))."""
    from quantcli.core.search.affine import AffineParams, affine_search

    rows, n = part.shape
    g, per = spec.group_size, spec.super_block
    groups = n // g
    stored = SuperBlockScales.empty((rows,), groups, per, mins=spec.has_zero_point)
    if rows * groups == 0:
        zeros = np.zeros((rows, groups), np.float32)
        return TwoLevelParams(zeros, zeros, zeros, zeros if spec.has_zero_point else None), stored
    x = part.reshape(rows * groups, g)
    if not spec.has_zero_point:
        return _symmetric(x, spec, rows, name)
    lo = np.minimum(x.min(axis=1), np.float32(0))
    span = x.max(axis=1).astype(np.float64) - lo
    nmax = 2**spec.bits - 1
    constant = span == 0
    rtn = AffineParams((span / nmax).astype(np.float32), offset=lo)
    _check_range(rtn, spec, name)
    best = _coded(x, rtn, spec, rows, refinements=0, weights="plain")
    if spec.search != "none":
        weights = WEIGHTS[spec.search]
        found = affine_search(x, spec.bits, "float", weights=weights, name=name)
        # a constant group is its min alone: a scale would only widen its super-block's d
        found = AffineParams(
            np.where(constant, np.float32(0), found.scale).astype(np.float32),
            offset=np.where(constant, lo, found.offset).astype(np.float32),
        )
        _check_range(found, spec, name)
        searched = _coded(x, found, spec, rows, refinements=2, weights=weights)
        if spec.search == "mse":
            keep = _block_sse(x, searched, spec) >= _block_sse(x, best, spec)
            searched = _select(keep, best, searched)
        best = searched
    scale, minimum = best.values()
    stored.d[...], stored.dmin[...] = best.d, best.dmin
    stored.scale_codes[...], stored.min_codes[...] = best.scale_codes, best.min_codes
    hi = scale * np.float32(nmax) - minimum
    return TwoLevelParams(-minimum, hi, scale, minimum), stored


def _symmetric(x, spec: QuantSpec, rows: int, name: str):
    """absmax: scale d * sc (sc >= 1, never 0), codes clip(rint(x / scale), -qmax, qmax);
    the float scales amax / qmax (round to nearest) or ``search.mse_scales``, coded by
    ``search.superblock_scales``."""
    from quantcli.core.search.grids import int_grid
    from quantcli.core.search.symmetric import mse_scales

    qmax = 2 ** (spec.bits - 1) - 1
    rtn = (np.abs(x).max(axis=1) / np.float32(qmax)).astype(np.float32)
    _check_range(rtn, spec, name)
    best = _coded_symmetric(x, rtn, spec, rows, refinements=0, weights="plain")
    if spec.search != "none":
        weights = WEIGHTS[spec.search]
        found = mse_scales(x, int_grid(spec.bits), weights=weights, rtn=rtn, name=name)
        found = np.where(rtn == 0, np.float32(0), found).astype(np.float32)
        _check_range(found, spec, name)
        searched = _coded_symmetric(x, found, spec, rows, refinements=2, weights=weights)
        if spec.search == "mse":
            keep = _block_sse(x, searched, spec) >= _block_sse(x, best, spec)
            searched = _select(keep, best, searched)
        best = searched
    scale, _ = best.values()
    reach = scale * np.float32(qmax)
    return TwoLevelParams(-reach, reach, scale, None), best


def _coded_symmetric(x, scale, spec: QuantSpec, rows, refinements, weights) -> SuperBlockScales:
    """Float group scales (G = rows * groups) coded as two-level scales without mins, each
    row padded to whole super-blocks with empty groups."""
    from quantcli.core.search.superblock import superblock_scales

    per, g = spec.super_block, x.shape[1]
    groups = x.shape[0] // rows
    supers = -(-groups // per)
    padded = supers * per
    scale = scale.reshape(rows, groups)
    xs = x
    if padded != groups:
        pad = ((0, 0), (0, padded - groups))
        scale = np.pad(scale, pad)
        xs = np.pad(x.reshape(rows, groups, g), pad + ((0, 0),)).reshape(-1, g)
    sb = superblock_scales(
        xs,
        scale.reshape(-1),
        spec.bits,
        groups_per_block=per,
        level_bits=SCALE_KINDS[spec.scale_dtype].level_bits,
        weights=weights,
        refinements=refinements,
    )
    codes = sb.scale_codes.reshape(rows, padded)[:, :groups]
    return SuperBlockScales(sb.d.reshape(rows, supers), codes, per)


def _check_range(params, spec: QuantSpec, name: str) -> None:
    """Refuse group scales or mins whose super-block step, largest / (2^k - 1), float16
    cannot hold: their codes would clip every such group."""
    top = SCALE_KINDS[spec.scale_dtype].top
    if isinstance(params, np.ndarray):
        largest = float(params.max())
    else:
        largest = max(float(params.scale.max()), float(-params.offset.min()))
    if largest / top > F16_MAX:
        raise SpecError(
            f"scale {largest:.4g} overflows the float16 super-block scale of "
            f"{spec.scale_dtype} in tensor {name}: the weights are too large for two-level "
            "scales; use --scale-dtype float32"
        )


def _coded(x, params, spec: QuantSpec, rows: int, refinements: int, weights) -> SuperBlockScales:
    """Float group parameters (G = rows * groups) coded as two-level scales of ``rows``
    rows: each row padded to whole super-blocks with empty groups (scale and min 0, weights
    0), which change neither its d nor its dmin nor any error."""
    from quantcli.core.search.affine import AffineParams
    from quantcli.core.search.superblock import superblock_params

    per = spec.super_block
    g = x.shape[1]
    groups = x.shape[0] // rows
    supers = -(-groups // per)
    padded = supers * per
    scale = params.scale.reshape(rows, groups)
    offset = params.offset.reshape(rows, groups)
    xs = x
    if padded != groups:
        pad = ((0, 0), (0, padded - groups))
        scale, offset = np.pad(scale, pad), np.pad(offset, pad)
        xs = np.pad(x.reshape(rows, groups, g), pad + ((0, 0),)).reshape(-1, g)
    sb = superblock_params(
        xs,
        AffineParams(scale.reshape(-1), offset=offset.reshape(-1)),
        spec.bits,
        groups_per_block=per,
        level_bits=SCALE_KINDS[spec.scale_dtype].level_bits,
        weights=weights,
        refinements=refinements,
    )
    return SuperBlockScales(
        sb.d.reshape(rows, supers),
        sb.scale_codes.reshape(rows, padded)[:, :groups],
        per,
        sb.dmin.reshape(rows, supers),
        sb.min_codes.reshape(rows, padded)[:, :groups],
    )


def _block_sse(x: np.ndarray, coded: SuperBlockScales, spec: QuantSpec) -> np.ndarray:
    """float64 (rows, S): the squared error of every super-block with these codes, the
    weights encoded and decoded as the quantizer does."""
    from quantcli.core.schemes.zeropoint import encode_with_min

    scale, minimum = coded.values()
    scale = np.broadcast_to(scale.reshape(-1, 1), x.shape)
    if minimum is None:  # absmax: scales are never 0
        qmax = 2 ** (spec.bits - 1) - 1
        x_hat = np.clip(np.rint(x / scale), -qmax, qmax) * scale
    else:
        minimum = np.broadcast_to(minimum.reshape(-1, 1), x.shape)
        q = np.empty(x.shape, np.uint8)
        encode_with_min(x, scale, minimum, 2**spec.bits - 1, np.empty(x.shape, np.float32), q)
        x_hat = q * scale - minimum
    error = np.square(x_hat.astype(np.float64) - x).sum(axis=1)
    rows, groups = coded.scale_codes.shape
    starts = np.arange(0, groups, spec.super_block)
    return np.add.reduceat(error.reshape(rows, groups), starts, axis=1)


def _select(keep: np.ndarray, a: SuperBlockScales, b: SuperBlockScales) -> SuperBlockScales:
    """``a``'s super-blocks where ``keep`` (bool (rows, S)), ``b``'s elsewhere."""
    per = a.groups_per_block
    groups = a.scale_codes.shape[1]
    keep_groups = np.repeat(keep, per, axis=1)[:, :groups]
    if a.dmin is None:
        return SuperBlockScales(
            np.where(keep, a.d, b.d), np.where(keep_groups, a.scale_codes, b.scale_codes), per
        )
    return SuperBlockScales(
        np.where(keep, a.d, b.d),
        np.where(keep_groups, a.scale_codes, b.scale_codes),
        per,
        np.where(keep, a.dmin, b.dmin),
        np.where(keep_groups, a.min_codes, b.min_codes),
    )
