"""nvfp4: E2M1 elements, one E4M3 scale per 16, one float32 scale per tensor.

As compressed-tensors computes and stores it (``nvfp4-pack-quantized``):

- tensor scale g = 448 * 6 / amax(tensor) (``weight_global_scale``; ModelOpt stores its
  reciprocal, ``weight_scale_2`` = amax / 2688), 1 for an all-zero tensor; computed as
  2688 * (1 / amax) in float32, as torch evaluates the library's ``2688 / amax``;
- block scale s = E4M3(clip(g * (amax_block / 6), -448, 448)), round to nearest even; a block
  scale of 0 becomes 0.125, as the library does (``weight_scale``);
- codes q = E2M1(x / (s / g)) rounded to nearest even; x_hat = E2M1 value * (s / g), with
  s / g computed in float32.

Bits per weight: 4 + 8 / 16 + 32 / n = 4.5 (plus the tensor scale).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import ml_dtypes
import numpy as np

from quantcli.core.schemes.base import SymmetricParams
from quantcli.core.schemes.fp8 import encode_bits
from quantcli.core.schemes.mxfp4 import E2M1Scheme

if TYPE_CHECKING:
    from quantcli.core.spec import QuantSpec

E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
E4M3_VALUES = np.arange(256, dtype=np.uint8).view(E4M3).astype(np.float32)  # by code
E4M3_MAX = 448.0
E2M1_MAX = 6.0
ZERO_BLOCK_SCALE = np.float32(0.125)


class NVFP4(E2M1Scheme):
    name = "nvfp4"
    summary = "E2M1 with an E4M3 scale per 16 under a float32 scale per tensor (NVIDIA)"
    group_sizes = (16,)
    default_group_size = 16
    scale_dtypes = ("e4m3",)
    default_scale_dtype = "e4m3"
    tensor_scale = True

    def tensor_scale_of(self, amax: float) -> np.ndarray:
        if not amax > 0:
            return np.ones(1, np.float32)
        with np.errstate(over="ignore"):
            # 2688 / amax as torch computes a number over a tensor: reciprocal, then product
            # (one float32 ulp off the quotient in about a quarter of cases), so that the
            # global scale is the library's to the bit
            g = np.float32(E4M3_MAX * E2M1_MAX) * (np.float32(1) / np.float32(amax))
        return np.array([min(g, np.finfo(np.float32).max)], np.float32)

    def params(self, lo, hi, spec: QuantSpec, tensor_scale=None) -> SymmetricParams:
        amax = np.maximum(hi, -lo).astype(np.float32)
        g = np.float32(tensor_scale.reshape(-1)[0])
        with np.errstate(over="ignore"):
            block = g * (amax / np.float32(E2M1_MAX))
        # E4M3(clip(block, -448, 448)) by the fp8 scheme's exact cast (ml_dtypes' is 30x
        # slower), read back through the table of the 256 E4M3 values
        codes = encode_bits(block, E4M3, np.empty(block.shape, np.uint8))
        block = np.take(E4M3_VALUES, codes, mode="clip")  # 256 values: every byte in range
        block[block == 0] = ZERO_BLOCK_SCALE
        # params hold the stored (E4M3) block scale; codes use effective_scale's
        return SymmetricParams(amax=amax, scale=block)

    def effective_scale(self, stored32: np.ndarray, tensor_scale) -> np.ndarray:
        g = np.float32(np.asarray(tensor_scale).reshape(-1)[0])
        return (stored32 / g).astype(np.float32)
