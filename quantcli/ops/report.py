"""report: what each quantization choice costs and gains on a user's own weights.

Three library functions, each returning a result object and printing nothing:

- ``sweep``: every configuration on every selected tensor. Tensors stream one at a time: a
  tensor is read once, every configuration runs on it through ``quantcli.ops.tensor.process``
  (the function compress writes from, so the numbers are exactly those of the file compress
  would write), and only the statistics are kept. Peak memory follows the largest tensor.
- ``against``: an existing quantized file (from ``quant compress``) restored tensor by tensor
  and compared with the original input, after checking that it was made from that input
  (names, shapes, dtypes and the fingerprints compress recorded).
- ``histogram``: one tensor's values in bins, with each configuration's clipping range and
  quantization levels, for ``--hist``.

Rows carry ``ErrorStats`` sums, so a configuration's summary over the file is the exact,
size-weighted merge of its tensors (``ErrorStats.merge``), not an average of averages.
Per-tensor rows are listed in natural name order (``layers.2`` before ``layers.10``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from itertools import product

import numpy as np

from quantcli.core.metrics import ErrorStats
from quantcli.core.quantizer import quantize
from quantcli.core.scales import SCALE_KINDS
from quantcli.core.schemes import SCHEMES
from quantcli.core.search.refine import AUTO, searches_for
from quantcli.core.spec import SCHEME_ALIASES, TWO_LEVEL_SEARCHES, QuantSpec
from quantcli.errors import InputError, QualityGateError, UsageError
from quantcli.io.detect import open_input
from quantcli.io.gguf_file import GGUFReader
from quantcli.io.numpy_files import NpyReader
from quantcli.io.quantized_format import QuantizedEntry
from quantcli.io.source import TensorInfo, TensorSource
from quantcli.ops.fingerprint import fingerprint
from quantcli.ops.plan import Plan, parse_rule
from quantcli.ops.sources import open_quantized
from quantcli.ops.tensor import TensorResult, count_nonfinite, process
from quantcli.select import (
    DEFAULT_MIN_ELEMENTS,
    Selection,
    Selector,
    check_patterns,
    matches,
    natural_key,
)

# called after each tensor: (tensor name, its elements, elements of all tensors to measure)
ProgressFn = Callable[[str, int, int], None]

DEFAULT_SCHEMES = ("absmax", "zeropoint")
DEFAULT_BITS = (8, 4)
DEFAULT_GRANULARITIES = ("channel", "group")
DEFAULT_GROUP_SIZES = (128,)
DEFAULT_CALIBRATIONS = ("minmax",)
DEFAULT_SCALE_DTYPES = ("float32",)

# metric -> True when a higher value is worse (sorted first by --sort)
SORT_METRICS: dict[str, bool] = {
    "mse": True,
    "rmse": True,
    "max_abs_error": True,
    "sqnr_db": False,
    "cosine": False,
    "clipped_fraction": True,
    "mse_unclipped": True,
    "bits_per_weight": True,
    "bytes": True,
    "ratio": False,
}

_BASE = QuantSpec()


# -- configurations ------------------------------------------------------------------------


def configs_from_options(
    schemes: Sequence[str] = (),
    bits: Sequence[int] = (),
    granularities: Sequence[str] = (),
    group_sizes: Sequence[int] = (),
    calibrations: Sequence[str] = (),
    percentile: float | None = None,
    axis: int | None = None,
    scale_dtypes: Sequence[str] = (),
    searches: Sequence[str] = (),
    super_blocks: Sequence[int] = (),
    block_size: str | None = None,
) -> list[QuantSpec]:
    """The cartesian product of the options, each empty option taking the default sweep's values.

    The default sweep: absmax and zeropoint x 8 and 4 bits x per channel and per group of 128,
    min-max calibration, float32 scales, the default search (``auto``: mse at 4 bits). A
    field that does not apply to a configuration (group size off group granularity,
    percentile off percentile calibration, axis off channel granularity) is left at its
    default, so equal configurations appear once. Raises
    UsageError for an option that no configuration uses (e.g. --percentile without
    --calibration percentile), so nothing is silently ignored.
    """
    schemes = list(schemes) or list(DEFAULT_SCHEMES)
    bits = list(bits) or list(DEFAULT_BITS)
    granularities = list(granularities) or list(DEFAULT_GRANULARITIES)
    calibrations = list(calibrations) or list(DEFAULT_CALIBRATIONS)
    scale_dtypes = list(scale_dtypes) or list(DEFAULT_SCALE_DTYPES)
    searches = list(searches) or [AUTO]
    if group_sizes and "group" not in granularities:
        raise UsageError(
            f"--group-size {group_sizes[0]} without --granularity group in quant report: "
            "no configuration uses a group size; add --granularity group"
        )
    if percentile is not None and "percentile" not in calibrations:
        raise UsageError(
            f"--percentile {percentile:g} without --calibration percentile in quant report: "
            "no configuration uses it; add --calibration percentile"
        )
    if axis is not None and "channel" not in granularities:
        raise UsageError(
            f"--axis {axis} without --granularity channel in quant report: no configuration "
            "uses a channel axis; add --granularity channel"
        )
    if super_blocks and not any(SCALE_KINDS[d].two_level for d in scale_dtypes):
        raise UsageError(
            f"--super-block {super_blocks[0]} without two-level scales in quant report: no "
            "configuration has super-blocks; add --scale-dtype k6 (or k4, k8)"
        )
    if block_size is not None and "block" not in granularities:
        raise UsageError(
            f"--block-size {block_size} without --granularity block in quant report: no "
            "configuration uses 2-D blocks; add --granularity block"
        )
    group_sizes = list(group_sizes) or list(DEFAULT_GROUP_SIZES)
    out: list[QuantSpec] = []
    for scheme, b, gran, calib, sdtype, search in product(
        schemes, bits, granularities, calibrations, scale_dtypes, searches
    ):
        # a format with fixed bits, granularity, group size or scale dtype takes its own
        # in place of the sweep's values (nf4 is compared at 4 bits whatever --bits says)
        info = SCHEMES[SCHEME_ALIASES.get(scheme, scheme)]
        b = b if b in info.bits else info.default_bits
        gran = gran if gran in info.granularities else info.default_granularity
        sdtype = sdtype if sdtype in info.scale_dtypes else info.default_scale_dtype
        two_level = SCALE_KINDS[sdtype].two_level
        if two_level and (gran != "group" or calib != "minmax"):
            sdtype, two_level = info.default_scale_dtype, False  # two-level scales are per group
        if search == AUTO:
            pass  # each configuration's own (QuantSpec)
        elif two_level and search not in TWO_LEVEL_SEARCHES:
            search = "none"
        # a search a format does not take, or per tensor, is left out of that configuration
        elif search not in searches_for(info.name) or gran == "tensor":
            search = "none"
        if gran == "block" and calib != "minmax":
            continue  # block scales are each block's amax / max

        sizes = group_sizes if gran == "group" else [_BASE.group_size]
        if gran == "group" and info.group_sizes:
            sizes = [gs for gs in sizes if gs in info.group_sizes] or [info.default_group_size]
        for gs, sb in product(sizes, (list(super_blocks) or [None]) if two_level else [None]):
            spec = QuantSpec(
                scheme=scheme,
                bits=int(b),
                granularity=gran,
                axis=axis if (gran == "channel" and axis is not None) else _BASE.axis,
                group_size=gs,
                calibration=calib,
                percentile=(
                    percentile
                    if (calib == "percentile" and percentile is not None)
                    else _BASE.percentile
                ),
                scale_dtype=sdtype,
                search=search,
                super_block=sb,
                block_size=block_size if gran == "block" else None,
            )
            if spec not in out:
                out.append(spec)
    return out


def config_fields(spec: QuantSpec) -> dict:
    """The spec as report columns; fields that do not apply to it are None."""
    return {
        "label": spec.short_label(),
        "scheme": spec.scheme,
        "bits": spec.bits,
        "granularity": spec.granularity,
        "group_size": spec.group_size if spec.granularity == "group" else None,
        "axis": spec.axis if spec.granularity == "channel" else None,
        "calibration": spec.calibration,
        "percentile": spec.percentile if spec.calibration == "percentile" else None,
        "scale_dtype": spec.scale_dtype,
        "super_block": spec.super_block,
        "block_size": "{}x{}".format(*spec.block_size) if spec.block_size else None,
        "search": spec.search,
    }


# -- rows ----------------------------------------------------------------------------------


@dataclass
class Row:
    """The measurements of one configuration on one tensor (``tensor`` set) or on the file.

    config: the configuration asked for, or the spec a ``--rule`` gave the tensor; applied:
    the spec actually used (per-channel falls back to per-tensor on 0-d and 1-D tensors);
    sweep: the configuration of the sweep the row belongs to when a rule changed ``config``
    (None: ``config`` is it). bytes_out: stored bytes of the quantized
    tensors (codes + scales + zero points) plus, for a summary, the kept tensors byte for byte.
    clipped_known: False when the clipped elements cannot be known (``against`` on a
    percentile-calibrated file): clipped_fraction and mse_unclipped are then None.
    """

    config: QuantSpec
    stats: ErrorStats
    bytes_in: int
    bytes_out: int
    quantized_bytes: int
    tensor: str | None = None
    applied: QuantSpec | None = None
    tensors: int = 1
    clipped_known: bool = True
    sweep: QuantSpec | None = None

    @property
    def elements(self) -> int:
        return self.stats.count

    @property
    def mse(self) -> float:
        return self.stats.mse

    @property
    def rmse(self) -> float:
        return self.stats.rmse

    @property
    def max_abs_error(self) -> float:
        return self.stats.max_abs_error

    @property
    def sqnr_db(self) -> float:
        return self.stats.sqnr_db

    @property
    def cosine(self) -> float:
        return self.stats.cosine

    @property
    def clipped_fraction(self) -> float | None:
        return self.stats.clipped_fraction if self.clipped_known else None

    @property
    def mse_unclipped(self) -> float | None:
        return self.stats.mse_unclipped if self.clipped_known else None

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per quantized weight: codes plus scales plus zero points."""
        n = self.stats.count
        return 8.0 * self.quantized_bytes / n if n else 0.0

    @property
    def bytes(self) -> int:
        return self.bytes_out

    @property
    def ratio(self) -> float:
        return self.bytes_in / self.bytes_out if self.bytes_out else 1.0

    def metric(self, name: str) -> float | None:
        return getattr(self, name)

    def as_dict(self) -> dict:
        """Every column of the row: the tensor (per-tensor rows), the config, the metrics."""
        out: dict = {"tensor": self.tensor} if self.tensor is not None else {}
        out.update(config_fields(self.config))
        if self.tensor is not None:
            out["applied_granularity"] = (self.applied or self.config).granularity
        else:
            out["tensors"] = self.tensors
        out.update(self.metric_fields())
        return out

    def metric_fields(self) -> dict:
        """The metric columns, as every report row has them."""
        return {
            "elements": self.elements,
            "mse": self.mse,
            "rmse": self.rmse,
            "max_abs_error": self.max_abs_error,
            "sqnr_db": self.sqnr_db,
            "cosine": self.cosine,
            "clipped_fraction": self.clipped_fraction,
            "mse_unclipped": self.mse_unclipped,
            "bits_per_weight": self.bits_per_weight,
            "bytes": self.bytes,
            "bytes_in": self.bytes_in,
            "ratio": self.ratio,
        }


