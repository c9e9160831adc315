"""fp8: 8-bit floats under a float32 scale, E4M3 (max 448) or E5M2 (max 57344).

scale = amax / max (one per tensor, channel or group); q = fp8(clip(x / scale, -max, max))
with round to nearest even; x_hat = float(q) * scale. The clip comes before the cast because
ml_dtypes turns an E4M3 overflow (480 and up) into NaN instead of saturating. Codes are stored
as the fp8 dtype itself (safetensors F8_E4M3 / F8_E5M2), so any reader sees the values.

With bfloat16 or float16 scales (a model of that dtype, exported to compressed-tensors) codes
are computed as that library computes them: with the scale as stored, and x / scale rounded to
that dtype before the cast.
"""

from __future__ import annotations

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
        np.clip(t, -self.max, self.max, out=t)
        np.copyto(out, t, casting="unsafe")  # ml_dtypes' cast: round to nearest even

    def decode(self, codes, scale, zero_point, out: np.ndarray) -> None:
        np.multiply(codes.astype(np.float32), scale, out=out)

    def valid_codes(self, codes: np.ndarray, spec: QuantSpec) -> bool:
        return bool(np.isfinite(codes.astype(np.float32)).all())


class FP8E5M2(FP8):
    name = "fp8-e5m2"
    summary = "8-bit float E5M2 (max 57344) under a scale = amax / 57344"
    code_dtype = np.dtype(ml_dtypes.float8_e5m2)
