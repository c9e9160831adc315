"""zeropoint (asymmetric, affine): unsigned codes in [0, 2**b - 1] with an integer zero point.

lo = min(min x, 0), hi = max(max x, 0) so zero is exactly representable (as in PyTorch and
ONNX Runtime); scale = (hi - lo) / (2**b - 1); zp = clip(rint(-lo / scale), 0, 2**b - 1);
q = clip(rint(x / scale) + zp, 0, 2**b - 1); x_hat = (q - zp) * scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from quantcli.core.parallel import scratch
from quantcli.core.schemes.base import Scheme, safe_scale

if TYPE_CHECKING:
    from quantcli.core.spec import QuantSpec


@dataclass
class ZeropointParams:
    lo: np.ndarray  # float32, keepdims, <= 0
    hi: np.ndarray  # float32, keepdims, >= 0
    scale: np.ndarray  # float32, keepdims
    zero_point: np.ndarray  # uint8, keepdims

    @property
    def empty(self) -> np.ndarray:
        return self.hi == self.lo


class Zeropoint(Scheme):
    name = "zeropoint"
    summary = "asymmetric int, codes 0..2^b-1 with an integer zero point"
    code_dtype = np.dtype(np.uint8)
    signed = False
    has_zero_point = True
    symmetric_range = False
    # k4/k6/k8: two-level scales and mins (core/two_level.py), with a float min as the
    # zero point (x_hat = scale * q - min), as llama.cpp's Q4_K
    scale_dtypes = ("float32", "float16", "bfloat16", "k4", "k6", "k8")

    def code_range(self, bits: int) -> tuple[int, int]:
        return 0, 2**bits - 1

    def params(self, lo, hi, spec: QuantSpec, tensor_scale=None) -> ZeropointParams:
        levels = spec.code_range[1]
        lo = np.minimum(lo, np.float32(0))
        hi = np.maximum(hi, np.float32(0))
        # the width in float64: hi - lo can overflow float32 for huge weights
        span = hi.astype(np.float64) - lo.astype(np.float64)
        # The zero point's rounding already uses up to half a step at each end, so the codes
        # must cover the whole width: a slack of levels * 2**-23 steps, more than a normal
        # float32 scale's rounding (2**-24) ever gives, less than a subnormal one (weights
        # below ~1e-36) can.
        scale = safe_scale(
            (span / levels).astype(np.float32), span, levels, spec, slack=levels * 2.0**-23
        )
        zp = np.clip(np.rint(-lo / scale), 0, levels).astype(np.uint8)
        return ZeropointParams(lo=lo, hi=hi, scale=scale, zero_point=zp)

    def searched(self, p, scale, zero_point, spec: QuantSpec, tensor_scale=None) -> ZeropointParams:
        scale = np.asarray(scale, np.float32)
        zp = np.asarray(zero_point, np.uint8)
        lo = (-zp.astype(np.float32)) * scale
        hi = (np.float32(spec.code_range[1]) - zp) * scale
        return ZeropointParams(lo=lo, hi=hi, scale=scale, zero_point=zp)

    def encode(self, x, scale, zero_point, spec: QuantSpec, out: np.ndarray) -> None:
        qmin, qmax = spec.code_range
        t = scratch("encode", x.shape, np.float32)
        if np.asarray(zero_point).dtype.kind == "f":
            encode_with_min(x, scale, zero_point, qmax, t, out)
            return
        # an outlier far outside a percentile range can overflow x / scale to inf, which the
        # clip below turns into the extreme code, as it should
        with np.errstate(over="ignore"):
            np.divide(x, scale, out=t)
        np.rint(t, out=t)
        np.add(t, zero_point, out=t)
        np.clip(t, qmin, qmax, out=t)
        np.copyto(out, t, casting="unsafe")

    def decode(self, codes, scale, zero_point, out: np.ndarray) -> None:
        if np.asarray(zero_point).dtype.kind == "f":  # a float min: scale * q - min
            np.multiply(codes, scale, out=out, dtype=np.float32)
            np.subtract(out, zero_point, out=out)
            return
        np.subtract(codes, zero_point, out=out, dtype=np.float32)
        np.multiply(out, scale, out=out)


def encode_with_min(x, scale, minimum, qmax, t, out) -> None:
    """Codes clip(rint((x + min) / scale), 0, qmax) for float32 mins (llama.cpp's Q4_K
    encoder); a group whose scale is 0 decodes as -min alone and gets codes 0."""
    np.add(x, minimum, out=t)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        np.divide(t, scale, out=t)
    np.rint(t, out=t)
    np.clip(t, 0, qmax, out=t)  # NaN (0 / 0) stays NaN: zeroed with the other zero scales
    zero = scale == 0
    if zero.any():
        np.copyto(t, 0, where=zero)
    np.copyto(out, t, casting="unsafe")
