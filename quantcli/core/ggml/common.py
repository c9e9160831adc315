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
    """Store float32 ``d`` (n,) as little-endian IEEE float16 into uint8 ``out`` (n, 2), whose
    last axis is contiguous (two columns of a block array).

    NumPy's cast rounds to nearest even and overflows to inf, as ggml's
    ``GGML_FP32_TO_FP16`` does (NaN never reaches it: encoders refuse non-finite input).
    """
    # one little-endian uint16 a block: a strided copy, not n two-byte row copies
    np.copyto(out.view("<u2")[:, 0], d.astype("<f2").view("<u2"))


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
    """Sum of a float32 (n, m) array over axis 0 in index order, ``((a[0] + a[1]) + a[2]) +
    ...``, as C's ``for`` loops accumulate: NumPy reduces the outer axis of a C-contiguous
    array row by row (over the inner axis, or a strided view, it may sum in another order,
    so other arrays are made contiguous first)."""
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    return np.add.reduce(a, axis=0)


def _einsum_sums_in_order() -> bool:
    """Whether ``np.einsum("is,is->s")`` and ``np.einsum("is,is,is->s")`` round each product
    to float32 (``(a*b)*c`` for three) and add them in index order, as ``dot_rows`` needs:
    true of NumPy's C loops; a build whose kernel fused multiply and add (FMA) would not be,
    and is detected here on random data."""
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal((3, 32, 256)) * 10.0 ** rng.uniform(-4, 4, (3, 32, 256))).astype(
        np.float32
    )
    two, three = a[0] * b[0], (a[0] * b[0]) * c[0]
    for i in range(1, a.shape[0]):
        two += a[i] * b[i]
        three += (a[i] * b[i]) * c[i]
    return bool(
        np.array_equal(np.einsum("is,is->s", a, b, optimize=False), two)
        and np.array_equal(np.einsum("is,is,is->s", a, b, c, optimize=False), three)
    )


_EINSUM_IN_ORDER: bool | None = None


def dot_rows(*factors: np.ndarray) -> np.ndarray:
    """``sum_rows(a * b)`` or ``sum_rows((a * b) * c)`` of C-contiguous float32 (n, m)
    arrays: each product rounded to float32 in that order, then summed over axis 0 in index
    order. ``np.einsum`` does it in one pass when it is exact (checked once)."""
    global _EINSUM_IN_ORDER
    if _EINSUM_IN_ORDER is None:
        _EINSUM_IN_ORDER = _einsum_sums_in_order()
    if _EINSUM_IN_ORDER:
        spec = "is,is->s" if len(factors) == 2 else "is,is,is->s"
        return np.einsum(spec, *factors, optimize=False)
    product = factors[0] * factors[1]
    for f in factors[2:]:
        np.multiply(product, f, out=product)
    return np.add.reduce(product, axis=0)


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's ``nearest_int`` of float32 ``v``, bit for bit, as float32: add 1.5 * 2**23 and
    read the low 22 mantissa bits. Within +-4194303 (its asserted domain) this is round half
    to even, ``np.rint``; beyond it, and for inf and NaN, it gives the same wrapped integers
    as the C code built without assertions."""
    shifted = np.add(v, F32(12582912.0))
    bits = shifted.view(np.int32)
    np.bitwise_and(bits, 0x007FFFFF, out=bits)
    np.subtract(bits, 0x00400000, out=bits)
    return bits.astype(np.float32)


_LOW_BITS = np.uint64(0x0101010101010101)


def pack_bit_planes(bits: np.ndarray) -> np.ndarray:
    """uint8 (B, 8, 32) of 0/1 -> uint8 (B, 32): bit k of byte l is bits[:, k, l] (the
    K-quants' high-bit masks). Eight bytes at a time as uint64 words: a 0/1 byte shifted by
    k < 8 stays in its byte, whatever the machine's byte order."""
    words = np.ascontiguousarray(bits, dtype=np.uint8).view(np.uint64)  # (B, 8, 4)
    packed = np.left_shift(words[:, 7], np.uint64(7))
    for k in range(6, -1, -1):
        packed |= np.left_shift(words[:, k], np.uint64(k))
    return packed.view(np.uint8)


def unpack_bit_planes(mask: np.ndarray) -> np.ndarray:
    """uint8 (B, 32) -> uint8 (B, 8, 32) of 0/1, the inverse of ``pack_bit_planes``."""
    words = np.ascontiguousarray(mask).view(np.uint64)  # (B, 4)
    planes = np.empty((words.shape[0], 8, words.shape[1]), np.uint64)
    for k in range(8):
        np.right_shift(words, np.uint64(k), out=planes[:, k])
    planes &= _LOW_BITS
    return planes.view(np.uint8)
