"""What every scheme provides, and the scale rules they share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from quantcli.core.scales import SCALE_KINDS

if TYPE_CHECKING:
    from quantcli.core.spec import QuantSpec

# the scale storage kinds' dtypes and ranges (core/scales.py), by name
SCALE_NUMPY_DTYPES = {name: kind.dtype for name, kind in SCALE_KINDS.items()}
SCALE_SMALLEST = {name: np.float32(kind.smallest) for name, kind in SCALE_KINDS.items()}
SCALE_LARGEST = {name: kind.largest for name, kind in SCALE_KINDS.items()}


@dataclass
class SymmetricParams:
    """Parameters of a symmetric format (absmax, fp8, nf4, mxfp4, nvfp4): the range
    [-amax, amax] and the group scale."""

    amax: np.ndarray  # float32, keepdims
    scale: np.ndarray  # float32, keepdims
    zero_point: None = None

    @property
    def lo(self) -> np.ndarray:
        return -self.amax

    @property
    def hi(self) -> np.ndarray:
        return self.amax

    @property
    def empty(self) -> np.ndarray:
        return self.amax == 0


class GroupParams(Protocol):
    """Parameters of a set of groups, all of one shape (the tiling's parameter view)."""

    lo: np.ndarray  # float32: clipping range, values below are clipped
    hi: np.ndarray  # float32: clipping range, values above are clipped
    scale: np.ndarray  # float32: the stored scale's value (see Scheme.effective_scale)
    zero_point: np.ndarray | None  # uint8, or None for symmetric schemes

    @property
    def empty(self) -> np.ndarray:
        """bool: the range is the single point 0 (every value maps to code 0)."""


class Scheme:
    """One number format: how a value scaled by its group's scale becomes a code and back.

    A scheme holds element-wise kernels and the facts the spec checks; layout, chunking,
    calibration and storage live in ``quantizer.py``, ``layout.py``, ``calibration.py`` and
    ``scales.py``. Parameters reach ``encode``/``decode`` already shaped to broadcast against
    the values. A new format is one module with one subclass, and one line in
    ``schemes/__init__.py``.
    """

    name: str
    summary: str  # one line for listings and docs
    bits: tuple[int, ...] = tuple(range(2, 9))  # the bit widths it takes
    default_bits: int = 8
    granularities: tuple[str, ...] = ("tensor", "channel", "group")
    default_granularity: str = "channel"
    group_sizes: tuple[int, ...] | None = None  # None: any
    default_group_size: int = 128
    scale_dtypes: tuple[str, ...] = ("float32", "float16", "bfloat16")
    default_scale_dtype: str = "float32"
    code_dtype: np.dtype = np.dtype(np.int8)  # what encode writes, one code per element
    signed: bool = True  # codes are two's complement integers (sign-extended when unpacked)
    has_zero_point: bool = False
    symmetric_range: bool = True  # calibrated as [-amax, amax]; False: [lo, hi] with signs
    tensor_scale: bool = False  # a float32 scale per tensor above the group scales
    integer: bool = True  # codes are integers on a uniform grid (x = (q - zp) * scale)
    zero_code: int = 0  # the code of the value 0

    def code_range(self, bits: int) -> tuple[int, int]:
        """(qmin, qmax) of the integer codes, as stored (before unpacking sign extension)."""
        qmax = 2 ** (bits - 1) - 1
        return -qmax, qmax

    def levels(self, spec: QuantSpec) -> np.ndarray:
        """float32: every value a code stands for, in units of the scale, ascending (for
        histograms and searches); zero points shift them."""
        qmin, qmax = self.code_range(spec.bits)
        return np.arange(qmin, qmax + 1, dtype=np.float32)

    def params(self, lo, hi, spec: QuantSpec, tensor_scale=None) -> GroupParams:
        """Scales (and zero points) from the calibrated range [lo, hi] of every group;
        ``tensor_scale``: the tensor's float32 scale, for schemes that have one."""
        raise NotImplementedError

    def encode(self, x, scale, zero_point, spec: QuantSpec, out: np.ndarray) -> None:
        """Write the codes of ``x`` (float32) into ``out`` (code_dtype)."""
        raise NotImplementedError

    def decode(self, codes, scale, zero_point, out: np.ndarray) -> None:
        """Write the float32 reconstruction of ``codes`` into ``out``."""
        raise NotImplementedError

    def searched(
        self, p: GroupParams, scale, zero_point, spec: QuantSpec, tensor_scale=None
    ) -> GroupParams:
        """``p`` with the scales (and zero points) a search chose (stored values; the tensor
        scale of a format that has one), its range [lo, hi] made the one those parameters
        represent (values beyond it are clipped). Schemes that take a search
        (``search/refine.py``) implement it."""
        raise NotImplementedError

    def tensor_scale_of(self, amax: float) -> np.ndarray:
        """float32 (1,): the tensor's scale from its largest magnitude (tensor_scale only)."""
        raise NotImplementedError

    def effective_scale(self, stored32: np.ndarray, tensor_scale) -> np.ndarray:
        """float32: the scale codes are encoded and decoded with, from the group scales (as
        float32) and the tensor scale. Most formats use the group scale as it is."""
        return stored32

    def valid_scales(self, stored32: np.ndarray) -> bool:
        """True when stored scales (as float32) can be restored: finite and positive."""
        return bool(np.isfinite(stored32).all() and (stored32 > 0).all())

    def valid_codes(self, codes: np.ndarray, spec: QuantSpec) -> bool:
        """True when every (unpacked) code is one the format can hold."""
        if not codes.size:
            return True
        qmin, qmax = self.code_range(spec.bits)
        return int(codes.min()) >= qmin and int(codes.max()) <= qmax


def safe_scale(
    scale: np.ndarray, span: np.ndarray, levels: int, spec: QuantSpec, slack: float = 0.5
) -> np.ndarray:
    """Make float32 ``scale`` usable: 1 where the range is empty, never below the scale dtype's
    smallest positive value (so a stored scale never rounds to 0), and never so small, by
    rounding in the subnormal range, that ``span / scale`` exceeds ``levels + slack``.

    span: the width the codes must cover (amax or hi - lo); levels: qmax or 2**bits - 1;
    slack: how far past the last code the span may reach, in steps (absmax: half a step).
    """
    scale = np.asarray(scale, np.float32).copy()
    np.copyto(scale, np.float32(1), where=span == 0)
    np.maximum(scale, SCALE_SMALLEST[spec.scale_dtype], out=scale)
    if scale.size == 0 or scale.min() >= FLOAT32_SMALLEST_NORMAL:
        # a normal float32 scale is within 2**-24 of span / levels: never short
        return scale
    limit = np.float64(levels) + slack
    for _ in range(64):  # only subnormal scales ever need this; each step is one ulp
        short = span.astype(np.float64) / scale > limit
        if not short.any():
            break
        scale = np.where(short, np.nextafter(scale, np.float32(np.inf)), scale)
    return scale


FLOAT32_SMALLEST_NORMAL = np.finfo(np.float32).tiny

# compressed-tensors computes a model's codes in the model's dtype: scales stored in bf16 or
# f16 are a model of that dtype's, so the schemes that follow the library (fullrange-ct, fp8)
# encode with the scale as stored and x / scale rounded to that dtype, as torch divides
_MODEL_DTYPES = {"bfloat16": SCALE_KINDS["bfloat16"].dtype, "float16": np.dtype(np.float16)}


def as_stored(scale: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """float32 ``scale`` rounded to the spec's scale dtype and back (float32)."""
    kind = SCALE_KINDS[spec.scale_dtype]
    with np.errstate(over="ignore"):  # an overflowing scale is refused when stored
        return kind.load(kind.store(scale))


def round_to_model_dtype(t: np.ndarray, spec: QuantSpec) -> None:
    """Round float32 quotients ``t`` in place to the model dtype the spec's bf16 or f16 scales
    stand for (torch's bf16 division is the float32 one rounded to bf16: checked against
    torch by tests/test_interop_ct_formats.py); nothing for float32 scales."""
    narrow = _MODEL_DTYPES.get(spec.scale_dtype)
    if narrow is not None:
        with np.errstate(over="ignore"):  # beyond the dtype's range: inf, clipped after
            np.copyto(t, t.astype(narrow))
