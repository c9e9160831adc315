"""The one table between safetensors dtype names and NumPy dtypes.

safetensors names its element types with short strings ("F32", "BF16", ...); NumPy uses
``np.dtype`` objects. bfloat16 and the two float8 types have no NumPy type of their own, so
they come from ml_dtypes (the package JAX and TensorFlow use for the same purpose).

safetensors data is always little-endian; the NumPy dtypes here are the native ones, which
are little-endian on every platform quant supports (x86-64, arm64).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
from numpy.typing import DTypeLike

from quantcli.errors import FormatError

# Order: floats widest first, then signed, unsigned, bool, complex. The order is only used to
# list the supported names in error messages.
_NUMPY_BY_SAFETENSORS: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U64": np.dtype(np.uint64),
    "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
    # Not a weight type, but safetensors and NumPy both have it, so a complex tensor can pass
    # through unchanged instead of being refused by the reader.
    "C64": np.dtype(np.complex64),
}

_SAFETENSORS_BY_NUMPY: dict[np.dtype, str] = {
    dtype: name for name, dtype in _NUMPY_BY_SAFETENSORS.items()
}

_FLOAT_NAMES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})

#: Every safetensors dtype name quant reads and writes.
SAFETENSORS_DTYPES: tuple[str, ...] = tuple(_NUMPY_BY_SAFETENSORS)


def numpy_dtype(st_name: str, where: str = "header") -> np.dtype:
    """Return the NumPy dtype for the safetensors dtype name ``st_name`` (e.g. "BF16").

    ``where`` names the file or tensor for the error message.
    Raises FormatError for a name quant does not know (e.g. "F4", "F8_E8M0").
    """
    dtype = _NUMPY_BY_SAFETENSORS.get(st_name) if isinstance(st_name, str) else None
    if dtype is None:
        raise FormatError(
            f"unknown dtype in {where}: {st_name!r} is not one of {', '.join(SAFETENSORS_DTYPES)}; "
            "convert the tensor to a supported dtype before quantizing"
        )
    return dtype


def _native(dtype: np.dtype) -> np.dtype:
    """``dtype`` in native byte order, so that '>f4' and '<f4' both map to F32."""
    if dtype.byteorder in "<>":
        return dtype.newbyteorder("=")
    return dtype


def lookup_safetensors_dtype(np_dtype: DTypeLike) -> str | None:
    """The safetensors name of ``np_dtype`` (any byte order), or None if it has none."""
    try:
        dtype = np.dtype(np_dtype)
    except TypeError:
        return None
    return _SAFETENSORS_BY_NUMPY.get(_native(dtype))


def safetensors_dtype(np_dtype: DTypeLike, where: str = "output") -> str:
    """Return the safetensors dtype name for ``np_dtype`` (e.g. float32 -> "F32").

    Byte order is ignored: writers convert to little-endian. Raises FormatError for dtypes
    safetensors cannot store (float128, complex128, strings, ...); ``where`` names the file
    or tensor for the message.
    """
    name = lookup_safetensors_dtype(np_dtype)
    if name is None:
        try:
            shown = str(np.dtype(np_dtype))
        except TypeError:
            shown = repr(np_dtype)
        raise FormatError(
            f"unsupported dtype in {where}: NumPy dtype {shown} has no safetensors "
            f"equivalent; cast the tensor to one of {', '.join(SAFETENSORS_DTYPES)}"
        )
    return name


def is_float(np_dtype: DTypeLike) -> bool:
    """True for the float dtypes quant can quantize: float64/32/16, bfloat16, float8 e4m3/e5m2."""
    return lookup_safetensors_dtype(np_dtype) in _FLOAT_NAMES


def is_supported(np_dtype: DTypeLike) -> bool:
    """True if ``np_dtype`` is in the table (so it can be read from and written to safetensors)."""
    return lookup_safetensors_dtype(np_dtype) is not None