def sort_rows(rows: Iterable[Row], metric: str | None) -> list[Row]:
    """``rows`` worst first by ``metric`` (stable, so equal values keep the natural name order;
    unknown values last); None keeps the order."""
    rows = list(rows)
    if metric is None:
        return rows
    if metric not in SORT_METRICS:
        raise UsageError(
            f"unknown metric {metric!r} in --sort: choose one of {', '.join(SORT_METRICS)}"
        )
    higher_worse = SORT_METRICS[metric]

    def key(row: Row):
        value = row.metric(metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return (1, 0.0)
        return (0, -value if higher_worse else value)

    return sorted(rows, key=key)


@dataclass
class ReportResult:
    """The outcome of ``sweep`` or ``against``.

    results: one row per tensor x configuration (tensor-major, file order); summary: one row
    per configuration over the whole file; kept: (tensor, reason) of the tensors not quantized.
    against: the quantized file of ``against``; fingerprinted: False when that file records no
    fingerprints (made by an older quant), so only names, shapes and dtypes could be checked.
    """

    input: str
    configs: list[QuantSpec]
    results: list[Row] = field(default_factory=list)
    summary: list[Row] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)
    against: str | None = None
    fingerprinted: bool = True

    @property
    def tensors(self) -> list[str]:
        seen: dict[str, None] = {}
        for row in self.results:
            seen.setdefault(row.tensor, None)
        return list(seen)


