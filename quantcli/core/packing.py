"""Dense bit packing of b-bit codes (b < 8) along the last axis.

Layout, row by row of the last axis (a 0-d array counts as one row of one element):

- every code is reduced to its low ``bits`` bits (signed codes in two's complement, as ONNX
  Runtime's int4 does);
- 4 bits: element 2i in the low nibble and 2i+1 in the high nibble of byte i (ONNX Runtime);
- 2, 3, 5, 6, 7 bits: an LSB-first bit stream, element i at bits [i*b, (i+1)*b) counted from
  the least significant bit of byte 0 (for b = 4 this is the same layout);
- each row is padded with zero bits to a whole byte: packed shape (..., ceil(n * b / 8)).

8-bit codes are stored as they are.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from quantcli.core.parallel import scratch

CHUNK_ROWS_BYTES = 1 << 22  # bound on the unpacked-bits temporaries of one chunk


def packed_length(n: int, bits: int) -> int:
    """Bytes a row of ``n`` codes of ``bits`` bits takes."""
    return -(-n * bits // 8)


def pack(codes: np.ndarray, bits: int, out: np.ndarray | None = None) -> np.ndarray:
    """Pack int8/uint8 ``codes`` of shape (..., n) into uint8 of shape (..., packed_length).

    out: an optional C-contiguous uint8 array of that shape to write into (and return).
    """
    codes = np.asarray(codes)
    if bits == 8:
        return codes
    lead = codes.shape[:-1] if codes.ndim else ()
    # the row count is explicit: reshape(-1, 0) is ambiguous for an empty last axis
    rows = codes.reshape(math.prod(lead), codes.shape[-1] if codes.ndim else 1).view(np.uint8)
    n = rows.shape[1]
    if out is not None and not out.flags.c_contiguous:
        raise ValueError("pack: out must be C-contiguous")
    result = np.empty(lead + (packed_length(n, bits),), np.uint8) if out is None else out
    out = result.reshape(rows.shape[0], packed_length(n, bits))  # a view: result is contiguous
    mask = np.uint8((1 << bits) - 1)
    if bits == 4 and n % 2 == 0:
        _pack_nibble_pairs(rows, out)
    elif bits == 4:
        low = rows[:, 0::2] & mask
        high = rows[:, 1::2] & mask
        out[...] = low
        out[:, : high.shape[1]] |= high << 4
    else:
        step = max(1, CHUNK_ROWS_BYTES // max(1, n * 8))
        for start in range(0, rows.shape[0], step):
            chunk = rows[start : start + step]
            # (r, n, 8) bits, LSB first; keep the low `bits` of each code, then repack
            stream = np.unpackbits(chunk[..., None], axis=-1, bitorder="little")[..., :bits]
            stream = stream.reshape(chunk.shape[0], n * bits)
            out[start : start + step] = np.packbits(stream, axis=-1, bitorder="little")
    return result


def _pack_nibble_pairs(rows: np.ndarray, out: np.ndarray) -> None:
    """4-bit packing of rows of even length: each pair of codes, read as one little-endian
    uint16, becomes ``v | (v >> 4)`` with ``v = pair & 0x0F0F`` (element 2i's low nibble in
    bits 0-3, element 2i+1's in bits 8-11, shifted down to bits 4-7), whose low byte is the
    packed byte. Contiguous uint16 operations in cache-sized chunks: far faster than
    byte-strided slices."""
    pairs = np.ascontiguousarray(rows).reshape(-1).view(np.uint16)
    flat = out.reshape(-1)
    step = CHUNK_ROWS_BYTES // 8
    for start in range(0, pairs.size, step):
        chunk = pairs[start : start + step]
        nibbles = np.bitwise_and(chunk, 0x0F0F, out=scratch("pack-low", chunk.shape, np.uint16))
        high = np.right_shift(nibbles, 4, out=scratch("pack-high", chunk.shape, np.uint16))
        np.bitwise_or(nibbles, high, out=nibbles)
        np.copyto(flat[start : start + step], nibbles, casting="unsafe")  # the low byte


def unpack(packed: np.ndarray, bits: int, n: int, signed: bool) -> np.ndarray:
    """The inverse of ``pack``: uint8 (..., packed_length(n)) -> int8 or uint8 codes (..., n)."""
    packed = np.asarray(packed, np.uint8)
    dtype = np.int8 if signed else np.uint8
    if bits == 8:
        return packed.view(dtype) if packed.dtype != dtype else packed
    lead = packed.shape[:-1] if packed.ndim else ()
    rows = packed.reshape(math.prod(lead), packed.shape[-1] if packed.ndim else 1)
    if bits in (2, 4):
        out = _unpack_whole_bytes(rows, bits, signed)[:, :n]
    else:
        out = np.empty((rows.shape[0], n), np.uint8)
        step = max(1, CHUNK_ROWS_BYTES // max(1, rows.shape[1] * 8))
        weights = (1 << np.arange(bits, dtype=np.uint8)).astype(np.uint8)
        for start in range(0, rows.shape[0], step):
            chunk = rows[start : start + step]
            stream = np.unpackbits(chunk, axis=-1, bitorder="little")[:, : n * bits]
            stream = stream.reshape(chunk.shape[0], n, bits)
            out[start : start + step] = (stream * weights).sum(axis=-1, dtype=np.uint8)
        if signed:
            # sign-extend the low `bits` bits: (v ^ sign) - sign maps sign.. to -sign..-1
            sign = np.uint8(1 << (bits - 1))
            np.bitwise_xor(out, sign, out=out)
            out = out.view(np.int8)
            np.subtract(out, np.int8(sign), out=out)
    return out.reshape(lead + (n,)).view(dtype)


def _unpack_whole_bytes(rows: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    """Unpack 2- or 4-bit codes, which never straddle a byte: one table look-up per byte gives
    all its codes at once (as one uint32 or uint16 holding their bytes in element order).
    Returns uint8 (rows, n_bytes * 8 // bits), the padding codes of each row included."""
    table = _byte_table(bits, signed)
    wide = np.empty(rows.shape, table.dtype)
    step = max(1, CHUNK_ROWS_BYTES // max(1, rows.shape[1] * 8))  # bounds the intp indices
    for start in range(0, rows.shape[0], step):
        np.take(table, rows[start : start + step], out=wide[start : start + step])
    # the column count is explicit: reshape(0, -1) is ambiguous
    return wide.view(np.uint8).reshape(rows.shape[0], rows.shape[1] * table.itemsize)


@functools.cache
def _byte_table(bits: int, signed: bool) -> np.ndarray:
    """(256,) uint16 (4 bits) or uint32 (2 bits): for each byte value, the bytes of its codes,
    element 0 first in memory, sign-extended when ``signed``."""
    per_byte = 8 // bits
    byte = np.arange(256)
    sign, mask = 1 << (bits - 1), (1 << bits) - 1
    codes = []
    for i in range(per_byte):
        field = (byte >> (bits * i)) & mask
        if signed:
            field = field - ((field & sign) << 1)  # two's complement of the low `bits` bits
        codes.append(field.astype(np.int16).astype(np.uint8))  # the int8 byte when signed
    table = np.ascontiguousarray(np.stack(codes, axis=1))  # (256, per_byte) uint8
    return table.view(np.uint16 if per_byte == 2 else np.uint32).reshape(256)
