"""The searches applied to a scheme's groups: what ``quantize`` calls when ``spec.search`` is
``mse`` or ``hqq``.

Each scheme that a search fits maps to its level grid here (``GRIDS``): symmetric formats
take ``mse_scales`` on their grid, the affine ``zeropoint`` takes ``affine_search`` (``mse``,
``wmse``) or ``hqq_params`` (``hqq``) with an integer zero point.

The objective: ``mse`` minimizes the plain squared error, the one ``quant report`` measures;
``wmse`` weights each weight's squared error by rms(group) + |x| (llama.cpp's Q4_K weighting:
large weights matter more to a model's output than their share of the squared error says,
which is why llama.cpp found MSE-optimal scales gave a worse perplexity than plain rounding);
its plain error can be higher than round-to-nearest's. ``hqq`` runs HQQ's lp-norm optimizer
and keeps its zero points where they lower the plain squared error. Every search starts from the
scheme's own round-to-nearest parameters and keeps them for any group it cannot strictly
improve, so a searched tensor is never worse than round-to-nearest on the objective, group by
group (docs/SEARCH.md has the objective and what it does not promise).
"""

from __future__ import annotations

from collections.abc import Callable

from quantcli.core.search.affine import AffineParams, affine_search
from quantcli.core.search.grids import E2M1, NF4, Grid, int_grid
from quantcli.core.search.hqq import hqq_params
from quantcli.core.search.symmetric import mse_scales, power_of_two_scales

SEARCHES = ("none", "mse", "wmse", "hqq")
# "auto", the default, picks one of them per spec: ``auto_search``
AUTO = "auto"
# where the default turns the search on: at 4 bits and below, where round to nearest loses
# the most, for the schemes whose searched ``quantize`` runs at >= 15 M weights/s on one
# thread (docs/SEARCH.md, "Speed"). Not the -ct schemes (compressed-tensors' own observers,
# byte for byte), nor nf4 (bitsandbytes' rule; its search runs at 11-17 M/s), nor mxfp4
# and nvfp4 (the OCP, ggml and compressed-tensors rules), nor two-level scales (6-9 M/s):
# ``--search mse`` turns it on for those.
AUTO_SCHEMES = ("absmax", "fullrange", "zeropoint")
AUTO_MAX_BITS = 4
WEIGHTS = {"mse": "plain", "wmse": "rms_abs", "hqq": "plain"}
# the searches whose result ``quantize`` compares with round-to-nearest's itself, group by
# group, on the plain squared error as the scheme's own encoder and decoder give it: those
# on the plain error (wmse's objective is another; its search keeps the comparison)
CHECKED_BY_QUANTIZE = {"mse": True, "wmse": False, "hqq": True}

# scheme -> (the grid of its levels for a bit width, whether the scale may be negative)
GRIDS: dict[str, Callable[[int], tuple[Grid, bool]]] = {
    "absmax": lambda bits: (int_grid(bits), False),
    "fullrange": lambda bits: (int_grid(bits, full_range=True), True),
    "fullrange-ct": lambda bits: (int_grid(bits, full_range=True), False),
    "nf4": lambda bits: (NF4, False),
    # the 4-bit float formats: E2M1 elements under a searched block scale (E8M0, E4M3)
    "mxfp4": lambda bits: (E2M1, False),
    "mxfp4-ct": lambda bits: (E2M1, False),
    "nvfp4": lambda bits: (E2M1, False),
}
AFFINE = ("zeropoint",)


def auto_search(scheme: str, bits: int, granularity: str, axis: int, calibration: str,
                two_level: bool) -> str:  # fmt: skip
    """The search ``auto`` means for a spec with these fields: "mse" or "none"."""
    on = (
        scheme in AUTO_SCHEMES
        and bits <= AUTO_MAX_BITS
        and (granularity == "group" or (granularity == "channel" and axis == 0))
        and calibration == "minmax"
        and not two_level
    )
    return "mse" if on else "none"


def searches_for(scheme: str) -> tuple[str, ...]:
    """The searches ``scheme`` takes, "none" first."""
    if scheme in AFFINE:
        return SEARCHES
    if scheme in GRIDS:
        return ("none", "mse", "wmse")
    return ("none",)


def refine_symmetric(x, search: str, scheme: str, bits: int, rtn, scale_dtype, name: str):
    """Searched scales, float32 (G,), for groups x float32 (G, n) of a symmetric scheme whose
    round-to-nearest scales are ``rtn`` (G,)."""
    grid, mirror = GRIDS[scheme](bits)
    if getattr(scale_dtype, "powers_of_two", False):  # E8M0 (scales.E8M0Kind)
        # the two neighbours of round-to-nearest's power of two are all there is to try
        return power_of_two_scales(x, grid, rtn, weights=WEIGHTS[search])
    return mse_scales(
        x, grid, weights=WEIGHTS[search], rtn=rtn, scale_dtype=scale_dtype, mirror=mirror,
        never_worse=not CHECKED_BY_QUANTIZE[search], name=name,
    )  # fmt: skip


def refine_affine(x, search: str, bits: int, scale, zero_point, scale_dtype, name: str):
    """(scale float32 (G,), zero point uint8 (G,)) searched for groups x (G, n) of the
    zeropoint scheme, starting from its round-to-nearest ``scale`` and ``zero_point``."""
    rtn = AffineParams(scale=scale, zero_point=zero_point)
    weights = WEIGHTS[search]
    run = hqq_params if search == "hqq" else affine_search
    p = run(
        x, bits, "integer", weights=weights, rtn=rtn, scale_dtype=scale_dtype,
        never_worse=not CHECKED_BY_QUANTIZE[search], name=name,
    )  # fmt: skip
    return p.scale, p.zero_point
