"""absmax (symmetric): signed codes in [-qmax, qmax], qmax = 2**(b-1) - 1, no zero point.

scale = amax / qmax; q = clip(rint(x / scale), -qmax, qmax); x_hat = q * scale.
The same as ONNX Runtime's symmetric int8 and llama.cpp's Q8_0 (d = amax / 127).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from quantcli.core.parallel import scratch
from quantcli.core.schemes.base import Scheme, SymmetricParams, safe_scale

if TYPE_CHECKING:
    from quantcli.core.spec import QuantSpec


class Absmax(Scheme):
    name = "absmax"
    summary = "symmetric int, codes -(2^(b-1)-1)..2^(b-1)-1, scale = amax / qmax"
    # k4/k6/k8: two-level scales (core/two_level.py), as llama.cpp's K-quants
    scale_dtypes = ("float32", "float16", "bfloat16", "k4", "k6", "k8")

    def params(self, lo, hi, spec: QuantSpec, tensor_scale=None) -> SymmetricParams:
        qmax = spec.code_range[1]
        amax = np.maximum(hi, -lo)
        # a slack under half a step keeps amax / scale below qmax + 0.5, so min-max codes
        # never round past qmax and encode can skip the clip
        scale = safe_scale(amax / np.float32(qmax), amax, qmax, spec, slack=0.25)
        return SymmetricParams(amax=amax, scale=scale)

    def searched(self, p, scale, zero_point, spec: QuantSpec, tensor_scale=None) -> SymmetricParams:
        scale = np.asarray(scale, np.float32)
        return SymmetricParams(amax=scale * np.float32(spec.code_range[1]), scale=scale)

    def encode(self, x, scale, zero_point, spec: QuantSpec, out: np.ndarray) -> None:
        qmin, qmax = spec.code_range
        t = scratch("encode", x.shape, np.float32)
        # an outlier far outside a percentile range can overflow x / scale to inf, which the
        # clip below turns into the extreme code, as it should
        with np.errstate(over="ignore"):
            np.divide(x, scale, out=t)
        np.rint(t, out=t)
        if spec.calibration != "minmax" or spec.search != "none" or spec.two_level:
            # min-max: |x| <= amax, so |t| <= qmax already; a searched or coded scale may
            # clip
            np.clip(t, qmin, qmax, out=t)
        np.copyto(out, t, casting="unsafe")

    def decode(self, codes, scale, zero_point, out: np.ndarray) -> None:
        np.multiply(codes, scale, out=out, dtype=np.float32)
