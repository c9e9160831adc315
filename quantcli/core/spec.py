"""The quantization spec: everything one quantization needs, validated in one place."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, replace

from quantcli.core.scales import DEFAULT_SUPER_BLOCK, SCALE_ALIASES, SCALE_KINDS, SHORT_NAMES
from quantcli.core.schemes import SCHEMES, Scheme
from quantcli.errors import SpecError

SCHEME_ALIASES = {
    **{name: name for name in SCHEMES},
    "symmetric": "absmax",
    "asymmetric": "zeropoint",
    "fp8-e4m3": "fp8",
    "e4m3": "fp8",
    "e5m2": "fp8-e5m2",
}
GRANULARITIES = ("tensor", "channel", "group", "block")
DEFAULT_BLOCK_SIZE = (128, 128)  # DeepSeek-V3's FP8 weight_scale_inv blocks
CALIBRATIONS = ("minmax", "percentile")
SCALE_DTYPES = tuple(SCALE_KINDS)
TWO_LEVEL_SCALE_DTYPES = tuple(name for name, kind in SCALE_KINDS.items() if kind.two_level)
TWO_LEVEL_SEARCHES = ("none", "mse", "wmse")
MIN_BITS, MAX_BITS = 2, 8


def parse_block_size(value) -> tuple[int, int]:
    """(rows, columns) of a 2-D block from ``"RxC"``, ``"R,C"``, ``"N"`` (N x N), an int or a
    pair. SpecError when it is not one or two positive integers."""
    if isinstance(value, str):
        parts = re.split(r"\s*[x,]\s*", value.strip().lower())
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = [value]
    try:
        sizes = [int(p) if not isinstance(p, (bool, float)) else None for p in parts]
    except (TypeError, ValueError):
        sizes = [None]
    if len(sizes) == 1:
        sizes = sizes * 2
    if len(sizes) != 2 or any(n is None or n < 1 for n in sizes):
        raise SpecError(
            f"block size {value!r} in quantization spec: not one or two positive integers; "
            "use ROWSxCOLUMNS, e.g. 128x128, or one number for a square block"
        )
    return sizes[0], sizes[1]


def _schemes_taking(search: str) -> list[str]:
    """The schemes ``search`` applies to."""
    from quantcli.core.search.refine import searches_for

    return [name for name in SCHEMES if search in searches_for(name)]


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize one tensor.

    scheme: the number format (``schemes/``): ``absmax`` (symmetric, signed codes),
    ``zeropoint`` (asymmetric, unsigned codes), ``fullrange``, ``fp8``, ``nf4``, ``mxfp4``,
    ``nvfp4`` and their variants.
    granularity: ``tensor`` (one scale), ``channel`` (one scale per index along ``axis``),
    ``group`` (one scale per ``group_size`` consecutive elements of the last axis) or
    ``block`` (fp8 only: one scale per ``block_size`` = (rows, columns) tile of a 2-D weight,
    128x128 by default as DeepSeek-V3's checkpoints; the last tile of each direction may be
    partial).
    calibration: ``minmax`` or ``percentile`` (clip the range to the ``percentile``-th value).
    scale_dtype: how scales are stored (``scales.py``); part of the bits per weight. The
    two-level kinds ``k4``, ``k6``, ``k8`` (absmax and zeropoint, per group) store k-bit scale
    (and min) codes under a float16 scale (and min) per super-block of ``super_block`` groups
    (default 8), as llama.cpp's K-quants do.
    search: ``none`` (round to nearest), ``mse`` (a scale search on the format's grid, and
    for zeropoint a joint scale and zero-point search, minimizing the squared error),
    ``wmse`` (the same, magnitude-weighted) or ``hqq`` (HQQ's zero-point optimizer, zeropoint
    only); see ``search/refine.py``. ``auto`` becomes ``mse`` or ``none`` as
    ``refine.auto_search`` decides for the other fields (the command line's default).

    ``bits``, ``granularity``, ``group_size`` and ``scale_dtype`` left as None take the
    scheme's defaults (8 bits, per channel, groups of 128, float32 scales for the integer
    schemes; 4 bits, groups of 32 and E8M0 scales for mxfp4, and so on).
    """

    scheme: str = "absmax"
    bits: int | None = None
    granularity: str | None = None
    axis: int = 0
    group_size: int | None = None
    calibration: str = "minmax"
    percentile: float = 99.99
    scale_dtype: str | None = None
    search: str = "none"
    super_block: int | None = None
    block_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        scheme = SCHEME_ALIASES.get(str(self.scheme).lower())
        if scheme is None:
            raise SpecError(
                f"unknown scheme {self.scheme!r} in quantization spec: "
                f"choose one of {', '.join(SCHEMES)}"
            )
        object.__setattr__(self, "scheme", scheme)
        info = SCHEMES[scheme]
        if self.bits is None:
            object.__setattr__(self, "bits", info.default_bits)
        if self.granularity is None:
            object.__setattr__(self, "granularity", info.default_granularity)
        if self.group_size is None:
            object.__setattr__(self, "group_size", info.default_group_size)
        if self.scale_dtype is None:
            object.__setattr__(self, "scale_dtype", info.default_scale_dtype)
        scale_dtype = SCALE_ALIASES.get(str(self.scale_dtype).lower(), self.scale_dtype)
        object.__setattr__(self, "scale_dtype", scale_dtype)
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise SpecError(f"bits {self.bits!r} in quantization spec: not an integer; use 2 to 8")
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise SpecError(
                f"bits {self.bits} in quantization spec: out of range; use {MIN_BITS} to {MAX_BITS}"
            )
        if self.bits not in info.bits:
            raise SpecError(
                f"bits {self.bits} in quantization spec: {scheme} is a "
                f"{info.bits[0]}-bit format; drop --bits or use {info.bits[0]}"
            )
        if self.granularity not in GRANULARITIES:
            raise SpecError(
                f"unknown granularity {self.granularity!r} in quantization spec: "
                f"choose one of {', '.join(GRANULARITIES)}"
            )
        if self.granularity == "block" and "block" not in info.granularities:
            takers = [name for name, s in SCHEMES.items() if "block" in s.granularities]
            raise SpecError(
                f"granularity block in quantization spec: {scheme} has no 2-D block scales, "
                f"only {', '.join(takers)} do; use --scheme {takers[0]}, or --granularity "
                f"{info.granularities[-1]}"
            )
        if self.granularity not in info.granularities:
            raise SpecError(
                f"granularity {self.granularity} in quantization spec: {scheme} has one scale "
                f"per {' or '.join(info.granularities)}; use --granularity "
                f"{info.granularities[0]}"
            )
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int):
            raise SpecError(f"group size {self.group_size!r} in quantization spec: not an integer")
        if self.group_size < 1:
            raise SpecError(
                f"group size {self.group_size} in quantization spec: must be at least 1; "
                "use e.g. 32, 64 or 128"
            )
        if isinstance(self.axis, bool) or not isinstance(self.axis, int):
            raise SpecError(f"axis {self.axis!r} in quantization spec: not an integer")
        if self.calibration not in CALIBRATIONS:
            raise SpecError(
                f"unknown calibration {self.calibration!r} in quantization spec: "
                f"choose one of {', '.join(CALIBRATIONS)}"
            )
        p = float(self.percentile)
        if not (math.isfinite(p) and 50 < p <= 100):
            raise SpecError(
                f"percentile {self.percentile} in quantization spec: must be in (50, 100]; "
                "use e.g. 99.99"
            )
        object.__setattr__(self, "percentile", p)
        if self.scale_dtype not in SCALE_DTYPES:
            raise SpecError(
                f"unknown scale dtype {self.scale_dtype!r} in quantization spec: "
                f"choose one of {', '.join(SCALE_DTYPES)}"
            )
        if self.scale_dtype in TWO_LEVEL_SCALE_DTYPES and self.scale_dtype not in info.scale_dtypes:
            raise SpecError(
                f"{self.scale_dtype} scales in quantization spec: {scheme} cannot hold "
                "two-level scales; absmax (a scale per group) and zeropoint (a scale and a min, "
                "as llama.cpp's Q4_K) can; use --scheme zeropoint"
            )
        if self.scale_dtype not in info.scale_dtypes:
            raise SpecError(
                f"scale dtype {self.scale_dtype} in quantization spec: {scheme} stores its "
                f"scales as {' or '.join(info.scale_dtypes)}; use --scale-dtype "
                f"{info.default_scale_dtype}"
            )
        from quantcli.core.search.refine import AUTO, SEARCHES, auto_search, searches_for

        if self.search == AUTO:
            two_level = SCALE_KINDS[self.scale_dtype].two_level
            found = auto_search(
                scheme, self.bits, self.granularity, self.axis, self.calibration, two_level
            )
            object.__setattr__(self, "search", found)
        if self.search not in SEARCHES:
            raise SpecError(
                f"unknown search {self.search!r} in quantization spec: "
                f"choose one of {', '.join(SEARCHES)}"
            )
        if self.search not in searches_for(scheme):
            fits = _schemes_taking(self.search)
            raise SpecError(
                f"search {self.search} in quantization spec: {scheme} takes "
                f"{' or '.join(searches_for(scheme))}; use --search none, or a scheme it "
                f"fits: {', '.join(fits)}"
            )
        if self.search != "none" and self.granularity == "tensor":
            raise SpecError(
                f"search {self.search} in quantization spec: it chooses a scale per group or "
                "channel; use --granularity group or channel"
            )
        self._check_two_level()
        self._check_block()
        if self.granularity == "group" and info.group_sizes:
            if self.group_size not in info.group_sizes:
                raise SpecError(
                    f"group size {self.group_size} in quantization spec: {scheme} has one "
                    f"scale per {info.group_sizes[0]} elements; use --group-size "
                    f"{info.group_sizes[0]}"
                )

    def _check_block(self) -> None:
        """The rules of 2-D block scales (``granularity="block"``) and ``block_size``."""
        if self.granularity != "block":
            if self.block_size is not None:
                raise SpecError(
                    f"block size {self.block_size!r} in quantization spec: only "
                    "--granularity block has 2-D blocks; add --granularity block, or drop "
                    "--block-size"
                )
            return
        size = DEFAULT_BLOCK_SIZE if self.block_size is None else self.block_size
        object.__setattr__(self, "block_size", parse_block_size(size))
        if self.calibration != "minmax":
            raise SpecError(
                "percentile calibration with --granularity block in quantization spec: block "
                "scales are each block's amax / max, as DeepSeek-style checkpoints store them; "
                "use --calibration minmax"
            )

    def _check_two_level(self) -> None:
        """The rules of two-level scales (``k4``, ``k6``, ``k8``) and ``super_block``."""
        if not SCALE_KINDS[self.scale_dtype].two_level:
            if self.super_block is not None:
                raise SpecError(
                    f"super-block {self.super_block} in quantization spec: only two-level "
                    f"scales ({', '.join(TWO_LEVEL_SCALE_DTYPES)}) have super-blocks; add "
                    "--scale-dtype k6, or drop --super-block"
                )
            return
        if self.super_block is None:
            object.__setattr__(self, "super_block", DEFAULT_SUPER_BLOCK)
        sb = self.super_block
        if isinstance(sb, bool) or not isinstance(sb, int) or sb < 1:
            raise SpecError(
                f"super-block {sb!r} in quantization spec: not a positive integer; use the "
                f"groups a super-block holds, e.g. {DEFAULT_SUPER_BLOCK}"
            )
        where = f"{self.scale_dtype} scales in quantization spec"
        if self.granularity != "group":
            raise SpecError(
                f"{where}: two-level scales are per group, not per {self.granularity}; use "
                "--granularity group"
            )
        if self.calibration != "minmax":
            raise SpecError(
                f"{where}: two-level scales are fitted to each group's min-max range or "
                "searched, not clipped to a percentile; use --calibration minmax (and "
                "--search mse to fit the range)"
            )
        if self.search not in TWO_LEVEL_SEARCHES:
            raise SpecError(
                f"{where}: search {self.search} does not choose two-level scales; use "
                f"--search {' or '.join(TWO_LEVEL_SEARCHES)}"
            )

    @property
    def two_level(self) -> bool:
        """True when scales are two-level (``k4``, ``k6``, ``k8``): ``super_block`` is set."""
        return SCALE_KINDS[self.scale_dtype].two_level

    # -- derived facts -------------------------------------------------------------------

    @property
    def format(self) -> Scheme:
        """The scheme's number format (``schemes/``): its kernels and facts."""
        return SCHEMES[self.scheme]

    @property
    def signed(self) -> bool:
        """True when codes are two's complement integers (absmax, fullrange)."""
        return self.format.signed

    @property
    def has_zero_point(self) -> bool:
        return self.format.has_zero_point

    @property
    def code_range(self) -> tuple[int, int]:
        """(qmin, qmax) of the stored codes: absmax uses the restricted symmetric range
        [-(2^(b-1)-1), 2^(b-1)-1], zeropoint [0, 2^b-1], fullrange [-2^(b-1), 2^(b-1)-1]."""
        return self.format.code_range(self.bits)

    def resolve_axis(self, ndim: int, name: str = "tensor") -> int:
        """The channel axis as a non-negative index for an array of ``ndim`` dimensions.

        A 0-d array is quantized as a one-element 1-D array, so it accepts axis 0 and -1.
        """
        n = max(ndim, 1)
        if not -n <= self.axis < n:
            raise SpecError(
                f"axis {self.axis} out of range in {name}: it has {ndim} dimension(s); "
                f"use an axis from {-n} to {n - 1}"
            )
        return self.axis % n

    def for_tensor(self, shape: tuple[int, ...], name: str = "tensor") -> QuantSpec:
        """This spec checked against a tensor shape, with the axis made non-negative."""
        if self.granularity == "channel":
            return replace(self, axis=self.resolve_axis(len(shape), name))
        if self.granularity == "block" and len(shape) != 2:
            raise SpecError(
                f"{len(shape)}-D shape {list(shape)} in tensor {name}: 2-D block scales are for "
                "2-D weights [out, in]; keep it unquantized (--exclude), or give it another "
                "granularity with --rule"
            )
        if self.two_level:
            n = shape[-1] if shape else 1
            if n % self.group_size:
                raise SpecError(
                    f"row length {n} in tensor {name}: not a multiple of the group size "
                    f"{self.group_size}, and {self.scale_dtype} scales need whole groups; use "
                    f"a --group-size that divides {n}, or keep the tensor unquantized "
                    "(--exclude)"
                )
        return self

    def label(self, short: bool = False) -> str:
        """``absmax int8 channel(0)``, ``zeropoint uint4 group(128) p99.9 float16 scales``;
        short enough for an 80-column table: ``absmax i8 ch``, ``zp u4 g128 p99.9 f16``."""
        if self.scheme in ("absmax", "zeropoint", "zeropoint-ct", "fullrange", "fullrange-ct"):
            short_names = {"zeropoint": "zp", "zeropoint-ct": "zp-ct"} if short else {}
            scheme = short_names.get(self.scheme, self.scheme)
            kind = ("i" if short else "int") if self.signed else ("u" if short else "uint")
            text = f"{scheme} {kind}{self.bits}"
        else:
            text = self.scheme  # the float and codebook formats name their bits
        if self.granularity == "channel":
            gran = f"channel({self.axis})"
            if short:
                gran = "ch" if self.axis == 0 else f"ch{self.axis}"
        elif self.granularity == "group":
            gran = f"g{self.group_size}" if short else f"group({self.group_size})"
        elif self.granularity == "block":
            rows, cols = self.block_size
            gran = f"b{rows}x{cols}" if short else f"block({rows}x{cols})"
        else:
            gran = "t" if short else "tensor"
        text += f" {gran}"
        if self.calibration == "percentile":
            text += f" p{self.percentile:g}"
        if self.search != "none":
            text += f" {self.search}"
        if self.two_level:
            text += (
                f" {self.scale_dtype}x{self.super_block}"
                if short
                else f" {self.scale_dtype} scales in super-blocks of {self.super_block}"
            )
        elif self.scale_dtype != self.format.default_scale_dtype:
            short_dtype = SHORT_NAMES[self.scale_dtype]
            text += f" {short_dtype}" if short else f" {self.scale_dtype} scales"
        return text

    def short_label(self) -> str:
        return self.label(short=True)

    def to_dict(self) -> dict:
        """The fields as a dict; ``search`` only when one was used, ``super_block`` only
        with two-level scales and ``block_size`` (a [rows, columns] list) only with blocks
        (files and JSON made without them stay as they were before they existed)."""
        data = asdict(self)
        if self.search == "none":
            del data["search"]
        if data["super_block"] is None:
            del data["super_block"]
        if data["block_size"] is None:
            del data["block_size"]
        else:
            data["block_size"] = list(data["block_size"])
        return data

    @classmethod
    def from_dict(cls, data: dict) -> QuantSpec:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)
