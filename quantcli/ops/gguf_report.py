"""report with ggml types: ``report --type`` sweeps and ``report --against`` a quantized GGUF.

- ``sweep_types``: every type (or llama-quantize mix) asked for, on every tensor llama-quantize
  quantizes, side by side: each tensor is read once, encoded in each type through
  ``quantcli.ops.gguf_compress.encode_tensor`` (what compress writes), decoded and measured;
  with several searches ("none", llama.cpp's reference bytes, and "mse"), each type once
  with each.
- ``against_gguf``: a quantized GGUF file decoded tensor by tensor and compared with the file
  it was made from (its F16/F32 GGUF, or safetensors with the same names).

Both return the ``ReportResult`` of ``quantcli.ops.report``, with ``GGMLConfig`` configs,
so the report's table, JSON, CSV and markdown render them as they render schemes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase

import numpy as np

from quantcli.core.ggml.mixes import Mix, plan_types
from quantcli.core.metrics import ErrorStats
from quantcli.errors import InputError, UsageError
from quantcli.io.detect import open_input
from quantcli.io.gguf_file import GGUFReader, ggml_codec
from quantcli.io.source import TensorSource
from quantcli.ops.gguf_compress import (
    encode_tensor,
    excluded,
    ggml_search,
    model_facts,
    tensor_facts,
)
from quantcli.ops.gguf_plan import TypeRule, rule_types
from quantcli.ops.report import ProgressFn, ReportResult, Row


@dataclass(frozen=True)
class GGMLConfig:
    """A column of a ggml report: a type or mix name (``pure``: one type everywhere) and
    the encoder's search ("none": llama.cpp's reference bytes; "mse": least squares)."""

    name: str
    pure: bool = True
    # on a tensor's row: the type written there when it is not ``name`` (``Q4_K_M>Q6_K``)
    shown: str | None = field(default=None, compare=False)
    search: str = "none"

    @property
    def label(self) -> str:
        """``Q4_K``, or ``Q4_K mse`` with a search."""
        return self.name if self.search == "none" else f"{self.name} {self.search}"

    def short_label(self) -> str:
        if self.shown is None:
            return self.label
        return self.shown if self.search == "none" else f"{self.shown} {self.search}"

    def fields(self) -> dict:
        return {
            "label": self.label,
            "ggml_type": self.name,
            "pure": self.pure,
            "search": self.search,
        }


@dataclass
class GGMLRow(Row):
    """A Row whose config is a GGMLConfig; ``type``: the type the tensor was written in
    (differs from the config's on a fallback or a mix's rule), ``asked``: the type before a
    fallback."""

    type: str | None = None
    asked: str | None = None

    def as_dict(self) -> dict:
        out: dict = {"tensor": self.tensor} if self.tensor is not None else {}
        out.update(self.config.fields())
        if self.tensor is not None:
            out["type"] = self.type
            out["fallback_from"] = self.asked
        else:
            out["tensors"] = self.tensors
        out.update(self.metric_fields())
        return out


def _wanted(name: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    if include and not any(fnmatchcase(name, p) for p in include):
        return False
    return not any(fnmatchcase(name, p) for p in exclude)


def _summary(config: GGMLConfig, rows: list[GGMLRow], bytes_in: int, other: int) -> GGMLRow:
    stats = ErrorStats()
    for row in rows:
        stats = stats.merge(row.stats)
    stored = sum(r.quantized_bytes for r in rows)
    return GGMLRow(
        config=config,
        stats=stats,
        bytes_in=bytes_in,
        bytes_out=stored + other,
        quantized_bytes=stored,
        tensors=len(rows),
        clipped_known=True,
    )


def sweep_types(
    input: str,
    mixes: Sequence[Mix],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    fallback: bool = True,
    progress: ProgressFn | None = None,
    searches: Sequence[str] = ("none",),
    rules: Sequence[TypeRule] = (),
) -> ReportResult:
    """Measure every mix or type of ``mixes``, with each of ``searches`` ("none", "mse"),
    on the tensors of ``input`` that llama-quantize quantizes (and ``include`` /
    ``exclude`` let through), with ``rules`` (``--rule PATTERN=TYPE``) on top of each mix;
    each tensor is read once."""
    seen: dict[str, Mix] = {}
    for mix in mixes:
        seen.setdefault(mix.name + (" pure" if mix.pure and mix.name != mix.default else ""), mix)
    if not seen:
        raise UsageError("no --type in quant report: give at least one ggml type or mix")
    searches = list(dict.fromkeys(ggml_search(s) for s in searches)) or ["none"]
    configs = [
        GGMLConfig(label, mix.pure, search=search)
        for label, mix in seen.items()
        for search in searches
    ]
    mix_of_config = [mix for mix in seen.values() for _ in searches]
    with open_input(input) as source:
        facts = tensor_facts(source)
        model = model_facts(source)
        skip = excluded(facts, tuple(exclude))
        plans = [
            plan_types(
                facts,
                model,
                mix,
                fallback,
                skip,
                rule_types(rules, plan_types(facts, model, mix, True, skip), source.label),
            )
            for mix in mix_of_config
        ]
        result = ReportResult(input=source.label, configs=configs)
        chosen = []
        for i, t in enumerate(facts):
            choices = [plan[i] for plan in plans]
            reason = choices[0].reason
            if not reason and not _wanted(t.name, include, ()):
                reason = "kept: not in --include"
            if not reason and t.type not in ("F32", "F16", "BF16"):
                reason = f"kept: already {t.type}"
            if reason:
                result.kept.append((t.name, reason))
            else:
                chosen.append((t, choices))
        infos = {i.name: i for i in source.infos()}
        total = sum(int(np.prod(t.shape, dtype=np.int64)) for t, _ in chosen)
        for t, choices in chosen:
            x = source.read(t.name)
            for config, choice in zip(configs, choices):
                if choice.retyped:
                    stored, stats = encode_tensor(x, choice.type, t.name, config.search)
                    nbytes = int(stored.nbytes)
                    del stored
                else:  # already in that type: copied, exact
                    stats, nbytes = ErrorStats.of(x, x), infos[t.name].nbytes
                shown = None
                if choice.type != config.name:
                    shown = f"{config.name} -> {choice.type}"
                    if choice.asked:
                        shown += " fallback"
                result.results.append(
                    GGMLRow(
                        config=replace(config, shown=shown),
                        stats=stats,
                        bytes_in=infos[t.name].nbytes,
                        bytes_out=nbytes,
                        quantized_bytes=nbytes,
                        tensor=t.name,
                        type=choice.type,
                        asked=choice.asked,
                    )
                )
            del x
            if progress:
                progress(t.name, int(np.prod(t.shape, dtype=np.int64)), total)
        if not result.results:
            raise InputError(
                f"no tensor to report in {source.label}: llama-quantize's rules and the "
                "globs keep every tensor as it is; check --include/--exclude against quant "
                "inspect"
            )
        measured = {t.name for t, _ in chosen}
        bytes_in = sum(i.nbytes for i in infos.values())
        other = sum(i.nbytes for n, i in infos.items() if n not in measured)
        result.summary = [
            _summary(c, [r for r in result.results if r.config == c], bytes_in, other)
            for c in configs
        ]
    return result


def against_gguf(
    source: TensorSource,
    qsource: GGUFReader,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    progress: ProgressFn | None = None,
) -> ReportResult:
    """Compare the quantized GGUF ``qsource`` with the file it was made from, ``source``
    (both open): every tensor whose type differs (quantized, or another float type) decoded
    and measured; one summary row per ggml type."""
    originals = {i.name: i for i in source.infos()}
    original_types = {t.name: t.type for t in tensor_facts(source)}
    compared, result_kept = [], []
    for t in qsource.tensors():
        kind = t.ggml_type
        if not _wanted(t.name, include, exclude):
            continue
        if not kind.quantized and original_types.get(t.name) == kind.name:
            result_kept.append((t.name, f"kept: {kind.name} in both files"))
            continue
        if kind.quantized:
            ggml_codec(kind, t.name, qsource.label)  # refused before any work
        info = originals.get(t.name)
        if info is None:
            raise InputError(
                f"tensor {t.name} of {qsource.label} is missing in {source.label}: the "
                "quantized file was made from another input; pass the file it was "
                "compressed from"
            )
        if tuple(info.shape) != tuple(t.shape):
            raise InputError(
                f"tensor {t.name} differs in {source.label}: it has shape "
                f"{list(info.shape)} but {qsource.label} holds {list(t.shape)}; pass the "
                "file it was compressed from"
            )
        compared.append(t)
    if not compared:
        raise InputError(
            f"no tensor to report in {qsource.label}: no tensor differs from "
            f"{source.label} in type (or matches --include/--exclude); check the files "
            "with quant inspect"
        )
    types = list(dict.fromkeys(t.ggml_type.name for t in compared))
    configs = {name: GGMLConfig(name) for name in types}
    result = ReportResult(input=source.label, configs=list(configs.values()), against=qsource.label)
    result.kept = result_kept
    total = sum(originals[t.name].size for t in compared)
    for t in compared:
        x = source.read(t.name)
        x_hat = qsource.read_float32(t.name)
        result.results.append(
            GGMLRow(
                config=configs[t.ggml_type.name],
                stats=ErrorStats.of(x, x_hat),
                bytes_in=originals[t.name].nbytes,
                bytes_out=t.nbytes,
                quantized_bytes=t.nbytes,
                tensor=t.name,
                type=t.ggml_type.name,
            )
        )
        del x, x_hat
        if progress:
            progress(t.name, originals[t.name].size, total)
    bytes_in = sum(i.nbytes for i in originals.values())
    names = {t.name for t in compared}
    other = sum(t.nbytes for t in qsource.tensors() if t.name not in names)
    result.summary = [
        _summary(c, [r for r in result.results if r.config == c], bytes_in, other)
        for c in configs.values()
    ]
    return result