def check_sqnr(result: ReportResult, threshold: float) -> None:
    """Raise QualityGateError (exit 3) when any tensor x configuration is below ``threshold`` dB."""
    below = [r for r in result.results if r.sqnr_db < threshold]
    if not below:
        return
    worst = min(below, key=lambda r: r.sqnr_db)
    raise QualityGateError(
        f"SQNR below {threshold:g} dB in tensor {worst.tensor}: {worst.sqnr_db:.2f} dB with "
        f"{worst.config.short_label()} ({len(below)} of {len(result.results)} tensor x "
        "configuration results below); use more bits or a finer granularity, or lower "
        "--fail-below-sqnr"
    )


# -- sweep ---------------------------------------------------------------------------------


def sweep(
    input: str,
    configs: Sequence[QuantSpec],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    min_elements: int = DEFAULT_MIN_ELEMENTS,
    nonfinite: str = "error",
    progress: ProgressFn | None = None,
    rules: Sequence[str] = (),
) -> ReportResult:
    """Measure every configuration in ``configs`` on the tensors of ``input`` compress would
    quantize (same Selector, same defaults), reading each tensor once.

    rules: ``--rule`` texts (``quantcli.ops.plan``): the tensors a rule names get its spec
    (its ``key=value`` options on top of each configuration) or are kept, in every
    configuration; their rows carry that spec as ``config``."""
    configs = _unique(configs)
    if not configs:
        raise UsageError("no configuration in quant report: give at least one --scheme")
    parsed = [parse_rule(text) for text in rules]
    plans = [
        Plan(Selector(c, tuple(include), tuple(exclude), min_elements), parsed, c.to_dict())
        for c in configs
    ]
    with open_input(input) as source:
        result = ReportResult(input=source.label, configs=configs)
        single = isinstance(source, NpyReader)
        infos = source.infos()
        check_patterns([i.name for i in infos], include, exclude, source.label)
        chosen: list[tuple[TensorInfo, list[Selection]]] = []
        decisions = []
        for info in infos:
            selections = [p.choose(info.name, info.dtype, info.shape, single) for p in plans]
            decisions.append((info, selections[0]))
            if selections[0].quantized:
                chosen.append((info, selections))
            else:
                result.kept.append((info.name, selections[0].reason))
        plans[0].check(decisions, source.label, single)  # rules that decide nothing
        total = sum(info.size for info, _ in chosen)
        kept_names = {name for name, _ in result.kept}
        kept_bytes = sum(i.nbytes for i in infos if i.name in kept_names)
        for info, selections in chosen:
            array = source.read(info.name)
            if nonfinite == "keep":
                bad = count_nonfinite(array)
                if bad:
                    result.kept.append((info.name, f"kept: {bad} non-finite values"))
                    kept_bytes += info.nbytes
                    continue
            ruled = plans[0].rule_index(info.name) is not None
            for config, sel in zip(configs, selections):
                spec = sel.spec.for_tensor(info.shape, info.name)
                res = process(info.name, array, Selection(info.name, spec))
                row = _tensor_row(sel.spec if ruled else config, res)
                row.sweep = config if ruled else None
                result.results.append(row)
            del array
            if progress:
                progress(info.name, info.size, total)
        if not result.results:
            raise _nothing_quantized(source.label, result.kept)
        _natural_order(result)
        bytes_in = sum(i.nbytes for i in infos)
        result.summary = [
            _summary(
                config,
                [r for r in result.results if (r.sweep or r.config) == config],
                bytes_in,
                kept_bytes,
            )
            for config in configs
        ]
    return result


