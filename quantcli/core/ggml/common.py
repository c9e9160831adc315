"""Arithmetic shared by the ggml block codecs: float16 fields, ggml's two rounding rules,
sums in C's order.

Every function works on float32 and keeps float32 intermediates, because the codecs reproduce
llama.cpp's C reference (``ggml-quants.c``, compiled without FMA contraction, as its CPU-neutral
``ggml-base`` library is) operation by operation.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32
F32_ZERO = F32(0.0)


def f16_bytes(d: np.ndarray, out: np.ndarray) -> None:
    """Store float32 ``d`` (n,) as little-endian IEEE float16 into uint8 ``out`` (n, 2).

    NumPy's cast rounds to nearest even and overflows to inf, as ggml's
    ``GGML_FP32_TO_FP16`` does (NaN never reaches it: encoders refuse non-finite input).
    """
    out[...] = d.astype("<f2").view(np.uint8).reshape(-1, 2)


def f16_values(raw: np.ndarray) -> np.ndarray:
    """float32 (n, 1) from the uint8 (n, 2) bytes of a float16 field of n blocks."""
    return np.ascontiguousarray(raw).view("<f2").astype(np.float32)


def inverse_or_zero(d: np.ndarray) -> np.ndarray:
    """``d ? 1.0f/d : 0.0f`` elementwise, float32 (n,) -> float32 (n,).

    1/d overflows to inf for d below 2**-128, as it does in C; the encoders then produce the
    same codes as the C code (NumPy's float-to-int casts behave like x86's there).
    """
    inv = np.zeros_like(d)
    with np.errstate(over="ignore"):
        np.divide(F32(1.0), d, out=inv, where=d != 0)
    return inv


def round_half_away(v: np.ndarray) -> np.ndarray:
    """C's ``roundf`` (ties away from zero) of float32 ``v``, exactly: ``t + trunc(2 (v - t))``
    with ``t = trunc(v)``, since ``v - t`` and its double are exact in float32. (Adding 0.5
    and truncating is wrong for v just below k + 0.5, where the sum rounds up to k + 1.)"""
    t = np.trunc(v)
    frac2 = np.subtract(v, t)
    np.add(frac2, frac2, out=frac2)
    np.trunc(frac2, out=frac2)
    return np.add(t, frac2, out=t)


def sum_rows(a: np.ndarray) -> np.ndarray:
    """Sum of a C-contiguous (n, m) float32 array over axis 0 in index order,
    ``((a[0] + a[1]) + a[2]) + ...``, as C's ``for`` loops accumulate: NumPy reduces the
    outer axis of a contiguous array row by row (over the inner axis it sums pairwise)."""
    return np.add.reduce(np.ascontiguousarray(a), axis=0)
