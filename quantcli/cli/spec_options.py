"""From compress's quantization options to one QuantSpec: defaults that depend on the bits, and
options that would do nothing, refused.

Granularity: when --granularity is not given it is ``group`` (of --group-size, 128 unless
given) at 4 bits and below, ``channel`` above. At 4 bits one scale per output channel is too
coarse for real weights (users reported a BERT model's sentence embeddings at a mean cosine of
0.894 to the fp32 ones per channel, 0.958 with groups of 128, 0.973 with groups of 32), while
at 8 bits per channel loses next to nothing and stores fewer scales. An explicit
--granularity always wins.

An option given explicitly that does nothing is a usage error (exit 2), not a warning: the
user asked for something that would not happen, and a warning scrolls away while the file
is written. So --group-size needs group granularity, --axis channel granularity and
--percentile --calibration percentile, whether the granularity was given or is the default.
"""

from __future__ import annotations

from quantcli.errors import UsageError

# at this many bits and below, the default granularity is group
GROUP_DEFAULT_MAX_BITS = 4


def default_granularity(bits: int) -> str:
    """``group`` at GROUP_DEFAULT_MAX_BITS bits and below, ``channel`` above."""
    return "group" if bits <= GROUP_DEFAULT_MAX_BITS else "channel"


def given_options(ctx) -> set[str]:
    """Parameter names of ``ctx`` (a Click context) the user gave, on the command line or in
    the environment, rather than left at their defaults."""
    out = set()
    for name in ctx.params:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            out.add(name)
    return out


def granularity_for(bits: int | None, granularity: str | None, scheme: str = "absmax") -> str:
    """The granularity asked for, or when None the default: the scheme's own when it is not
    per channel (nf4, mxfp4, nvfp4), else the default for ``bits`` (None: the scheme's)."""
    if granularity:
        return granularity
    from quantcli.core.schemes import SCHEMES
    from quantcli.core.spec import SCHEME_ALIASES

    info = SCHEMES[SCHEME_ALIASES.get(scheme, scheme)]
    if info.default_granularity != "channel":
        return info.default_granularity
    return default_granularity(info.default_bits if bits is None else bits)


def refuse_unused(
    given: set[str],
    *,
    bits: int | None,
    granularity: str | None,
    axis: int,
    group_size: int,
    calibration: str,
    percentile: float,
    command: str = "quant compress",
    scheme: str = "absmax",
    scale_dtype: str | None = None,
    super_block: int | None = None,
    block_size: str | None = None,
) -> None:
    """UsageError for an option in ``given`` (names of the options given explicitly:
    ``axis``, ``group_size``, ``percentile``) that the spec would not use. ``granularity``:
    as given, None when left to the default for ``bits``."""
    chosen = granularity_for(bits, granularity, scheme)
    if bits is None:  # the scheme's own width
        from quantcli.core.schemes import SCHEMES
        from quantcli.core.spec import SCHEME_ALIASES

        bits = SCHEMES[SCHEME_ALIASES.get(scheme, scheme)].default_bits
    why = (
        f"--granularity {chosen}"
        if granularity
        else f"the default granularity at {bits} bits, {chosen},"
    )
    if "group_size" in given and chosen != "group":
        raise UsageError(
            f"--group-size {group_size} without --granularity group in {command}: {why} has "
            "no groups, so the group size would be ignored; add --granularity group, or drop "
            "--group-size"
        )
    if "block_size" in given and chosen != "block":
        raise UsageError(
            f"--block-size {block_size} without --granularity block in {command}: {why} has "
            "no 2-D blocks, so the block size would be ignored; add --granularity block, or "
            "drop --block-size"
        )
    if "axis" in given and chosen != "channel":
        raise UsageError(
            f"--axis {axis} without --granularity channel in {command}: {why} has no channel "
            "axis, so the axis would be ignored; add --granularity channel, or drop --axis"
        )
    from quantcli.core.spec import TWO_LEVEL_SCALE_DTYPES

    if "super_block" in given and scale_dtype not in TWO_LEVEL_SCALE_DTYPES:
        raise UsageError(
            f"--super-block {super_block} without two-level scales in {command}: only "
            "--scale-dtype k4, k6 or k8 has super-blocks, so it would be ignored; add "
            "--scale-dtype k6, or drop --super-block"
        )
    if "percentile" in given and calibration != "percentile":
        raise UsageError(
            f"--percentile {percentile:g} without --calibration percentile in {command}: "
            f"{calibration} calibration uses no percentile, so it would be ignored; add "
            "--calibration percentile, or drop --percentile"
        )
