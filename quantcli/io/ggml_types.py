"""The ggml tensor types a GGUF file can hold: id, name, block size and block bytes.

A ggml tensor is stored row by row (a row is ``ne[0]`` elements, the first GGUF dimension);
each row is a whole number of blocks of ``block_size`` elements taking ``block_bytes`` bytes.
Plain types (F32, F16, BF16, F64, I8..I64) are blocks of one element and map to a NumPy
dtype; the others are quantized block formats whose bytes only a ggml codec can turn into
numbers. The ids and sizes are those of ``enum ggml_type`` and ``type_traits`` in llama.cpp's
ggml.h / ggml.c (ids 4, 5, 31-33 and 36-38 were removed from ggml and are refused).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ml_dtypes
import numpy as np

# K-quants and most i-quants work on super-blocks of this many elements (ggml's QK_K).
QK_K = 256


@dataclass(frozen=True)
class GGMLType:
    """One ggml tensor type.

    ``dtype`` is the NumPy dtype of a plain type (``block_size == 1``), None for a quantized
    block format.
    """

    id: int
    name: str
    block_size: int
    block_bytes: int
    dtype: np.dtype | None = None

    @property
    def quantized(self) -> bool:
        """True for block formats that need a decoder (Q4_K, Q8_0, ...)."""
        return self.dtype is None

    def row_bytes(self, row_length: int) -> int:
        """Bytes of one row of ``row_length`` elements (a multiple of ``block_size``)."""
        return row_length // self.block_size * self.block_bytes

    def nbytes(self, shape: tuple[int, ...]) -> int:
        """Bytes of a tensor of NumPy ``shape`` (last axis = the row; ``()`` is one element)."""
        row = shape[-1] if shape else 1
        return math.prod(shape[:-1]) * self.row_bytes(row)

    def __str__(self) -> str:
        return self.name


def _plain(id: int, name: str, dtype: np.dtype) -> GGMLType:
    dtype = np.dtype(dtype)
    return GGMLType(id, name, 1, dtype.itemsize, dtype)


_TYPES = [
    _plain(0, "F32", np.float32),
    _plain(1, "F16", np.float16),
    GGMLType(2, "Q4_0", 32, 2 + 16),
    GGMLType(3, "Q4_1", 32, 2 + 2 + 16),
    GGMLType(6, "Q5_0", 32, 2 + 4 + 16),
    GGMLType(7, "Q5_1", 32, 2 + 2 + 4 + 16),
    GGMLType(8, "Q8_0", 32, 2 + 32),
    GGMLType(9, "Q8_1", 32, 4 + 4 + 32),
    GGMLType(10, "Q2_K", QK_K, 2 + 2 + QK_K // 16 + QK_K // 4),
    GGMLType(11, "Q3_K", QK_K, 2 + QK_K // 4 + QK_K // 8 + 12),
    GGMLType(12, "Q4_K", QK_K, 2 + 2 + 12 + QK_K // 2),
    GGMLType(13, "Q5_K", QK_K, 2 + 2 + 12 + QK_K // 8 + QK_K // 2),
    GGMLType(14, "Q6_K", QK_K, QK_K // 2 + QK_K // 4 + QK_K // 16 + 2),
    GGMLType(15, "Q8_K", QK_K, 4 + QK_K + QK_K // 16 * 2),
    GGMLType(16, "IQ2_XXS", QK_K, 2 + QK_K // 4),
    GGMLType(17, "IQ2_XS", QK_K, 2 + QK_K // 4 + QK_K // 32),
    GGMLType(18, "IQ3_XXS", QK_K, 2 + 3 * QK_K // 8),
    GGMLType(19, "IQ1_S", QK_K, 2 + QK_K // 8 + QK_K // 16),
    GGMLType(20, "IQ4_NL", 32, 2 + 16),
    GGMLType(21, "IQ3_S", QK_K, 2 + QK_K // 4 + QK_K // 8 + QK_K // 32 + 4),
    GGMLType(22, "IQ2_S", QK_K, 2 + QK_K // 4 + QK_K // 16),
    GGMLType(23, "IQ4_XS", QK_K, 2 + 2 + QK_K // 64 + QK_K // 2),
    _plain(24, "I8", np.int8),
    _plain(25, "I16", np.int16),
    _plain(26, "I32", np.int32),
    _plain(27, "I64", np.int64),
    _plain(28, "F64", np.float64),
    GGMLType(29, "IQ1_M", QK_K, QK_K // 8 + QK_K // 16 + QK_K // 32),
    _plain(30, "BF16", ml_dtypes.bfloat16),
    GGMLType(34, "TQ1_0", QK_K, 2 + 4 * 13),
    GGMLType(35, "TQ2_0", QK_K, 2 + QK_K // 4),
    GGMLType(39, "MXFP4", 32, 1 + 16),
    GGMLType(40, "NVFP4", 64, 4 + 32),
    GGMLType(41, "Q1_0", 128, 2 + 16),
]

#: Every ggml type GGUF files may hold, by id.
GGML_TYPES: dict[int, GGMLType] = {t.id: t for t in _TYPES}
_BY_NAME: dict[str, GGMLType] = {t.name: t for t in _TYPES}

#: Ids ggml once had and has since removed: files holding them no longer load anywhere.
REMOVED_TYPES: dict[int, str] = {
    4: "Q4_2",
    5: "Q4_3",
    31: "Q4_0_4_4",
    32: "Q4_0_4_8",
    33: "Q4_0_8_8",
    36: "IQ4_NL_4_4",
    37: "IQ4_NL_4_8",
    38: "IQ4_NL_8_8",
}

F32, F16, BF16 = GGML_TYPES[0], GGML_TYPES[1], GGML_TYPES[30]


def ggml_type(key: int | str | GGMLType) -> GGMLType:
    """The GGMLType for an id (12), a name ("Q4_K") or a GGMLType; KeyError if unknown."""
    if isinstance(key, GGMLType):
        return key
    if isinstance(key, str):
        return _BY_NAME[key]
    return GGML_TYPES[int(key)]


def ggml_type_of_dtype(dtype: np.dtype) -> GGMLType | None:
    """The plain ggml type storing NumPy ``dtype`` (any byte order), or None if there is none."""
    dtype = np.dtype(dtype)
    if dtype.byteorder in "<>":
        dtype = dtype.newbyteorder("=")
    for t in _TYPES:
        if t.dtype is not None and t.dtype == dtype:
            return t
    return None