def _natural_order(result: ReportResult) -> None:
    """Rows and kept tensors in natural name order; a tensor's rows keep the configs' order."""
    result.results.sort(key=lambda r: natural_key(r.tensor))
    result.kept.sort(key=lambda k: natural_key(k[0]))


def _tensor_row(config: QuantSpec, res: TensorResult) -> Row:
    return Row(
        config=config,
        stats=res.stats,
        bytes_in=res.bytes_in,
        bytes_out=res.bytes_out,
        quantized_bytes=res.bytes_out,
        tensor=res.name,
        applied=res.selection.spec,
    )


def _summary(config: QuantSpec, rows: list[Row], bytes_in: int, kept_bytes: int) -> Row:
    stats = ErrorStats()
    for row in rows:
        stats = stats.merge(row.stats)
    quantized_bytes = sum(r.quantized_bytes for r in rows)
    return Row(
        config=config,
        stats=stats,
        bytes_in=bytes_in,
        bytes_out=quantized_bytes + kept_bytes,
        quantized_bytes=quantized_bytes,
        tensors=len(rows),
        clipped_known=all(r.clipped_known for r in rows),
    )


def _unique(configs: Iterable[QuantSpec]) -> list[QuantSpec]:
    out: list[QuantSpec] = []
    for c in configs:
        if c not in out:
            out.append(c)
    return out


