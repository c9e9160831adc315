"""The quantized safetensors format (docs/FORMAT.md is the specification).

For each quantized tensor NAME the file holds:

- NAME: the codes. bits == 8: the scheme's code dtype (int8 for absmax and fullrange, uint8
  for zeropoint, float8_e4m3fn / float8_e5m2 for fp8) of the original shape.
  bits < 8: uint8 packed along the last axis (``quantcli.core.packing``), shape
  ``shape[:-1] + (ceil(shape[-1] * bits / 8),)`` (a 0-d tensor packs as ``(1,)``).
- NAME.scale: the scales, stored as the spec's scale dtype says (``quantcli.core.scales``:
  float32/float16/bfloat16, uint8 E8M0 exponents, float8_e4m3fn), of
  ``param_shape(shape, spec)``.
- NAME.zero_point: uint8 zero points of the same shape (zeropoint scheme only).
- NAME.tensor_scale: float32 (1,), the scale per tensor of nvfp4.
- with two-level scales (``k4``, ``k6``, ``k8``) in place of NAME.scale and
  NAME.zero_point: NAME.scale_codes and NAME.min_codes, uint8 k-bit codes per group packed
  along the last axis as the codes are, ``shape[:-1] + (packed_length(G, k),)``, and
  NAME.super_scale and NAME.super_min, float16 ``shape[:-1] + (S,)``, one per super-block
  (``quantcli.core.scales.SuperBlockScales``).

Version 2 adds the schemes beyond absmax and zeropoint, their scale dtypes and
NAME.tensor_scale; version 3 adds two-level scales; version 4 adds 2-D block scales
(``granularity`` "block", ``block_size`` [rows, columns]; NAME.scale of shape
``(ceil(rows / R), ceil(columns / C))``). A file is written with the oldest
version that holds it, so older quant versions still read what they can.

Kept tensors are stored under their own name, byte for byte. The header's ``__metadata__``
holds ``quant.format`` = "quantcli", ``quant.format_version``, ``quant.producer``,
``quant.tensors`` (a JSON object: NAME -> spec fields + original ``shape`` and ``dtype``, and
optionally the source tensor's ``fingerprint``),
``quant.source_metadata`` (the input file's own metadata, as JSON, restored by decompress)
and ``quant.source_format`` (npy, npz, safetensors or gguf). A sharded output repeats these keys in
its index's ``metadata`` for all of its tensors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import ml_dtypes
import numpy as np

from quantcli import __version__
from quantcli.core.layout import param_shape
from quantcli.core.packing import pack, packed_length, unpack
from quantcli.core.scales import SCALE_KINDS, SuperBlockScales
from quantcli.core.spec import QuantSpec
from quantcli.errors import QuantError, QuantizedFormatError
from quantcli.io.dtypes import is_float, numpy_dtype, safetensors_dtype

if TYPE_CHECKING:
    from quantcli.core.quantizer import QuantizedTensor

FORMAT_NAME = "quantcli"
FORMAT_VERSION = "4"
READ_VERSIONS = ("1", "2", "3", "4")
VERSION_1_SCHEMES = ("absmax", "zeropoint")
SCALE_SUFFIX = ".scale"
ZERO_POINT_SUFFIX = ".zero_point"
TENSOR_SCALE_SUFFIX = ".tensor_scale"
# two-level scales (version 3)
SCALE_CODES_SUFFIX = ".scale_codes"
MIN_CODES_SUFFIX = ".min_codes"
SUPER_SCALE_SUFFIX = ".super_scale"
SUPER_MIN_SUFFIX = ".super_min"

KEY_FORMAT = "quant.format"
KEY_VERSION = "quant.format_version"
KEY_PRODUCER = "quant.producer"
KEY_TENSORS = "quant.tensors"
KEY_SOURCE_METADATA = "quant.source_metadata"
KEY_SOURCE_FORMAT = "quant.source_format"


@dataclass(frozen=True)
class QuantizedEntry:
    """What the metadata says of one quantized tensor."""

    name: str
    spec: QuantSpec
    shape: tuple[int, ...]
    dtype: np.dtype  # the original dtype, restored by default
    fingerprint: str | None = None  # of the source tensor (quantcli.ops.fingerprint); optional

    def to_json(self) -> dict:
        out = {
            **self.spec.to_dict(),
            "shape": list(self.shape),
            "dtype": safetensors_dtype(self.dtype),
        }
        if self.fingerprint is not None:
            out["fingerprint"] = self.fingerprint
        return out

    def stored(self) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
        """(name, dtype, shape) of the arrays this tensor is stored as, in write order."""
        spec = self.spec
        if spec.bits == 8:
            codes = (spec.format.code_dtype, self.shape or (1,))
        else:
            lead, last = (self.shape[:-1], self.shape[-1]) if self.shape else ((), 1)
            codes = (np.dtype(np.uint8), lead + (packed_length(last, spec.bits),))
        pshape = param_shape(self.shape, spec)
        if spec.two_level:
            return [(self.name, *codes), *self._two_level_arrays(pshape)]
        scale_dtype = SCALE_KINDS[spec.scale_dtype].dtype
        out = [(self.name, *codes), (self.name + SCALE_SUFFIX, scale_dtype, pshape)]
        if spec.has_zero_point:
            out.append((self.name + ZERO_POINT_SUFFIX, np.dtype(np.uint8), pshape))
        if spec.format.tensor_scale:
            out.append((self.name + TENSOR_SCALE_SUFFIX, np.dtype(np.float32), (1,)))
        return out

    def _two_level_arrays(self, pshape) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
        lead, groups = pshape[:-1], pshape[-1]
        k = SCALE_KINDS[self.spec.scale_dtype].level_bits
        codes = lead + (packed_length(groups, k),)
        supers = lead + (-(-groups // self.spec.super_block),)
        u8, f16 = np.dtype(np.uint8), np.dtype(np.float16)
        if not self.spec.has_zero_point:
            return [
                (self.name + SCALE_CODES_SUFFIX, u8, codes),
                (self.name + SUPER_SCALE_SUFFIX, f16, supers),
            ]
        return [
            (self.name + SCALE_CODES_SUFFIX, u8, codes),
            (self.name + MIN_CODES_SUFFIX, u8, codes),
            (self.name + SUPER_SCALE_SUFFIX, f16, supers),
            (self.name + SUPER_MIN_SUFFIX, f16, supers),
        ]


def entry_of(name: str, qt: QuantizedTensor) -> QuantizedEntry:
    return QuantizedEntry(name=name, spec=qt.spec, shape=tuple(qt.shape), dtype=np.dtype(qt.dtype))


def stored_arrays(name: str, qt: QuantizedTensor) -> list[tuple[str, np.ndarray]]:
    """The arrays ``qt`` is written as: codes (packed when bits < 8), scales, zero points."""
    codes = qt.codes if qt.spec.bits == 8 or qt.packed else pack(qt.codes, qt.spec.bits)
    codes = codes.reshape(1) if codes.ndim == 0 else codes  # a 0-d tensor is stored as (1,)
    if qt.superblocks is not None:
        sb, k = qt.superblocks, SCALE_KINDS[qt.spec.scale_dtype].level_bits
        lead = tuple(qt.shape[:-1])  # a 0-d tensor: one row
        codes_shape = lead + (packed_length(sb.scale_codes.shape[-1], k),)
        supers = lead + sb.d.shape[-1:]
        out = [
            (name, codes),
            (name + SCALE_CODES_SUFFIX, pack(sb.scale_codes, k).reshape(codes_shape)),
            (name + MIN_CODES_SUFFIX, None),
            (name + SUPER_SCALE_SUFFIX, sb.d.reshape(supers)),
            (name + SUPER_MIN_SUFFIX, None),
        ]
        if sb.min_codes is not None:
            out[2] = (name + MIN_CODES_SUFFIX, pack(sb.min_codes, k).reshape(codes_shape))
            out[4] = (name + SUPER_MIN_SUFFIX, sb.dmin.reshape(supers))
        return [(n, a) for n, a in out if a is not None]
    out = [(name, codes), (name + SCALE_SUFFIX, qt.scale)]
    if qt.zero_point is not None:
        out.append((name + ZERO_POINT_SUFFIX, qt.zero_point))
    if qt.tensor_scale is not None:
        out.append((name + TENSOR_SCALE_SUFFIX, qt.tensor_scale))
    return out


def _shown(name: str) -> str:
    """A tensor name for a one-line message: as it is, or escaped when it holds control
    characters (names come from the file's metadata: a newline would break the line)."""
    return name if name.isprintable() else repr(name)


def header_metadata(
    entries: list[QuantizedEntry], source_metadata: dict[str, str], source_format: str
) -> dict[str, str]:
    """The ``__metadata__`` of a quantized file holding ``entries``.

    source_format: ``npy``, ``npz``, ``safetensors`` or ``gguf``, so decompress can default to
    it (to safetensors for gguf).
    """
    return {
        KEY_FORMAT: FORMAT_NAME,
        KEY_VERSION: format_version(entries),
        KEY_PRODUCER: f"quant {__version__}",
        KEY_TENSORS: json.dumps({e.name: e.to_json() for e in entries}, separators=(",", ":")),
        KEY_SOURCE_METADATA: json.dumps(source_metadata, separators=(",", ":"), sort_keys=True),
        KEY_SOURCE_FORMAT: source_format,
    }


def format_version(entries: list[QuantizedEntry]) -> str:
    """The oldest version that holds ``entries``: 1 when they all use absmax or zeropoint
    with one-level scales, 4 when any has 2-D block scales, 3 when any has two-level scales,
    else 2."""
    if any(e.spec.granularity == "block" for e in entries):
        return "4"
    if any(e.spec.two_level for e in entries):
        return "3"
    return "1" if all(e.spec.scheme in VERSION_1_SCHEMES for e in entries) else "2"


def is_quantized(metadata: dict[str, str]) -> bool:
    return metadata.get(KEY_FORMAT) == FORMAT_NAME


def read_entries(metadata: dict[str, str], label: str) -> dict[str, QuantizedEntry]:
    """Parse and check ``quant.tensors`` of a quantized file's metadata."""
    version = metadata.get(KEY_VERSION)
    if version not in READ_VERSIONS:
        raise QuantizedFormatError(
            f"unknown quantized format version {version!r} in {label}: this quant reads "
            f"versions {' and '.join(READ_VERSIONS)}; upgrade quant or re-run quant compress"
        )
    try:
        raw = json.loads(metadata.get(KEY_TENSORS, "{}"))
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        entries = {}
        for name, item in raw.items():
            spec = QuantSpec.from_dict(item)
            if version == "1" and spec.scheme not in VERSION_1_SCHEMES:
                raise ValueError(f"scheme {spec.scheme} of {_shown(name)} needs version 2")
            if version in ("1", "2") and spec.two_level:
                raise ValueError(f"{spec.scale_dtype} scales of {_shown(name)} need version 3")
            if version in ("1", "2", "3") and spec.granularity == "block":
                raise ValueError(f"block scales of {_shown(name)} need version 4")
            shape = tuple(int(n) for n in item["shape"])
            if any(n < 0 for n in shape):
                raise ValueError(f"negative dimension in {_shown(name)}")
            dtype = numpy_dtype(item["dtype"])
            if not is_float(dtype):  # only float tensors are ever quantized
                raise ValueError(f"dtype {item['dtype']} of {_shown(name)} is not a float dtype")
            fingerprint = item.get("fingerprint")  # optional: older files have none
            if fingerprint is not None and not isinstance(fingerprint, str):
                raise ValueError(f"fingerprint of {_shown(name)} is not a string")
            entries[name] = QuantizedEntry(name, spec, shape, dtype, fingerprint)
    except QuantError as exc:
        raise QuantizedFormatError(
            f"bad quant.tensors metadata in {label}: {exc}; the file is damaged, "
            "re-run quant compress"
        ) from None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise QuantizedFormatError(
            f"bad quant.tensors metadata in {label}: {exc}; the file is damaged, "
            "re-run quant compress"
        ) from None
    return entries


def source_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """The input file's own metadata, as recorded by compress."""
    try:
        data = json.loads(metadata.get(KEY_SOURCE_METADATA, "{}"))
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def source_format(metadata: dict[str, str]) -> str:
    """The input format compress read (npy, npz, safetensors or gguf)."""
    return metadata.get(KEY_SOURCE_FORMAT, "safetensors")


def check_stored(entry: QuantizedEntry, infos: dict, label: str) -> None:
    """Refuse a file whose stored arrays do not match what ``entry`` says they are.

    infos: name -> TensorInfo of the file's tensors.
    """
    for name, dtype, shape in entry.stored():
        info = infos.get(name)
        where = f"tensor {_shown(name)} of {label}"
        if info is None:
            raise QuantizedFormatError(
                f"missing {_shown(name)} in {label}: the metadata says {_shown(entry.name)} is "
                f"quantized with {entry.spec.label()}, which stores it; the file is damaged, "
                "re-run quant compress"
            )
        if np.dtype(info.dtype) != dtype or tuple(info.shape) != tuple(shape):
            raise QuantizedFormatError(
                f"mismatch in {where}: stored as {info.dtype} {list(info.shape)} but "
                f"{entry.spec.label()} of shape {list(entry.shape)} needs {dtype} {list(shape)}; "
                "the file is damaged, re-run quant compress"
            )
    if entry.spec.two_level and entry.name + SCALE_SUFFIX in infos:
        raise QuantizedFormatError(
            f"unexpected {_shown(entry.name + SCALE_SUFFIX)} in {label}: "
            f"{entry.spec.scale_dtype} scales are stored as codes and super-block scales; "
            "the file is damaged, re-run quant compress"
        )
    if not entry.spec.has_zero_point and entry.name + ZERO_POINT_SUFFIX in infos:
        raise QuantizedFormatError(
            f"unexpected {_shown(entry.name + ZERO_POINT_SUFFIX)} in {label}: "
            f"{entry.spec.scheme} has no zero points; the file is damaged, re-run quant compress"
        )


def restore(entry: QuantizedEntry, arrays: dict, label: str, dtype=None) -> np.ndarray:
    """Floats of ``entry`` from its stored arrays, checked; in ``dtype`` (default: original)."""
    spec = entry.spec
    codes = unpacked_codes(entry, arrays[entry.name], label)
    if spec.two_level:
        scale, minimum = two_level_values(entry, arrays, label)
        from quantcli.core.quantizer import dequantize

        target = np.dtype(entry.dtype if dtype is None else dtype)
        x_hat = dequantize(codes, scale, minimum, spec)
        if target.itemsize < 4 and x_hat.size:
            _fit_range(x_hat, target, float(np.abs(scale).max()), entry.name, label)
        return x_hat if target == np.float32 else x_hat.astype(target)
    scale = np.asarray(arrays[entry.name + SCALE_SUFFIX])
    kind = SCALE_KINDS[spec.scale_dtype]
    tensor_scale = None
    if spec.format.tensor_scale:
        tensor_scale = np.asarray(arrays[entry.name + TENSOR_SCALE_SUFFIX], np.float32)
        if not (np.isfinite(tensor_scale).all() and (tensor_scale > 0).all()):
            raise QuantizedFormatError(
                f"invalid tensor scale in tensor {_shown(entry.name)} of {label}: it must be "
                "finite and positive; the file is damaged, re-run quant compress"
            )
    if not spec.format.valid_scales(kind.load(scale)):
        raise QuantizedFormatError(
            f"invalid scales in tensor {_shown(entry.name)} of {label}: {spec.scheme} scales "
            "must be finite and nonzero (positive but for fullrange); the file is damaged, "
            "re-run quant compress"
        )
    zp = arrays.get(entry.name + ZERO_POINT_SUFFIX) if spec.has_zero_point else None
    if zp is not None and int(np.max(zp, initial=0)) > spec.code_range[1]:
        raise QuantizedFormatError(
            f"zero point out of range in tensor {_shown(entry.name)} of {label}: above "
            f"{spec.code_range[1]} for {spec.bits} bits; the file is damaged, re-run quant compress"
        )
    from quantcli.core.quantizer import dequantize  # the numerics load only when restoring

    target = np.dtype(entry.dtype if dtype is None else dtype)
    x_hat = dequantize(codes, scale, zp, spec, tensor_scale=tensor_scale)
    if target.itemsize < 4 and x_hat.size:
        step = spec.format.effective_scale(kind.load(scale), tensor_scale)
        _fit_range(x_hat, target, float(np.abs(step).max()), entry.name, label)
    return x_hat if target == np.float32 else x_hat.astype(target)


def two_level_values(entry: QuantizedEntry, arrays: dict, label: str):
    """The float32 group scales and mins (``param_shape``) of a two-level entry, from its
    stored codes and super-block pairs, checked."""
    spec, name = entry.spec, entry.name
    pshape = param_shape(entry.shape, spec)
    k = SCALE_KINDS[spec.scale_dtype].level_bits
    mins = spec.has_zero_point
    pairs = [None, None]
    for i, suffix in enumerate((SUPER_SCALE_SUFFIX, SUPER_MIN_SUFFIX)[: 1 + mins]):
        d = np.asarray(arrays[name + suffix])
        if not (np.isfinite(d).all() and (d >= 0).all()):
            raise QuantizedFormatError(
                f"invalid super-block scale in tensor {_shown(name)} of {label}: "
                f"{_shown(name + suffix)} must be finite and >= 0; the file is damaged, "
                "re-run quant compress"
            )
        pairs[i] = d.reshape(pshape[:-1] + d.shape[-1:])
    codes = [
        unpack(arrays[name + suffix], k, pshape[-1], False).reshape(pshape)
        for suffix in (SCALE_CODES_SUFFIX, MIN_CODES_SUFFIX)[: 1 + mins]
    ] + [None]
    sb = SuperBlockScales(pairs[0], codes[0], spec.super_block, pairs[1], codes[1])
    return sb.values()


def _fit_range(x_hat: np.ndarray, target: np.dtype, step: float, name: str, label: str) -> None:
    """Saturate float32 ``x_hat`` at ``target``'s largest value when it passes it by at most a
    quantization step (rounding at the top of the range); refuse to restore it to inf when it
    passes it by more (the scales do not fit the dtype)."""
    limit = float(ml_dtypes.finfo(target).max)
    biggest = max(float(x_hat.max()), -float(x_hat.min()))  # no |x| temporary of x's size
    if biggest <= limit:
        return
    if biggest > limit + step:
        raise QuantizedFormatError(
            f"restored values beyond {target} in tensor {_shown(name)} of {label}: the largest "
            f"is {biggest:.4g}, {target} stops at {limit:.4g}; restore with --dtype float32"
        )
    np.clip(x_hat, -limit, limit, out=x_hat)


def unpacked_codes(entry: QuantizedEntry, stored: np.ndarray, label: str) -> np.ndarray:
    """Codes of ``entry`` unpacked to int8/uint8 of its shape, with their range checked."""
    spec = entry.spec
    qmin, qmax = spec.code_range
    if spec.bits == 8:
        codes = np.asarray(stored)
    else:
        last = entry.shape[-1] if entry.shape else 1
        codes = unpack(stored, spec.bits, last, spec.signed)
    codes = codes.reshape(entry.shape)
    if not spec.format.valid_codes(codes, spec):
        what = f"lie in [{qmin}, {qmax}]" if spec.format.integer else "are finite values"
        raise QuantizedFormatError(
            f"code out of range in tensor {_shown(entry.name)} of {label}: {spec.label()} codes "
            f"{what}; the file is damaged, re-run quant compress"
        )
    return codes
