"""A cheap fingerprint of a tensor's values, so that ``report --against`` can tell whether a
quantized file was made from the input it is compared with.

compress records the fingerprint of each source tensor it quantizes (``fingerprint`` in the
tensor's ``quant.tensors`` entry, docs/FORMAT.md). It is computed before the output header is
written, that is before the tensor is quantized, so it must not cost a second pass over the
data: it hashes a sample, ``BLOCKS`` runs of ``BLOCK`` consecutive elements spread evenly
over the tensor (the whole tensor when it is that small), with the dtype and the shape.
From a memory-mapped file only those pages are read: for a 4096 x 4096 float32 tensor on the
project machine 0.3 ms, against 0.33 s to hash all of its bytes and 6.7 s to quantize it
(absmax int8 per channel; a loaded machine, so read the ratios). An .npz member is read whole
(zip members cannot be mapped), which costs one more read of it. Any change that touches most
values (other weights, a fine-tune, another seed) changes the fingerprint; a change to a
handful of values may not, and is not what it is for.

Format: ``s1:`` followed by 16 hex digits (BLAKE2b, 8 bytes). Values are hashed as
little-endian bytes of their own dtype, in C order, so the same tensor stored big-endian in an
.npy file or Fortran-ordered gives the same fingerprint.
"""

from __future__ import annotations

import hashlib

import numpy as np

BLOCKS = 16
BLOCK = 1024  # elements
VERSION = "s1"


def sample_indices(size: int) -> np.ndarray:
    """int64 flat indices (C order) of the elements hashed in a tensor of ``size`` elements."""
    if size <= BLOCKS * BLOCK:
        return np.arange(size, dtype=np.int64)
    starts = np.linspace(0, size - BLOCK, BLOCKS).astype(np.int64)
    return (starts[:, None] + np.arange(BLOCK, dtype=np.int64)).reshape(-1)


def fingerprint(array: np.ndarray) -> str:
    """``s1:<16 hex digits>`` of ``array`` (any dtype and shape; memory-mapped arrays are read
    only where sampled)."""
    dtype = np.dtype(array.dtype)
    indices = sample_indices(int(array.size))
    if array.flags.c_contiguous:
        values = array.reshape(-1)[indices]
    else:  # e.g. a Fortran-ordered .npy: gather the same logical elements without a copy
        values = array[np.unravel_index(indices, array.shape)] if array.ndim else array[()]
    values = np.ascontiguousarray(values)
    if dtype.byteorder == ">":
        values = values.astype(dtype.newbyteorder("<"))
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{dtype.name};{','.join(str(n) for n in array.shape)};".encode())
    h.update(values.tobytes())
    return f"{VERSION}:{h.hexdigest()}"