def _nothing_quantized(label: str, kept: list[tuple[str, str]]) -> InputError:
    reasons = sorted({reason for _, reason in kept})
    why = f" ({'; '.join(reasons[:3])})" if reasons else ""
    return InputError(
        f"no tensor to report in {label}: every tensor is kept unquantized{why}; name tensors "
        "with --include or lower --min-elements"
    )


# -- against -------------------------------------------------------------------------------


def against(
    input: str,
    quantized: str,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    progress: ProgressFn | None = None,
) -> ReportResult:
    """Compare the quantized file ``quantized`` (written by quant compress) with ``input``.

    Each quantized tensor is restored from its stored codes, scales and zero points and
    compared with the same tensor of ``input``, so the numbers describe the file as it is.
    ``include`` / ``exclude`` patterns limit the tensors compared.

    First the files must match (``check_made_from``): the same tensor names, shapes and dtypes,
    and the fingerprints compress recorded equal to those of ``input``'s tensors; otherwise
    InputError names the first tensor that differs, since numbers from other weights would
    be meaningless.

    Clipping: a min-max calibrated range holds every value of its group, so nothing is
    clipped. A percentile-calibrated or searched file does not record its clipping range
    (``report`` itself knows it while it quantizes), so clipped_fraction and mse_unclipped are
    None there.
    """
    with open_input(quantized) as qsource, open_input(input) as source:
        if isinstance(qsource, GGUFReader):  # a quantized GGUF: decoded with ggml codecs
            from quantcli.ops.gguf_report import against_gguf

            return against_gguf(source, qsource, include, exclude, progress)
        checkpoint = open_quantized(quantized, qsource, "report --against")
        entries = checkpoint.entries
        qinfos = {i.name: i for i in qsource.infos()}
        originals = {i.name: i for i in source.infos()}
        fingerprinted = check_made_from(source, qsource, entries)
        check_patterns(_logical_names(qsource, entries), include, exclude, qsource.label)
        wanted = [
            e
            for e in entries.values()
            if (not include or any(matches(e.name, p) for p in include))
            and not any(matches(e.name, p) for p in exclude)
        ]
        configs = _file_configs(wanted)
        result = ReportResult(
            input=source.label,
            configs=_unique(configs.values()),
            against=qsource.label,
            fingerprinted=fingerprinted,
        )
        total = sum(originals[e.name].size for e in wanted)
        for entry in wanted:
            x = source.read(entry.name)
            arrays = {name: qsource.read(name) for name, _, _ in entry.stored()}
            x_hat = checkpoint.restore(entry, arrays, qsource.label, dtype=np.float32)
            # a min-max range clips nothing; a searched range is not recorded
            known = entry.spec.calibration == "minmax" and entry.spec.search == "none"
            stored = sum(int(a.nbytes) for a in arrays.values())
            result.results.append(
                Row(
                    config=configs[entry.name],
                    stats=ErrorStats.of(x, x_hat),
                    bytes_in=originals[entry.name].nbytes,
                    bytes_out=stored,
                    quantized_bytes=stored,
                    tensor=entry.name,
                    applied=entry.spec,
                    clipped_known=known,
                )
            )
            del x, x_hat, arrays
            if progress:
                progress(entry.name, originals[entry.name].size, total)
        if not result.results:
            raise InputError(
                f"no tensor to report in {qsource.label}: no quantized tensor matches "
                "--include/--exclude; check the globs against quant inspect"
            )
        result.kept = [
            (name, "kept: not quantized in " + qsource.label)
            for name in _logical_names(qsource, entries)
            if name not in entries
        ]
        bytes_in = sum(i.nbytes for i in originals.values())
        # the bytes of the quantized file that are not the tensors compared
        compared = {n for e in wanted for n, _, _ in e.stored()}
        other_bytes = sum(i.nbytes for n, i in qinfos.items() if n not in compared)
        result.summary = [
            _summary(
                config, [r for r in result.results if r.config == config], bytes_in, other_bytes
            )
            for config in result.configs
        ]
        _natural_order(result)
    return result


