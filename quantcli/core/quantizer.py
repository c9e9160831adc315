"""Quantize and dequantize one array: arrays in, arrays out.

``quantize`` calibrates every group, derives scales (and zero points), and computes integer
codes; ``dequantize`` restores floats. Scales are computed and applied in float32 and stored
in the spec's scale dtype (as llama.cpp's Q8_0 computes codes with the float32 d and stores d
as float16).

The array is walked in cache-sized chunks (``layout.tiling``; spread over threads with
``QUANT_THREADS``): a chunk is converted to float32, calibrated, encoded and, on request,
measured while it is in cache, so the whole pass reads each weight from memory once (twice
for per-tensor ranges). The results do not depend on the chunking or the thread count:
``tests/test_core_chunking.py`` checks them bit for bit.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np

from quantcli.core.calibration import chunk_range, tensor_range
from quantcli.core.layout import param_shape, tiling
from quantcli.core.metrics import ErrorStats
from quantcli.core.packing import pack, packed_length, unpack
from quantcli.core.parallel import CHUNK_ELEMENTS, map_chunks, scratch
from quantcli.core.scales import SCALE_KINDS, SuperBlockScales
from quantcli.core.spec import QuantSpec
from quantcli.errors import InputError, NonFiniteError, SpecError

F32_MAX = float(np.finfo(np.float32).max)

FLOAT_DTYPES = {
    np.dtype(np.float16),
    np.dtype(np.float32),
    np.dtype(np.float64),
    np.dtype(ml_dtypes.bfloat16),
    np.dtype(ml_dtypes.float8_e4m3fn),
    np.dtype(ml_dtypes.float8_e5m2),
}


def is_float_dtype(dtype) -> bool:
    """True for the float dtypes quant can quantize (fp64, fp32, fp16, bf16, fp8)."""
    return np.dtype(dtype) in FLOAT_DTYPES


@dataclass
class QuantizedTensor:
    """A quantized array.

    codes: the scheme's code dtype (int8 for absmax and fullrange, uint8 for zeropoint and the
    4-bit codebooks, float8 for fp8) of ``shape``; when ``packed``, the uint8 of
    ``packing.pack`` (shape ``shape[:-1] + (packed_length,)``) for bits < 8.
    scale: stored as ``spec.scale_dtype`` says (``scales.py``), ``param_shape(shape, spec)``.
    zero_point: uint8 of the scale's shape, or None for schemes without one.
    superblocks: with two-level scales (``spec.two_level``), their stored form; ``scale``
    and ``zero_point`` then hold the float32 group scales and mins they decode to.
    tensor_scale: float32 (1,) for schemes with a scale per tensor (nvfp4), else None.
    clip_lo / clip_hi: float32 calibrated range of every group (scale's shape); values outside
    it were clipped. Used for metrics, never stored.
    stats: error statistics of the reconstruction, when ``quantize(..., measure=True)``.
    """

    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None
    spec: QuantSpec
    shape: tuple[int, ...]
    dtype: np.dtype
    clip_lo: np.ndarray | None = field(default=None, repr=False)
    clip_hi: np.ndarray | None = field(default=None, repr=False)
    stats: ErrorStats | None = field(default=None, repr=False)
    packed: bool = False
    tensor_scale: np.ndarray | None = None
    superblocks: SuperBlockScales | None = None

    def unpacked_codes(self) -> np.ndarray:
        """The codes, one int8/uint8 per element, of ``shape``."""
        if not self.packed or self.spec.bits == 8:
            return self.codes
        n = self.shape[-1] if self.shape else 1
        return unpack(self.codes, self.spec.bits, n, self.spec.signed).reshape(self.shape)

    def dequantize(self, dtype=np.float32) -> np.ndarray:
        codes = self.unpacked_codes()
        return dequantize(
            codes, self.scale, self.zero_point, self.spec, dtype=dtype,
            tensor_scale=self.tensor_scale,
        )  # fmt: skip


def quantize(
    x: np.ndarray,
    spec: QuantSpec,
    name: str = "tensor",
    measure: bool = False,
    packed: bool = False,
    tensor_scale: np.ndarray | None = None,
) -> QuantizedTensor:
    """Quantize ``x`` (any shape; fp64/fp32/fp16/bf16/fp8, computed in float32) with ``spec``.

    measure: also compute the error statistics of the reconstruction from the stored
    parameters (``QuantizedTensor.stats``), chunk by chunk while the data is in cache.
    packed: give the codes packed (``packing.pack``) when bits < 8. Per group, each chunk is
    packed while in cache, so the unpacked codes never exist as a whole.
    tensor_scale: float32 (1,), the scale per tensor to use for a scheme that has one (nvfp4)
    instead of the one ``x`` gives (``tensor_scale_of``), e.g. one shared by the parts of a
    layer that a runtime fuses.

    Raises SpecError when the spec does not fit the array (e.g. axis out of range),
    InputError for non-float arrays and NonFiniteError when ``x`` holds NaN or inf.
    """
    x = np.asarray(x)
    if not is_float_dtype(x.dtype):
        raise InputError(
            f"unsupported dtype {x.dtype} in tensor {name}: only float tensors "
            "(float64, float32, float16, bfloat16) can be quantized; convert it or leave it out"
        )
    if x.dtype == np.float64:
        _check_float32_range(x, name)
    spec = spec.for_tensor(x.shape, name)
    scheme = spec.format
    tiles = tiling(x.shape, spec, CHUNK_ELEMENTS)
    xv = x.reshape(tiles.view_shape)
    if not scheme.tensor_scale:
        tensor_scale = None
    elif tensor_scale is None:
        tensor_scale = _tensor_scale(x, spec, name)
    else:
        tensor_scale = np.asarray(tensor_scale, np.float32).reshape(1)
    packed = packed and spec.bits < 8
    # group chunks are whole rows of the last axis, so they can be packed one by one
    pack_chunks = packed and tiles.granularity == "group"
    if pack_chunks:
        rows, last = tiles.view_shape
        codes = np.empty((rows, packed_length(last, spec.bits)), np.uint8)
    else:
        codes = np.empty(tiles.view_shape, scheme.code_dtype)
    params = _ParamArrays.empty(tiles.param_view_shape, spec.has_zero_point, spec.two_level)
    superblocks = None
    if spec.two_level:  # stored per row: chunks of whole rows hold whole super-blocks
        rows, groups = tiles.param_view_shape
        superblocks = SuperBlockScales.empty(
            (rows,), groups, spec.super_block, mins=spec.has_zero_point
        )

    def calibrated(lo, hi, part):
        """Parameters from the range [lo, hi] of ``part``, once it is known to be finite."""
        if not _is_finite(lo, hi, part, spec):
            raise _nonfinite_error(xv, name)
        return scheme.params(lo, hi, spec, tensor_scale)

    def chunk(index, part, p) -> ErrorStats | None:
        """Encode (and measure) chunk ``part`` (float32) with parameters ``p`` of its groups."""
        out = scratch("codes", part.shape, scheme.code_dtype) if pack_chunks else codes[index]
        scale = tiles.expand(scheme.effective_scale(p.scale, tensor_scale), part)
        zp = _expand_optional(tiles, p.zero_point, part)
        scheme.encode(part, scale, zp, spec, out=out)
        if spec.calibration == "percentile":
            if p.empty.any():
                # the range is the point 0: every value of the group is clipped to exactly 0,
                # whose code is the zero point where there is one
                zero = scheme.zero_code if zp is None else zp
                np.copyto(out, zero, where=tiles.expand(p.empty, part), casting="unsafe")
            if scheme.integer:
                _clip_to_range_codes(tiles, spec, part, out, p)
        if pack_chunks:
            pack(out, spec.bits, out=codes[index])
        if not measure:
            return None
        return _measure(tiles, scheme, spec, part, out, p, tensor_scale, name)

    if tiles.independent:
        # every group lies inside one chunk: calibrate, encode and measure it in cache
        def run(index) -> ErrorStats | None:
            part = _float32(xv[index])
            p = calibrated(*chunk_range(tiles, part, spec), part)
            if spec.two_level:
                p = _two_level(part, spec, name, superblocks, index)
            elif spec.search != "none":
                p = _searched(tiles, spec, part, p, name, tensor_scale)
            params.part(tiles.param_index(index)).store(p)
            return chunk(index, part, p)
    else:
        # one group spans every chunk: its range comes first (chunk by chunk for min-max)
        p = calibrated(*tensor_range(tiles, xv, spec), xv)
        params.store(p)

        def run(index) -> ErrorStats | None:
            return chunk(index, _float32(xv[index]), p)

    stats = ErrorStats()
    for chunk_stats in map_chunks(run, tiles.chunks):
        if measure:
            stats = stats.merge(chunk_stats)
    pshape = param_shape(x.shape, spec)
    if pack_chunks:
        codes = codes.reshape(x.shape[:-1] + codes.shape[-1:])
    else:
        codes = codes.reshape(x.shape)
        if packed:
            codes = pack(codes, spec.bits)
    return QuantizedTensor(
        codes=codes,
        scale=_store_scale(params.scale.reshape(pshape), spec, name),
        zero_point=None if params.zero_point is None else params.zero_point.reshape(pshape),
        spec=spec,
        shape=x.shape,
        dtype=x.dtype,
        clip_lo=params.lo.reshape(pshape),
        clip_hi=params.hi.reshape(pshape),
        stats=stats if measure else None,
        packed=packed,
        tensor_scale=tensor_scale,
        superblocks=_shaped(superblocks, x.shape),
    )


def _two_level(part, spec: QuantSpec, name: str, superblocks: SuperBlockScales, index):
    """Two-level parameters of chunk ``part`` (``two_level.py``), their stored form written
    into the rows ``index`` of ``superblocks``."""
    from quantcli.core.two_level import two_level_params

    p, stored = two_level_params(part, spec, name)
    superblocks.d[index], superblocks.scale_codes[index] = stored.d, stored.scale_codes
    if stored.dmin is not None:
        superblocks.dmin[index], superblocks.min_codes[index] = stored.dmin, stored.min_codes
    return p


def _shaped(sb: SuperBlockScales | None, shape: tuple[int, ...]) -> SuperBlockScales | None:
    """``sb`` (rows first) with the tensor's leading axes, ``shape[:-1]``."""
    if sb is None:
        return None
    lead = tuple(shape[:-1])

    def shaped(a):
        return None if a is None else a.reshape(lead + a.shape[-1:])

    return SuperBlockScales(
        shaped(sb.d),
        shaped(sb.scale_codes),
        sb.groups_per_block,
        shaped(sb.dmin),
        shaped(sb.min_codes),
    )


def dequantize(
    codes, scale, zero_point, spec: QuantSpec, dtype=np.float32, tensor_scale=None
) -> np.ndarray:
    """Restore floats per group (``(codes - zero_point) * scale`` for the integer schemes), in
    float32, cast to ``dtype``.

    codes: unpacked codes of the tensor's shape; scale (stored dtype), zero_point and
    tensor_scale as ``quantize`` gives.
    """
    codes = np.asarray(codes)
    spec = spec.for_tensor(codes.shape)
    scheme = spec.format
    tiles = tiling(codes.shape, spec, CHUNK_ELEMENTS)
    cv = codes.reshape(tiles.view_shape)
    scale32 = SCALE_KINDS[spec.scale_dtype].load(scale)
    scale32 = scheme.effective_scale(scale32, tensor_scale).reshape(tiles.param_view_shape)
    zpv = None if zero_point is None else np.asarray(zero_point).reshape(tiles.param_view_shape)
    out = np.empty(tiles.view_shape, np.float32)
    saturate = _may_overflow(scale32, spec)

    def run(index) -> None:
        part, pi = cv[index], tiles.param_index(index) if tiles.independent else Ellipsis
        zp = None if zpv is None else tiles.expand(zpv[pi], part)
        with np.errstate(over="ignore") if saturate else contextlib.nullcontext():
            scheme.decode(part, tiles.expand(scale32[pi], part), zp, out=out[index])
        if saturate:
            np.clip(out[index], -F32_MAX, F32_MAX, out=out[index])

    map_chunks(run, tiles.chunks)
    out = out.reshape(codes.shape)
    return out if np.dtype(dtype) == np.float32 else out.astype(dtype)


def clipped_mask(x: np.ndarray, qt: QuantizedTensor) -> np.ndarray:
    """bool of x's shape: True where calibration clipped the element (outside [lo, hi])."""
    tiles = tiling(np.shape(x), qt.spec, CHUNK_ELEMENTS)
    xv = np.asarray(x).reshape(tiles.view_shape)
    lo = qt.clip_lo.reshape(tiles.param_view_shape)
    hi = qt.clip_hi.reshape(tiles.param_view_shape)
    mask = np.empty(tiles.view_shape, bool)
    for index in tiles.chunks:
        part, pi = _float32(xv[index]), tiles.param_index(index) if tiles.independent else Ellipsis
        mask[index] = (part < tiles.expand(lo[pi], part)) | (part > tiles.expand(hi[pi], part))
    return mask.reshape(np.shape(x))


@dataclass
class _ParamArrays:
    """The parameter arrays of a tensor (or views of a part of them), in the tiling's
    parameter view."""

    scale: np.ndarray  # float32
    lo: np.ndarray  # float32
    hi: np.ndarray  # float32
    zero_point: np.ndarray | None  # uint8

    @classmethod
    def empty(cls, shape: tuple[int, ...], zero_point: bool, float_min: bool) -> _ParamArrays:
        # an empty tensor keeps these defaults: scale 1, range [0, 0], zero point 0;
        # two-level scales have a float32 min in the zero point's place
        zp = np.zeros(shape, np.float32 if float_min else np.uint8) if zero_point else None
        lo, hi = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        return cls(np.ones(shape, np.float32), lo, hi, zp)

    def part(self, index) -> _ParamArrays:
        zp = None if self.zero_point is None else self.zero_point[index]
        return _ParamArrays(self.scale[index], self.lo[index], self.hi[index], zp)

    def store(self, p) -> None:
        """Write the parameters ``p`` (of this part's shape) into the arrays."""
        self.scale[...] = p.scale
        self.lo[...] = p.lo
        self.hi[...] = p.hi
        if self.zero_point is not None:
            self.zero_point[...] = p.zero_point


def tensor_scale_of(x: np.ndarray, spec: QuantSpec, name: str = "tensor") -> np.ndarray | None:
    """float32 (1,): the scale per tensor ``spec``'s scheme keeps above its group scales
    (nvfp4), from the largest magnitude of ``x``; None for schemes without one."""
    return _tensor_scale(np.asarray(x), spec, name) if spec.format.tensor_scale else None


def _tensor_scale(x: np.ndarray, spec: QuantSpec, name: str) -> np.ndarray:
    """float32 (1,): the tensor-level scale of a scheme that has one (nvfp4), from the
    tensor's largest magnitude, found chunk by chunk before the groups are calibrated."""
    whole = QuantSpec(scheme="absmax", granularity="tensor")  # amax over the whole tensor
    tiles = tiling(x.shape, whole, CHUNK_ELEMENTS)
    lo, hi = tensor_range(tiles, x.reshape(tiles.view_shape), whole)
    amax = max(float(hi[0]), -float(lo[0]))
    if not math.isfinite(amax):
        raise _nonfinite_error(x, name)
    return spec.format.tensor_scale_of(amax)


def _searched(tiles, spec: QuantSpec, part: np.ndarray, p, name: str, tensor_scale=None):
    """Parameters ``p`` of chunk ``part`` refined by ``spec.search`` (``search/refine.py``),
    group by group: each group's result depends on that group alone, so chunking and threads
    change nothing. A format with a tensor scale g (nvfp4: the effective scale is the stored
    one / g) is searched on x * g, in its stored scales' own units."""
    from quantcli.core.search.refine import CHECKED_BY_QUANTIZE, refine_affine, refine_symmetric

    scheme = spec.format
    kind = SCALE_KINDS[spec.scale_dtype]  # the search compares scales as they are stored
    g = None if tensor_scale is None else np.float32(np.asarray(tensor_scale).reshape(-1)[0])
    scale = p.scale.copy()
    zp = None if p.zero_point is None else p.zero_point.copy()
    if tiles.granularity == "group":
        views = tiles.groups(part)
    elif part.shape[0] == 1:  # channel along axis 0: the chunk's channels are its rows
        views = [(part[0][:, None, :], slice(None))]
        scale, zp = scale.reshape(-1, 1), None if zp is None else zp.reshape(-1, 1)
    else:
        raise SpecError(
            f"search {spec.search} with --granularity channel --axis {spec.axis} in tensor "
            f"{name}: the search works on groups of consecutive weights; use --axis 0 or "
            "--granularity group"
        )
    for view, cols in views:
        rows, k, n = view.shape
        if rows * k * n == 0:  # no weights: nothing to search
            continue
        x = view.reshape(rows * k, n)
        if g is not None:
            with np.errstate(over="ignore"):
                x = x * g
        if scheme.has_zero_point:
            s, z = refine_affine(
                x, spec.search, spec.bits, scale[:, cols].reshape(-1),
                zp[:, cols].reshape(-1), kind, name,
            )  # fmt: skip
            zp[:, cols] = z.reshape(rows, k)
        else:
            rtn = scale[:, cols].reshape(-1)
            s = refine_symmetric(x, spec.search, spec.scheme, spec.bits, rtn, kind, name)
        scale[:, cols] = s.reshape(rows, k)
    shape = p.scale.shape
    scale, zp = scale.reshape(shape), None if zp is None else zp.reshape(shape)
    if CHECKED_BY_QUANTIZE[spec.search]:
        # the plain squared error, checked as decompress will restore it (codes from the
        # float32 scale, decoded with the stored one): a group keeps round-to-nearest's
        # parameters unless the search's are strictly better there
        before = _group_sse(tiles, spec, part, p.scale, p.zero_point, tensor_scale)
        after = _group_sse(tiles, spec, part, scale, zp, tensor_scale)
        keep = after >= before
        scale = np.where(keep, p.scale, scale).astype(np.float32)
        if zp is not None:
            zp = np.where(keep, p.zero_point, zp).astype(np.uint8)
    return scheme.searched(p, scale, zp, spec, tensor_scale)


def _group_sse(
    tiles, spec: QuantSpec, part: np.ndarray, scale, zero_point, tensor_scale=None
) -> np.ndarray:
    """float64 squared error of every group of chunk ``part`` (the parameter view's shape)
    with these parameters, as quantize encodes and dequantize restores them."""
    scheme, kind = spec.format, SCALE_KINDS[spec.scale_dtype]
    zp = _expand_optional(tiles, zero_point, part)
    codes = scratch("check-codes", part.shape, scheme.code_dtype)
    effective = scheme.effective_scale(scale, tensor_scale)
    scheme.encode(part, tiles.expand(effective, part), zp, spec, out=codes)
    x_hat = scratch("check-x-hat", part.shape, np.float32)
    with np.errstate(over="ignore"):
        restored = scheme.effective_scale(kind.load(kind.store(scale)), tensor_scale)
        scheme.decode(codes, tiles.expand(restored, part), zp, out=x_hat)
    # the difference of two float32 values is exact in float64; squared and summed per group
    # in one einsum pass over each view of whole groups
    diff = scratch("check-diff", part.shape, np.float64)
    np.subtract(x_hat, part, out=diff, dtype=np.float64)
    if tiles.granularity != "group":
        return np.einsum("ijk,ijk->j", diff, diff)[None, :, None]
    out = np.empty((part.shape[0], -(-part.shape[1] // tiles.group_size)), np.float64)
    for view, cols in tiles.groups(diff):
        out[:, cols] = np.einsum("ijk,ijk->ij", view, view)
    return out


def _float32(part: np.ndarray) -> np.ndarray:
    return part if part.dtype == np.float32 else part.astype(np.float32)


def _expand_optional(tiles, param, part):
    return None if param is None else tiles.expand(param, part)


def _clip_to_range_codes(tiles, spec: QuantSpec, x, codes, p) -> None:
    """Clip ``codes`` of chunk ``x`` to the codes of their group's range ends, in the groups
    whose scale had to be raised above (hi - lo) / levels: to the scale dtype's smallest
    positive value, or by steps in the subnormal range (``safe_scale``). There the range ends
    well inside [qmin, qmax], and a value that calibration clipped would otherwise come back
    far beyond the range. Elsewhere the range ends at qmin and qmax: nothing changes."""
    qmin, qmax = spec.code_range
    span = p.hi.astype(np.float64) - p.lo.astype(np.float64)
    raised = p.scale.astype(np.float64) * (qmax - qmin) > span * (1 + 2.0**-20)
    raised &= span > 0  # an empty range is handled apart (every code is 0)
    if not raised.any():
        return
    zp = 0 if p.zero_point is None else p.zero_point.astype(np.int32)
    with np.errstate(over="ignore"):  # huge ratios clip to qmin / qmax just below
        lo = np.clip(np.rint(p.lo / p.scale) + zp, qmin, qmax)
        hi = np.clip(np.rint(p.hi / p.scale) + zp, qmin, qmax)
    lo = np.where(raised, lo, qmin).astype(np.int16)
    hi = np.where(raised, hi, qmax).astype(np.int16)
    wide = np.clip(codes, tiles.expand(lo, x), tiles.expand(hi, x), dtype=np.int16)
    np.copyto(codes, wide, casting="unsafe")


def _measure(tiles, scheme, spec: QuantSpec, x, codes, p, tensor_scale, name) -> ErrorStats:
    """Error statistics of chunk ``x`` against its reconstruction from the *stored* scales
    (rounded to the scale dtype), i.e. exactly what decompress will give back."""
    kind = SCALE_KINDS[spec.scale_dtype]
    stored = scheme.effective_scale(kind.load(_store_scale(p.scale, spec, name)), tensor_scale)
    x_hat = scratch("measure", x.shape, np.float32)
    zp = _expand_optional(tiles, p.zero_point, x)
    with np.errstate(over="ignore"):
        scheme.decode(codes, tiles.expand(stored, x), zp, out=x_hat)
    if _may_overflow(stored, spec):  # saturate as dequantize does
        np.clip(x_hat, -F32_MAX, F32_MAX, out=x_hat)
    clipped = None
    if spec.calibration == "percentile" or spec.search != "none":
        clipped = (x < tiles.expand(p.lo, x)) | (x > tiles.expand(p.hi, x))
    return ErrorStats.of(x, x_hat, clipped)


def _may_overflow(scale32: np.ndarray, spec: QuantSpec) -> bool:
    """True when a reconstruction can exceed float32's range: weights near float32's max
    reconstruct a little beyond it (the zero point or a float16/bfloat16 scale rounds up by up
    to half a step); those values saturate at float32's max instead of overflowing to inf."""
    levels = float(np.abs(spec.format.levels(spec)).max())
    return scale32.size > 0 and float(np.abs(scale32).max()) * levels > F32_MAX


def _is_finite(lo: np.ndarray, hi: np.ndarray, part: np.ndarray, spec: QuantSpec) -> bool:
    # min/max propagate NaN and inf into the range, so minmax needs no extra pass; percentile
    # calibration can leave an inf outside the range, so it checks every element.
    if spec.calibration == "minmax":
        return bool(np.isfinite(lo).all() and np.isfinite(hi).all())
    return bool(np.isfinite(part).all())


def _check_float32_range(x: np.ndarray, name: str) -> None:
    """float64 weights are quantized in float32: refuse values float32 cannot hold."""
    with np.errstate(invalid="ignore"):
        biggest = float(np.nanmax(np.abs(x), initial=0.0)) if x.size else 0.0
    if math.isfinite(biggest) and biggest > F32_MAX:
        raise InputError(
            f"values beyond float32's range (max |x| = {biggest:.3g}) in tensor {name}: quant "
            "computes in float32; rescale the tensor, or keep it unquantized with --exclude"
        )


def _nonfinite_error(x: np.ndarray, name: str) -> NonFiniteError:
    x = x.astype(np.float32)
    bad = int(np.count_nonzero(~np.isfinite(x)))
    nan = int(np.count_nonzero(np.isnan(x)))
    return NonFiniteError(
        f"{bad} non-finite values ({nan} NaN, {bad - nan} inf) in tensor {name}: "
        "they cannot be quantized; fix the weights, or keep this tensor unquantized "
        "(--nonfinite keep)"
    )


def _store_scale(scale: np.ndarray, spec: QuantSpec, name: str) -> np.ndarray:
    """float32 ``scale`` in the spec's scale dtype, checked finite: nothing that could restore
    to inf or NaN is ever written."""
    kind = SCALE_KINDS[spec.scale_dtype]
    stored = kind.store(scale)
    biggest = float(np.abs(scale).max()) if scale.size else 0.0
    # only a scale beyond the dtype's largest value can round to inf: check those alone
    suspect = not math.isfinite(biggest) or biggest > kind.largest
    if suspect and not np.isfinite(kind.load(stored)).all():
        raise SpecError(
            f"scale {biggest:.4g} overflows {spec.scale_dtype} in tensor {name}: "
            "the weights are too large for that scale dtype; use --scale-dtype float32"
        )
    return stored
