"""fullrange (symmetric int over the full signed range): codes -2^(b-1)..2^(b-1)-1.

Two scale rules, two registry entries:

- ``fullrange`` (llama.cpp's Q4_0 rule): scale = m / -2^(b-1), with m the signed value of
  largest magnitude (the larger end of the range, hi, when hi >= -lo), so m lands on the code
  -2^(b-1) exactly and the other end uses the rest of the range. The scale is negative when m
  is positive. At 4 bits this gives 16 levels where ``absmax`` has 15.
- ``fullrange-ct`` (compressed-tensors' default observer): scale = amax / ((2^b - 1) / 2),
  positive; codes clamped to [-2^(b-1), 2^(b-1) - 1], so amax itself lands on the clamp.
  Its codes are computed as the library computes them: with the scale as stored, and, when
  scales are bfloat16 or float16 (a model of that dtype), with x / scale rounded to that
  dtype before rounding to a code, since the library divides in the model's dtype
  (``base.round_to_model_dtype``).

q = clip(rint(x / scale), -2^(b-1), 2^(b-1) - 1); x_hat = q * scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from quantcli.core.parallel import scratch
from quantcli.core.schemes.base import Scheme, as_stored, round_to_model_dtype, safe_scale

if TYPE_CHECKING:
    from quantcli.core.spec import QuantSpec


@dataclass
class FullrangeParams:
    lo: np.ndarray  # float32, keepdims
    hi: np.ndarray  # float32, keepdims
    scale: np.ndarray  # float32, keepdims; negative when the largest magnitude is positive
    zero_point: None = None

    @property
    def empty(self) -> np.ndarray:
        return (self.hi == 0) & (self.lo == 0)


class Fullrange(Scheme):
    name = "fullrange"
    summary = "symmetric int, codes -2^(b-1)..2^(b-1)-1, scale = signed max / -2^(b-1) (Q4_0)"
    symmetric_range = False  # the sign of the largest magnitude matters

    def code_range(self, bits: int) -> tuple[int, int]:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def params(self, lo, hi, spec: QuantSpec, tensor_scale=None) -> FullrangeParams:
        lo = np.minimum(lo, np.float32(0))
        hi = np.maximum(hi, np.float32(0))
        half = 2 ** (spec.bits - 1)
        amax = np.maximum(hi, -lo)
        # |scale| = amax / 2^(b-1) is exact but for subnormals; safe_scale keeps it storable
        magnitude = safe_scale(amax / np.float32(half), amax, half, spec, slack=0.5)
        sign = np.where(hi >= -lo, np.float32(-1), np.float32(1))
        return FullrangeParams(lo=lo, hi=hi, scale=(magnitude * sign).astype(np.float32))

    def searched(self, p, scale, zero_point, spec: QuantSpec, tensor_scale=None) -> FullrangeParams:
        scale = np.asarray(scale, np.float32)
        qmin, qmax = self.code_range(spec.bits)
        ends = (np.float32(qmin) * scale, np.float32(qmax) * scale)
        lo, hi = np.minimum(*ends), np.maximum(*ends)
        return FullrangeParams(lo=lo, hi=hi, scale=scale)

    def encode(self, x, scale, zero_point, spec: QuantSpec, out: np.ndarray) -> None:
        qmin, qmax = self.code_range(spec.bits)
        t = scratch("encode", x.shape, np.float32)
        with np.errstate(over="ignore"):  # a far outlier clips to the extreme code
            np.divide(x, scale, out=t)
        np.rint(t, out=t)
        np.clip(t, qmin, qmax, out=t)
        np.copyto(out, t, casting="unsafe")

    def decode(self, codes, scale, zero_point, out: np.ndarray) -> None:
        np.multiply(codes, scale, out=out, dtype=np.float32)

    def valid_scales(self, stored32: np.ndarray) -> bool:
        return bool(np.isfinite(stored32).all() and (stored32 != 0).all())


class FullrangeCT(Fullrange):
    name = "fullrange-ct"
    summary = (
        "symmetric int, codes -2^(b-1)..2^(b-1)-1, scale = amax / ((2^b-1)/2) (compressed-tensors)"
    )
    symmetric_range = True

    def params(self, lo, hi, spec: QuantSpec, tensor_scale=None) -> FullrangeParams:
        amax = np.maximum(hi, -lo)
        half_levels = (2**spec.bits - 1) / 2
        scale = safe_scale(amax / np.float32(half_levels), amax, half_levels, spec, slack=0.5)
        # codes use the scale as stored
        return FullrangeParams(lo=-amax, hi=amax, scale=as_stored(scale, spec))

    def encode(self, x, scale, zero_point, spec: QuantSpec, out: np.ndarray) -> None:
        qmin, qmax = self.code_range(spec.bits)
        t = scratch("encode", x.shape, np.float32)
        with np.errstate(over="ignore"):  # a far outlier clips to the extreme code
            np.divide(x, scale, out=t)
        round_to_model_dtype(t, spec)  # the library divides in the model's dtype
        np.rint(t, out=t)
        np.clip(t, qmin, qmax, out=t)
        np.copyto(out, t, casting="unsafe")

    def valid_scales(self, stored32: np.ndarray) -> bool:
        return Scheme.valid_scales(self, stored32)
