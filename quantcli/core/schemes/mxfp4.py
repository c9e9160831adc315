"""mxfp4 (OCP Microscaling v1.0): E2M1 elements, one power-of-two E8M0 scale per 32.

scale = 2^e; q = E2M1(x / scale) rounded to nearest even, saturating at 6
(``schemes/e2m1.py``); x_hat = E2M1 value * scale. Two exponent rules, two registry entries:

- ``mxfp4`` (OCP and ggml): e = floor(log2(amax)) - 2, so amax / scale lies in [4, 8) and
  a block maximum with a mantissa of 1.75 or more saturates at 6;
- ``mxfp4-ct`` (compressed-tensors and vLLM's reference): amax is first rounded up to the next
  power of two when its mantissa is >= 1.75 (the library adds 2^21 to the float32 bits and
  keeps the exponent), then the same rule, so the maximum never saturates by more than
  rounding. quant applies it to the normalised mantissa, so subnormal maxima follow it too,
  and a maximum near float32's top takes the largest exponent instead of overflowing.

The exponent is computed here from the float32 bits, never by casting to
``ml_dtypes.float8_e8m0fnu`` (which rounds to nearest and turns 0 into NaN); it is clamped to
the E8M0 range [-127, 127]. An all-zero block stores the exponent byte 0 (scale 2^-127) as
ggml and compressed-tensors do: its codes are 0 whatever the scale.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from quantcli.core.parallel import scratch
from quantcli.core.schemes import e2m1
from quantcli.core.schemes.base import Scheme, SymmetricParams

if TYPE_CHECKING:
    from quantcli.core.spec import QuantSpec

E8M0_MIN, E8M0_MAX = -127, 127


class E2M1Scheme(Scheme):
    """What MXFP4 and NVFP4 share: 4-bit E2M1 codes in groups."""

    bits = (4,)
    default_bits = 4
    granularities = ("group",)
    default_granularity = "group"
    code_dtype = np.dtype(np.uint8)
    signed = False
    integer = False

    def code_range(self, bits: int) -> tuple[int, int]:
        return 0, 15

    def levels(self, spec: QuantSpec) -> np.ndarray:
        return np.unique(e2m1.VALUES)

    def encode(self, x, scale, zero_point, spec: QuantSpec, out: np.ndarray) -> None:
        t = scratch("encode", x.shape, np.float32)
        with np.errstate(over="ignore"):  # a far outlier saturates at 6
            np.divide(x, scale, out=t)
        e2m1.encode(t, out, overwrite=True)

    def decode(self, codes, scale, zero_point, out: np.ndarray) -> None:
        np.take(e2m1.VALUES, codes, out=out)
        np.multiply(out, scale, out=out)

    def searched(self, p, scale, zero_point, spec: QuantSpec, tensor_scale=None):
        scale = np.asarray(scale, np.float32)
        effective = self.effective_scale(scale, tensor_scale)
        # the largest E2M1 magnitude is 6: beyond 6 * scale a value saturates
        return SymmetricParams(amax=effective * np.float32(6), scale=scale)


class MXFP4(E2M1Scheme):
    name = "mxfp4"
    summary = "E2M1 with a power-of-two E8M0 scale per 32, e = floor(log2 amax) - 2 (OCP, ggml)"
    group_sizes = (32,)
    default_group_size = 32
    scale_dtypes = ("e8m0",)
    default_scale_dtype = "e8m0"
    round_up = False

    def params(self, lo, hi, spec: QuantSpec, tensor_scale=None) -> SymmetricParams:
        amax = np.maximum(hi, -lo).astype(np.float32)
        bits = amax.view(np.int32)
        biased = np.right_shift(bits, 23)  # the exponent field: 0 for 0 and subnormals
        if biased.size and biased.min() > 4:
            # every amax >= 2^-122: exponents and scales straight from the float32 bits
            k = biased - 127  # floor(log2 amax)
            if self.round_up:  # a mantissa of 1.75 or more rounds up; no overflow
                k += np.bitwise_and(bits, 0x7FFFFF) >= 0x600000
            exponent = np.minimum(k - 2, E8M0_MAX)  # >= -124: a normal float32 scale
            scale = np.left_shift(exponent + 127, 23).view(np.float32)
            return SymmetricParams(amax=amax, scale=scale)
        # floor(log2 a) from frexp: a = m 2^k with m in [0.5, 1) -> floor(log2 a) = k - 1
        m, k = np.frexp(amax)
        k = k.astype(np.int32) - 1
        if self.round_up:  # a mantissa of 1.75 or more (m >= 0.875) rounds up; no overflow
            k += m >= 0.875
        exponent = np.clip(k - 2, E8M0_MIN, E8M0_MAX)
        exponent = np.where(amax == 0, E8M0_MIN, exponent)
        scale = np.ldexp(np.float32(1), exponent).astype(np.float32)
        return SymmetricParams(amax=amax, scale=scale)

    def valid_scales(self, stored32: np.ndarray) -> bool:
        return bool(np.isfinite(stored32).all())


class MXFP4CT(MXFP4):
    name = "mxfp4-ct"
    summary = "as mxfp4, amax rounded up to a power of two at mantissa >= 1.75 (vLLM)"
    round_up = True
