"""zeropoint-ct: compressed-tensors' asymmetric observer, for exports byte-identical to the
library's own compressor.

The library's rule (``calculate_qparams`` and ``_quantize``), in the model's dtype: when the
scales are bfloat16 or float16 (a model of that dtype), every operation is rounded to it, as
torch computes in that dtype (``base.round_to_model_dtype``):

    lo = min(min x, 0), hi = max(max x, 0)
    scale = (hi - lo) / (2^b - 1)
    zp = round(clamp(-2^(b-1) - lo / scale, -2^(b-1), 2^(b-1) - 1))    a signed zero point
    q = clamp(round(x / scale + zp), -2^(b-1), 2^(b-1) - 1)

Stored as ``zeropoint`` stores them, unsigned (q + 2^(b-1), zp + 2^(b-1)), and decoded the same
way, x_hat = (q - zp) * scale. It differs from ``zeropoint`` in three roundings: the width in
the model's dtype (not float64), the zero point rounded after the subtraction, and each code
rounded after adding the zero point (``zeropoint`` rounds x / scale, then adds). A group of
zeros: the library's 0 / 0 gives a zero point of 0 (torch casts NaN to int8 as 0) and a scale
of 0, which quant stores as 1 and the compressed-tensors export as the library's epsilon.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from quantcli.core.parallel import scratch
from quantcli.core.schemes.base import as_stored, round_to_model_dtype, safe_scale
from quantcli.core.schemes.zeropoint import Zeropoint, ZeropointParams

if TYPE_CHECKING:
    from quantcli.core.spec import QuantSpec


class ZeropointCT(Zeropoint):
    name = "zeropoint-ct"
    summary = (
        "asymmetric int, scale = (hi - lo) / (2^b-1), codes rounded after the zero point "
        "(compressed-tensors)"
    )

    def params(self, lo, hi, spec: QuantSpec, tensor_scale=None) -> ZeropointParams:
        levels = 2**spec.bits - 1
        half = np.float32(2 ** (spec.bits - 1))
        lo = np.minimum(lo, np.float32(0))
        hi = np.maximum(hi, np.float32(0))
        with np.errstate(over="ignore"):
            width = np.asarray(hi - lo, np.float32)
            round_to_model_dtype(width, spec)
            scale = np.asarray(width / np.float32(levels), np.float32)
            round_to_model_dtype(scale, spec)
        # the library's scale wherever it is a finite normal number; where the width
        # overflows float32 (weights near 3e38) it is taken in float64, and a scale that
        # underflows (weights near 1e-38) is raised so that the codes still cover the group,
        # as zeropoint's are
        span = hi.astype(np.float64) - lo.astype(np.float64)
        scale = np.where(np.isinf(width), (span / levels).astype(np.float32), scale)
        stored = as_stored(safe_scale(scale, span, levels, spec, slack=1.0), spec)
        with np.errstate(over="ignore"):
            ratio = np.asarray(lo / stored, np.float32)
            round_to_model_dtype(ratio, spec)
            zp = np.asarray(-half - ratio, np.float32)
            round_to_model_dtype(zp, spec)
        zp = np.where(span == 0, np.float32(0), np.rint(np.clip(zp, -half, half - 1)))
        return ZeropointParams(lo=lo, hi=hi, scale=stored, zero_point=(zp + half).astype(np.uint8))

    def encode(self, x, scale, zero_point, spec: QuantSpec, out: np.ndarray) -> None:
        half = 2 ** (spec.bits - 1)
        t = scratch("encode", x.shape, np.float32)
        with np.errstate(over="ignore", invalid="ignore"):  # a far outlier clips to the end
            np.divide(x, scale, out=t)
            round_to_model_dtype(t, spec)
            np.add(t, zero_point.astype(np.float32) - np.float32(half), out=t)
        round_to_model_dtype(t, spec)
        np.rint(t, out=t)
        np.clip(t, -half, half - 1, out=t)
        t += np.float32(half)
        np.copyto(out, t, casting="unsafe")
