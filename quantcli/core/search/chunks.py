"""What every search shares: input checks, cache-sized chunks of groups laid out transposed,
the error weights, and exact (float64) errors.

A chunk holds the groups transposed, (n, g) with the groups along the contiguous axis: a
group's parameter then broadcasts along rows, and a per-group sum is a reduction over the
outer axis, which NumPy computes as n - 1 elementwise additions of rows, in the same order
whatever g is. That order is what makes a group's result identical whether it is searched
alone or among others (a reduction along a contiguous axis would use pairwise summation,
whose grouping depends on the length). NumPy sums a one-column array as a 1-D one, so a lone
group is padded with a zero group.
"""

from __future__ import annotations

import numpy as np

from quantcli.core.parallel import scratch
from quantcli.errors import InputError, NonFiniteError, SpecError

# elements of a chunk: the searches keep 4-6 float32 arrays of this size (512 KiB each, in
# the L3 cache). Measured on the project machine: the symmetric search takes the same time
# from 64 Ki to 256 Ki elements; HQQ and the affine search gain 10-25% from 64 Ki to
# 128 Ki (each chunk pays a fixed cost of small per-group operations and iterations)
SEARCH_CHUNK_ELEMENTS = 1 << 17

WEIGHTINGS = ("plain", "square", "rms_abs")


