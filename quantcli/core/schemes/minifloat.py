"""Small float formats with few values (E2M1: 16 codes): codes and nearest values of float32
numbers, rounded to nearest even as ml_dtypes casts, saturating at the largest value.

A format is its non-negative values in code order (E2M1: 0, 0.5, 1, 1.5, 2, 3, 4, 6, codes
0..7; a sign bit above them, code 8 | index for the negatives). The code of t is the sign bit
of t (-0.0 included, as in the cast) and the number of midpoints between consecutive values
below |t| (``thresholds.count_above``). Ties go to the even code, whose last mantissa bit is 0:
a midpoint above an odd code is counted when |t| reaches it (>=), one above an even code
only when |t| passes it (>). Values past the largest saturate, infinities included.

One implementation for the schemes' codes (``e2m1.py``: MXFP4, NVFP4) and the searches'
float grids (``search/grids.py`` ``float_grid``); ``tests/test_formats.py`` checks E2M1
against ml_dtypes' float4_e2m1fn on every value, midpoint and neighbour.
"""

from __future__ import annotations

import numpy as np

from quantcli.core.parallel import scratch
from quantcli.core.schemes.thresholds import count_above


class MiniFloat:
    """A float format whose non-negative values are ``positive`` float32 (k,), ascending from
    0, 2 <= k <= 128; the sign bit is the smallest power of two >= k (E2M1: k = 8, code 8)."""

    def __init__(self, positive) -> None:
        positive = np.asarray(positive, np.float32)
        k = positive.size
        if not 2 <= k <= 128 or positive[0] != 0 or np.any(np.diff(positive) <= 0):
            raise ValueError("a small float format needs 2 to 128 ascending values from 0")
        self.positive = positive
        self.sign_bit = 1 << (k - 1).bit_length()
        # every code's value in code order, the negatives' from the sign bit (-0.0 for its
        # code); codes between k and the sign bit never come out
        values = np.zeros(2 * self.sign_bit, np.float32)
        values[:k], values[self.sign_bit : self.sign_bit + k] = positive, -positive
        self.values = values
        # exact in float32: the values have few mantissa bits
        self.midpoints = ((positive[:-1].astype(np.float64) + positive[1:]) / 2).astype(np.float32)
        self.ties_up = np.arange(k - 1) % 2 == 1  # above an odd code: the tie goes up

    def encode(self, t: np.ndarray, out: np.ndarray, overwrite: bool = False) -> np.ndarray:
        """Codes (uint8, ``out``: t's shape) of float32 ``t``; returns ``out``. ``overwrite``:
        ``t`` is scratch and may be overwritten (one buffer less in cache)."""
        negative = np.signbit(t, out=scratch("minifloat-sign", t.shape, np.bool_))
        magnitude = t if overwrite else scratch("minifloat-abs", t.shape, np.float32)
        np.abs(t, out=magnitude)
        count_above(magnitude, self.midpoints, self.ties_up, out)
        sign = negative.view(np.uint8)
        # a byte multiply: NumPy's byte shift has no vector loop and is 10x slower
        np.multiply(sign, np.uint8(self.sign_bit), out=sign)
        np.bitwise_or(out, sign, out=out)
        return out

    def decode(self, codes: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """float32 values of ``codes`` (uint8)."""
        return np.take(self.values, codes, out=out)

    def nearest(self, t: np.ndarray, out: np.ndarray) -> None:
        """The value nearest to each of float32 ``t`` (ties to the even code) into ``out``
        (float32, t's shape; may be ``t`` itself)."""
        codes = self.encode(t, scratch("minifloat-codes", t.shape, np.uint8))
        np.take(self.values, codes, out=out, mode="clip")  # in range: no bounds check
