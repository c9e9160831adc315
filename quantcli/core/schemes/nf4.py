"""nf4: bitsandbytes' 4-bit NormalFloat codebook under an absmax scale per block.

The 16 values of bitsandbytes' ``get_4bit_type("nf4")`` (7 negative, 0, 8 positive); scale =
amax of the group; the code is the nearest value of x / amax, a value exactly on a midpoint
taking the lower code (bitsandbytes' decision tree compares with ``>``); x_hat = NF4[q] * scale.

quant's blocks run along rows like every other group (``--granularity group``); bitsandbytes'
blocks of 64 run over the flattened tensor, so they match quant's groups exactly when the row
length is a multiple of the block size, and otherwise straddle rows.

The look-up is exact without a search: t * 2048 is exact in float32, so the bin
k = floor(2048 t) fixes the code of its lower edge; no two midpoints share a bin, so one
comparison with the next midpoint finishes it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from quantcli.core.parallel import scratch
from quantcli.core.schemes.base import Scheme, SymmetricParams, safe_scale

if TYPE_CHECKING:
    from quantcli.core.spec import QuantSpec

NF4 = np.array(
    [
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
        0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
        0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
    ],
    np.float32,
)  # fmt: skip
# the midpoint above each value (inf above the last), in float32 as bitsandbytes compares
MIDPOINTS_UP = np.append((NF4[:-1] + NF4[1:]) / 2, np.float32(np.inf)).astype(np.float32)
BINS = 2048  # per unit of t


def _bin_codes() -> np.ndarray:
    """uint8 (2 * BINS + 1,): the code of each bin's lower edge k / BINS - 1."""
    edges = np.arange(-BINS, BINS + 1, dtype=np.float32) / np.float32(BINS)
    return np.searchsorted(MIDPOINTS_UP[:-1], edges, side="left").astype(np.uint8)


BIN_CODES = _bin_codes()


class NF4Scheme(Scheme):
    name = "nf4"
    summary = "4-bit NormalFloat codebook (bitsandbytes) under a scale = amax"
    bits = (4,)
    default_bits = 4
    default_granularity = "group"
    default_group_size = 64  # bitsandbytes' block
    code_dtype = np.dtype(np.uint8)
    signed = False
    integer = False
    zero_code = 7

    def code_range(self, bits: int) -> tuple[int, int]:
        return 0, 15

    def levels(self, spec: QuantSpec) -> np.ndarray:
        return NF4.copy()

    def params(self, lo, hi, spec: QuantSpec, tensor_scale=None) -> SymmetricParams:
        amax = np.maximum(hi, -lo)
        return SymmetricParams(amax=amax, scale=safe_scale(amax, amax, 1, spec, 0.0))

    def searched(self, p, scale, zero_point, spec: QuantSpec) -> SymmetricParams:
        scale = np.asarray(scale, np.float32)
        return SymmetricParams(amax=scale, scale=scale)  # the levels span [-1, 1]

    def encode(self, x, scale, zero_point, spec: QuantSpec, out: np.ndarray) -> None:
        t = scratch("encode", x.shape, np.float32)
        with np.errstate(over="ignore"):
            np.divide(x, scale, out=t)
        np.clip(t, -1, 1, out=t)
        k = scratch("nf4-bin", x.shape, np.float32)
        np.multiply(t, np.float32(BINS), out=k)
        np.floor(k, out=k)
        np.add(k, BINS, out=k)
        index = scratch("nf4-index", x.shape, np.intp)
        np.copyto(index, k, casting="unsafe")
        np.take(BIN_CODES, index, out=out)
        np.take(MIDPOINTS_UP, out, out=k)  # the midpoint above each value's code
        above = np.greater(t, k, out=scratch("nf4-above", x.shape, bool))
        np.add(out, above, out=out, casting="unsafe")

    def decode(self, codes, scale, zero_point, out: np.ndarray) -> None:
        np.take(NF4, codes, out=out)
        np.multiply(out, scale, out=out)