def _logical_names(qsource: TensorSource, entries: dict[str, QuantizedEntry]) -> list[str]:
    """The tensors a quantized file stands for, in its order: each quantized tensor once (not
    its scales and zero points) and every kept tensor."""
    owner = {n: e.name for e in entries.values() for n, _, _ in e.stored()}
    out: list[str] = []
    for info in qsource.infos():
        # quant's format stores a tensor's codes under its own name, compressed-tensors under
        # M.weight_packed: either way the tensor is listed once, where its arrays start
        name = owner.get(info.name, info.name)
        if name not in out:
            out.append(name)
    return out


_OTHER_INPUT = "pass the file it was compressed from"


def check_made_from(
    source: TensorSource, qsource: TensorSource, entries: dict[str, QuantizedEntry]
) -> bool:
    """Raise InputError unless the quantized file ``qsource`` was made from ``source``.

    Checked in this order, each naming the first tensor that differs: the same tensor names;
    the same shapes and dtypes (a quantized tensor's original ones, a kept tensor's own); the
    same values, by fingerprint (``quantcli.ops.fingerprint``: recorded by compress for each
    quantized tensor; a kept tensor is stored as it was, so both sides are fingerprinted here).
    Returns False when the quantized tensors carry no fingerprints (files of an older quant):
    then only the kept tensors' values could be compared.
    """
    label, qlabel = source.label, qsource.label
    originals = {i.name: i for i in source.infos()}
    stored = {i.name: i for i in qsource.infos()}
    logical = _logical_names(qsource, entries)
    for name in logical:
        if name not in originals:
            raise InputError(
                f"tensor {name} of {qlabel} is missing in {label}: the quantized file was made "
                f"from another input; {_OTHER_INPUT}"
            )
    names = set(logical)
    for name in originals:
        if name not in names:
            raise InputError(
                f"tensor {name} of {label} is not in {qlabel}: the quantized file was made from "
                f"another input; {_OTHER_INPUT}"
            )
    for name in logical:
        entry = entries.get(name)
        shape, dtype = (
            (entry.shape, entry.dtype) if entry else (stored[name].shape, stored[name].dtype)
        )
        info = originals[name]
        if tuple(info.shape) != tuple(shape) or np.dtype(info.dtype) != np.dtype(dtype):
            what = "quantized" if entry else "kept"
            raise InputError(
                f"tensor {name} differs in {label}: it is {np.dtype(info.dtype)} "
                f"{list(info.shape)} but {qlabel} {what} a {np.dtype(dtype)} {list(shape)}; "
                f"{_OTHER_INPUT}"
            )
    # compressed-tensors checkpoints record no fingerprint (CTEntry has none)
    recorded_of = {name: getattr(e, "fingerprint", None) for name, e in entries.items()}
    fingerprinted = any(f is not None for f in recorded_of.values())
    for name in logical:
        entry = entries.get(name)
        if entry is not None and recorded_of[name] is None:
            continue
        recorded = recorded_of[name] if entry else fingerprint(qsource.read(name))
        if fingerprint(source.read(name)) != recorded:
            raise InputError(
                f"tensor {name} of {label} holds other values than the one {qlabel} was made "
                f"from (their fingerprints differ): the quantized file was made from other "
                f"weights; {_OTHER_INPUT}"
            )
    return fingerprinted