def check_groups(x, name: str = "tensor") -> np.ndarray:
    """``x`` as a float32 (G, n) array, or an error naming what is wrong."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise InputError(
            f"groups in {name}: expected a 2-D array (groups, group size), got shape {x.shape}; "
            "reshape it so that each row is one group"
        )
    if x.dtype.kind != "f" and x.dtype.name not in ("bfloat16",):
        raise InputError(f"dtype {x.dtype} in {name}: the scale search takes float arrays")
    return x if x.dtype == np.float32 else x.astype(np.float32)


def check_weights(weights, shape: tuple[int, int], name: str = "tensor"):
    """A weighting name, or a non-negative float32 array of ``shape``."""
    if isinstance(weights, str):
        if weights not in WEIGHTINGS:
            raise SpecError(
                f"unknown weighting {weights!r} in scale search: choose one of "
                f"{', '.join(WEIGHTINGS)} or give an array of the groups' shape"
            )
        return weights
    w = np.asarray(weights, np.float32)
    if w.shape != shape:
        raise InputError(f"weights in {name}: shape {w.shape} differs from the groups' {shape}")
    if not np.all(w >= 0):  # also refuses NaN
        raise InputError(f"weights in {name}: negative or NaN values; weights must be >= 0")
    return w


def group_slices(n_groups: int, group_size: int) -> list[slice]:
    per = max(2, SEARCH_CHUNK_ELEMENTS // max(group_size, 1))
    return [slice(i, min(i + per, n_groups)) for i in range(0, n_groups, per)]


def buffer(name: str, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """A reusable, uninitialised array of this thread (``parallel.scratch``): a fresh array
    of chunk size per chunk would cost its page faults every time (half of the symmetric
    search's time on the project machine). One name, one purpose: two arrays alive at once
    need two names."""
    return scratch("search-" + name, shape, dtype)


def transposed(part: np.ndarray, name: str = "x", dtype=np.float32) -> np.ndarray:
    """(g, n) -> (n, max(g, 2)) contiguous ``dtype`` in buffer ``name``; a lone group gets
    a zero companion (see the module docstring)."""
    g, n = part.shape
    out = buffer(name, (n, max(g, 2)), dtype)
    np.copyto(out[:, :g], part.T)
    if g == 1:
        out[:, 1] = 0
    return out


def transposed_weights(weights, part: slice, xt: np.ndarray, name: str = "w"):
    """The (n, g) weights of a chunk (in xt's dtype, in buffer ``name``), or None for plain
    (all ones).

    ``square`` is x^2 (llama.cpp's Q6_K), ``rms_abs`` is rms(group) + |x| (llama.cpp's Q4_K
    without an importance matrix). Computed from ``xt``, which may be the normalized
    values: a group's weights then differ by one positive factor, which leaves the order of
    its candidates unchanged.
    """
    if isinstance(weights, str):
        if weights == "plain":
            return None
        w = buffer(name, xt.shape, xt.dtype)
        if weights == "square":
            return np.multiply(xt, xt, out=w)
        rms = np.sqrt(dot(xt, xt) / xt.shape[0]).astype(xt.dtype)
        np.abs(xt, out=w)
        np.add(w, rms, out=w)
        return w
    return transposed(weights[part], name, xt.dtype)


def float64_copy(a: np.ndarray | None, name: str = "w64") -> np.ndarray | None:
    """``a`` in float64, in buffer ``name`` (None stays None)."""
    if a is None:
        return None
    out = buffer(name, a.shape, np.float64)
    np.copyto(out, a)
    return out


_ROW_BITS = 5  # best_rows packs a row index of up to 2^5 rows into a score's low bits


def best_rows(score: np.ndarray) -> np.ndarray:
    """The row of the largest value in every column of float32 ``score`` (k, g), intp (g,);
    the first such row on ties, where scores that agree in all but their 5 lowest bits
    (within a relative 2^-18) tie.

    np.argmax along the rows of a (k, g) array works column by column, 4x slower than this:
    the float32 bits become int32 keys that order as the floats do, the row goes into the 5
    low bits (the first row the largest), and one maximum down the columns picks both.
    """
    rows = score.shape[0]
    if rows > 2**_ROW_BITS:
        return np.argmax(score, axis=0)
    bits = score.view(np.int32)
    key = buffer("best-rows", score.shape, np.int32)
    # negative floats order backwards as integers: flip their other 31 bits
    np.right_shift(bits, 31, out=key)
    np.bitwise_and(key, 0x7FFFFFFF, out=key)
    np.bitwise_xor(key, bits, out=key)
    np.bitwise_and(key, ~(2**_ROW_BITS - 1), out=key)
    np.bitwise_or(key, (2**_ROW_BITS - 1 - np.arange(rows, dtype=np.int32))[:, None], out=key)
    best = np.maximum.reduce(key, axis=0)
    return (2**_ROW_BITS - 1 - (best & (2**_ROW_BITS - 1))).astype(np.intp)


def dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-column sum of a * b of two (n, g) arrays: (g,), in their dtype."""
    return np.einsum("ij,ij->j", a, b)


def column_max(a: np.ndarray) -> np.ndarray:
    return np.maximum.reduce(a, axis=0)


def column_min(a: np.ndarray) -> np.ndarray:
    return np.minimum.reduce(a, axis=0)


def check_finite(lo: np.ndarray, hi: np.ndarray, name: str) -> None:
    """lo/hi: the per-group min and max, which carry any NaN or inf of the group."""
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise NonFiniteError(
            f"NaN or infinite values in {name}: the scale search needs finite weights; "
            "find where they come from, or leave the tensor out"
        )


def weighted_sq_error(x: np.ndarray, x_hat: np.ndarray, w, out64: np.ndarray) -> np.ndarray:
    """sum over rows of w * (x - x_hat)^2 in float64, (g,); x, x_hat float32 (n, g).

    The difference of two float32 values is exact in float64, and float64 squares neither
    overflow nor underflow for any float32 input, so the comparison of two parameter sets
    is decided by their true errors, not by float32 rounding.
    """
    np.subtract(x, x_hat, out=out64, dtype=np.float64)
    if w is None:
        return dot(out64, out64)
    np.multiply(out64, out64, out=out64)
    return dot(out64, w if w.dtype == np.float64 else w.astype(np.float64))


def round_to(values: np.ndarray, dtype) -> np.ndarray:
    """float32 ``values`` rounded to the nearest value of ``dtype`` (float32 kept as is), or
    to what a scale kind (``scales.ScaleKind``: ``load(store(v))``) stores, as E8M0's powers
    of two and E4M3 (a value it cannot store comes back non-finite or 0, and is not used)."""
    if hasattr(dtype, "store"):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return dtype.load(dtype.store(values)).astype(np.float32)
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return values
    with np.errstate(over="ignore"):
        return values.astype(dtype).astype(np.float32)
