"""E2M1, the 4-bit float of MXFP4 and NVFP4: the element codec both schemes share.

Values {0, 0.5, 1, 1.5, 2, 3, 4, 6} and their negatives; code = sign bit (8) | magnitude
index (0..7), exactly the float4_e2m1fn bit pattern. Rounding is to nearest even on that grid
(0.25 -> 0, 0.75 -> 1, 1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4), saturating at 6,
as ml_dtypes' float4_e2m1fn cast does; ``tests/test_formats.py`` checks every edge against it.

The codes come from ``minifloat.MiniFloat``: the sign bit, and the count of the 7 midpoints
below |t|, each compared with ``>`` or ``>=`` as the tie rule says (2.4 ns a value in one
measurement, against 3.2 for the arithmetic on the float32 exponent it replaces). The
searches' E2M1 grid (``search/grids.py``) rounds with the same object.
"""

from __future__ import annotations

import numpy as np

from quantcli.core.schemes.minifloat import MiniFloat

GRID = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float32)
MAX = 6.0
E2M1 = MiniFloat(GRID)
# all 16 codes' values, code order (the sign bit is 8)
VALUES = E2M1.values


def encode(t: np.ndarray, out: np.ndarray, overwrite: bool = False) -> None:
    """E2M1 codes (uint8 0..15, ``out``: t's shape) of float32 ``t`` (values already divided
    by their scale); ``overwrite``: ``t`` is scratch and may be overwritten."""
    E2M1.encode(t, out, overwrite)


def decode(codes: np.ndarray) -> np.ndarray:
    """float32 values of E2M1 ``codes`` (uint8 0..15)."""
    return np.take(VALUES, codes)
