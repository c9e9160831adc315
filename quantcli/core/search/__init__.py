"""Data-free scale searches: per-group parameters with less error than round-to-nearest.

Pure NumPy functions over many groups at once. Every function takes ``x``, float (G, n): G
groups of n weights (a ragged last group is the caller's: pad it or search it apart), and
returns per-group parameters, float32 (G,) (uint8 (G,) for integer zero points):

- symmetric formats, x ~ s * L[q] with a level grid L (``grids``: ``int_grid(bits)``,
  ``int_grid(bits, full_range=True)``, ``NF4``, ``E2M1``, any ``float_grid`` or
  ``codebook_grid``): ``symmetric_rtn_scales``, ``mse_scales`` (search), ``symmetric_error``;
- affine formats, q in 0..2^b - 1 with a float offset (x ~ s * q + m) or an integer zero point
  (x ~ s * (q - z)): ``affine_rtn``, ``affine_search``, ``hqq_params`` (HQQ's optimizer),
  ``affine_error``;
- two-level parameters, as llama.cpp's Q4_K: ``superblock_params`` quantizes float group
  scales and offsets into 6-bit codes under a float16 pair per super-block, and refits.

The objective of a group is E = sum_i w_i (x_i - x_hat_i)^2, with the codes an encoder
makes from the parameters (the nearest level of x / s, in float32) and the weights w chosen
by ``weights`` (``"plain"``, ``"square"``, ``"rms_abs"`` or an array). Every search computes
E exactly (float64) for its result and for round-to-nearest's parameters at the end and
keeps round-to-nearest's where the search is not strictly better: never worse on E, group
by group. A group's result does not depend on the other groups passed with it. See
docs/SEARCH.md for what each search optimizes, what it does not promise, and measurements.
"""

from quantcli.core.search.affine import AffineParams, affine_error, affine_rtn, affine_search
from quantcli.core.search.grids import (
    E2M1,
    NF4,
    Grid,
    codebook_grid,
    float_grid,
    int_grid,
)
from quantcli.core.search.hqq import hqq_params
from quantcli.core.search.superblock import SuperBlockParams, superblock_params
from quantcli.core.search.symmetric import mse_scales, symmetric_error, symmetric_rtn_scales

__all__ = [
    "E2M1",
    "NF4",
    "AffineParams",
    "SuperBlockParams",
    "Grid",
    "affine_error",
    "affine_rtn",
    "affine_search",
    "codebook_grid",
    "float_grid",
    "hqq_params",
    "int_grid",
    "mse_scales",
    "superblock_params",
    "symmetric_error",
    "symmetric_rtn_scales",
]