def _file_configs(entries: list[QuantizedEntry]) -> dict[str, QuantSpec]:
    """The configuration each entry belongs to: its spec, except that a per-tensor spec of a
    0-d/1-D tensor joins a per-channel spec otherwise equal to it, since that is how compress
    applies per-channel to such tensors."""
    specs = {e.spec for e in entries}
    out = {}
    for e in entries:
        spec = e.spec
        if spec.granularity == "tensor" and len(e.shape) < 2:
            for other in sorted(specs, key=lambda s: s.axis):
                if (
                    other.granularity == "channel"
                    and replace(other, granularity="tensor", axis=spec.axis, search="none") == spec
                ):
                    spec = other
                    break
        out[e.name] = spec
    return out


# -- histogram -----------------------------------------------------------------------------


@dataclass
class HistMarks:
    """What one configuration does to the histogrammed tensor.

    lo / hi: the clipping range (the widest over the groups when there are several);
    levels: float32 values the codes of the widest group restore to; groups: number of groups.
    """

    row: Row
    lo: float
    hi: float
    levels: np.ndarray
    groups: int

    @property
    def config(self) -> QuantSpec:
        return self.row.config

    @property
    def step(self) -> float:
        return float(self.levels[1] - self.levels[0]) if self.levels.size > 1 else 0.0


@dataclass
class Histogram:
    """counts: int64 (bins,); edges: float64 (bins + 1,), covering the values and every range."""

    input: str
    tensor: str
    shape: tuple[int, ...]
    dtype: np.dtype
    counts: np.ndarray
    edges: np.ndarray
    marks: list[HistMarks]

    @property
    def results(self) -> list[Row]:
        return [m.row for m in self.marks]


def histogram(
    input: str,
    tensor: str,
    configs: Sequence[QuantSpec],
    bins: int = 60,
) -> Histogram:
    """The values of ``tensor`` in ``bins`` equal bins, with every configuration's clipping
    range and quantization levels, and its error on that tensor (as compress would write it)."""
    if bins < 1:
        raise UsageError(f"bins {bins} in quant report --hist: use at least 1")
    configs = _unique(configs)
    with open_input(input) as source:
        info = _hist_info(source, tensor)
        x = source.read(info.name)
        marks = []
        for config in configs:
            spec = Selector(config).spec_for(info.shape).for_tensor(info.shape, info.name)
            res = process(info.name, x, Selection(info.name, spec))
            qt = quantize(x, spec, info.name)
            marks.append(_marks(_tensor_row(config, res), qt))
        x32 = np.asarray(x, np.float32).reshape(-1)
        lo = min([float(x32.min(initial=0))] + [m.lo for m in marks])
        hi = max([float(x32.max(initial=0))] + [m.hi for m in marks])
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        counts, edges = np.histogram(x32, bins=bins, range=(lo, hi))
        return Histogram(
            source.label,
            info.name,
            tuple(info.shape),
            np.dtype(info.dtype),
            counts.astype(np.int64),
            edges,
            marks,
        )


def _hist_info(source: TensorSource, tensor: str) -> TensorInfo:
    infos = source.infos()
    for info in infos:
        if info.name == tensor:
            return info
    names = ", ".join(i.name for i in infos[:5]) + (", ..." if len(infos) > 5 else "")
    raise InputError(
        f"unknown tensor {tensor!r} in {source.label} for --hist: the file holds {names}; "
        "pass one of its tensor names (quant inspect lists them)"
    )


def _marks(row: Row, qt) -> HistMarks:
    lo = qt.clip_lo.reshape(-1)
    hi = qt.clip_hi.reshape(-1)
    widest = int(np.argmax(hi.astype(np.float64) - lo.astype(np.float64)))
    scale = np.float32(np.asarray(qt.scale, np.float32).reshape(-1)[widest])
    qmin, qmax = qt.spec.code_range
    codes = np.arange(qmin, qmax + 1, dtype=np.float32)
    if qt.superblocks is not None:  # two-level: a float min, x_hat = scale * q - min
        levels = codes * scale - np.float32(qt.zero_point.reshape(-1)[widest])
        return HistMarks(row, float(lo.min()), float(hi.max()), levels, int(lo.size))
    if qt.zero_point is not None:
        codes = codes - np.float32(qt.zero_point.reshape(-1)[widest])
    levels = (codes * scale).astype(np.float32)
    return HistMarks(row, float(lo.min()), float(hi.max()), levels, int(lo.size))
