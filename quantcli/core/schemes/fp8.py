"""fp8: 8-bit floats under a float32 scale, E4M3 (max 448) or E5M2 (max 57344).

scale = amax / max (one per tensor, channel, group or 2-D block);
q = fp8(clip(x / scale, -max, max)) with round to nearest even; x_hat = float(q) * scale. The
clip comes before the cast because ml_dtypes turns an E4M3 overflow (480 and up) into NaN
instead of saturating. Codes are stored as the fp8 dtype itself (safetensors F8_E4M3 /
F8_E5M2), so any reader sees the values.

With bfloat16 or float16 scales (a model of that dtype, exported to compressed-tensors) codes
are computed as that library computes them: with the scale as stored, and x / scale rounded to
that dtype before the cast.

The cast is arithmetic on the float32 bits (``encode_bits``), bit for bit ml_dtypes' cast of
the clipped value and 3-4x faster: saturate |t| at the format's max; round normal values to
the format's mantissa bits to nearest even on the bits (add half an ulp less one, plus the
last kept bit, then shift: a carry moves into the exponent as it should) and rebias the
exponent; round values below the smallest normal to the subnormal step with one float32
addition of a power of two whose ulp is that step (one rounding, to nearest even); take the
larger of the two (each is at most the right code on the other's range); put the sign bit of t
on top (-0.0 included). ``tests/test_fp8_kernel.py`` compares it with ml_dtypes on every
float32 around every fp8 value and midpoint and on random bit patterns.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import ml_dtypes
import numpy as np

from quantcli.core.parallel import scratch
from quantcli.core.schemes.base import (
    Scheme,
    SymmetricParams,
    as_stored,
    round_to_model_dtype,
    safe_scale,
)

if TYPE_CHECKING:
    from quantcli.core.spec import QuantSpec


class FP8(Scheme):
    name = "fp8"
    summary = "8-bit float E4M3 (max 448) under a scale = amax / 448"
    bits = (8,)
    # block: one scale per 2-D tile of a weight (128x128 in DeepSeek-V3's checkpoints)
    granularities = ("tensor", "channel", "group", "block")
    code_dtype = np.dtype(ml_dtypes.float8_e4m3fn)
    signed = False
    integer = False

    @property
    def max(self) -> float:
        return float(ml_dtypes.finfo(self.code_dtype).max)

    def code_range(self, bits: int) -> tuple[int, int]:
        return 0, 255  # every byte but the NaNs (checked by valid_codes)

    def levels(self, spec: QuantSpec) -> np.ndarray:
        every = np.arange(256, dtype=np.uint8).view(self.code_dtype).astype(np.float32)
        return np.unique(every[np.isfinite(every)])

    def params(self, lo, hi, spec: QuantSpec, tensor_scale=None) -> SymmetricParams:
        amax = np.maximum(hi, -lo)
        top = np.float32(self.max)
        scale = safe_scale(amax / top, amax, self.max, spec, 0.0)
        # codes use the scale as stored (compressed-tensors' rule for bf16 and f16 scales)
        return SymmetricParams(amax=amax, scale=as_stored(scale, spec))

    def encode(self, x, scale, zero_point, spec: QuantSpec, out: np.ndarray) -> None:
        t = scratch("encode", x.shape, np.float32)
        with np.errstate(over="ignore"):
            np.divide(x, scale, out=t)
        round_to_model_dtype(t, spec)  # the library divides in the model's dtype
        # min-max calibration with float32 scales keeps |t| within the max but for the
        # rounding of the quotient, far below the midpoint past it (E4M3: 464) where the cast
        # would start to differ from the saturated one. A bf16 or f16 scale as stored can be
        # far smaller than amax / max when it is subnormal (f16 below 6e-5: weights under
        # 0.03), so those saturate
        saturate = (
            spec.calibration != "minmax" or spec.search != "none" or spec.scale_dtype != "float32"
        )
        encode_bits(t, self.code_dtype, out.view(np.uint8), saturate)

    def decode(self, codes, scale, zero_point, out: np.ndarray) -> None:
        np.multiply(codes.astype(np.float32), scale, out=out)

    def valid_codes(self, codes: np.ndarray, spec: QuantSpec) -> bool:
        return bool(np.isfinite(codes.astype(np.float32)).all())


class FP8E5M2(FP8):
    name = "fp8-e5m2"
    summary = "8-bit float E5M2 (max 57344) under a scale = amax / 57344"
    code_dtype = np.dtype(ml_dtypes.float8_e5m2)


def encode_bits(t: np.ndarray, dtype, out: np.ndarray, saturate: bool = True) -> np.ndarray:
    """The bytes of ``clip(t, -max, max).astype(dtype)`` for float32 ``t`` (not NaN) and
    ``dtype`` float8_e4m3fn or float8_e5m2, into ``out`` (uint8, t's shape). ``t`` is
    overwritten (it becomes scratch). ``saturate=False`` skips the clip: only for ``t`` known
    to stay below the midpoint past the max. Returns ``out``."""
    shift, bias, top, smallest_normal, magic, magic_bits = _constants(np.dtype(dtype))
    sign = np.signbit(t, out=scratch("fp8-sign", t.shape, np.bool_))
    a = t.view(np.int32)
    np.bitwise_and(a, 0x7FFFFFFF, out=a)  # |t|
    if saturate:  # inf too; with both bounds: NumPy's fast integer clip
        np.clip(a, 0, top, out=a)
    normal = scratch("fp8-normal", t.shape, np.int32)
    np.right_shift(a, shift, out=normal)
    np.bitwise_and(normal, 1, out=normal)  # the last kept bit: ties to even
    np.add(a, normal, out=normal)
    # half an ulp less one, and the exponent rebiased from 127 to the format's; below the
    # smallest normal this goes negative and loses to the subnormal code
    np.add(normal, (1 << (shift - 1)) - 1 - ((127 - bias) << 23), out=normal)
    np.right_shift(normal, shift, out=normal)
    np.clip(a, 0, smallest_normal, out=a)
    f = a.view(np.float32)
    np.add(f, magic, out=f)
    np.subtract(a, magic_bits, out=a)  # the subnormal code: 0..2^mantissa (the smallest normal)
    np.maximum(a, normal, out=a)
    np.copyto(out, a, casting="unsafe")
    sign_bits = sign.view(np.uint8)
    np.multiply(sign_bits, np.uint8(0x80), out=sign_bits)  # a byte shift has no vector loop
    np.bitwise_or(out, sign_bits, out=out)
    return out


@functools.cache
def _constants(dtype: np.dtype) -> tuple:
    info = ml_dtypes.finfo(dtype)
    mantissa = int(info.nmant)
    shift = 23 - mantissa  # the float32 mantissa bits that go
    bias = 1 - int(info.minexp)  # E4M3: 7, E5M2: 15
    top = int(np.float32(info.max).view(np.int32))
    smallest_normal = int(np.float32(info.smallest_normal).view(np.int32))
    # x + magic rounds x < smallest normal to a multiple of the subnormal step (its ulp)
    magic = np.float32(2.0 ** (1 - bias - mantissa + 23))
    return shift, bias, top, smallest_normal, magic, int(magic.view(np.int32))
