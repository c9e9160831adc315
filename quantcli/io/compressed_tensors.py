"""The compressed-tensors container: what transformers and vLLM load (docs/EXPORT.md).

A quantized Linear weight ``M.weight`` of shape [out, in] is stored in one of four formats
(``quantization_config`` in config.json names it; ``quantization_config`` builds it):

- ``pack-quantized`` (int, 4 and 8 bits; quant's absmax, zeropoint, fullrange,
  fullrange-ct): ``M.weight_packed`` int32 [out, ceil(in * b / 32)], codes signed, offset by
  2**(b-1) to unsigned and packed least significant bits first along the row (element i of a
  row at bits [i*b, (i+1)*b) of the row's little-endian 32-bit words, each row padded with
  zero bits to a whole word: codes [-8, -7, 0, 1, 2, 3, 6, 7] at 4 bits are the single word
  0xFEBA9810); ``M.weight_scale`` in the model's float dtype, [out, 1] (channel) or
  [out, in / group]; ``M.weight_shape`` int64 [2]; with zero points ``M.weight_zero_point``,
  signed codes packed the same way along dim 0, int32 [ceil(out * b / 32), groups].
- ``naive-quantized`` (fp8, E4M3, weight only): ``M.weight`` float8_e4m3fn [out, in] and
  ``M.weight_scale`` in the model's dtype, [out, 1] or [1] (per tensor).
- ``nvfp4-pack-quantized`` (nvfp4): ``M.weight_packed`` uint8 [out, in / 2], two E2M1 codes
  a byte, the even element in the low nibble; ``M.weight_scale`` float8_e4m3fn [out, in / 16];
  ``M.weight_global_scale`` float32 [1] (quant's tensor scale, 448 * 6 / amax).
- ``mxfp4-pack-quantized`` (mxfp4-ct, mxfp4): the same codes, ``M.weight_scale`` uint8 E8M0
  exponents [out, in / 32].

quant's schemes map onto these without changing a dequantized value: ``absmax`` codes lie in
[-qmax, qmax], a subset of the signed range; ``zeropoint`` codes 0..2**b-1 and zero points
shift by -2**(b-1) to the signed convention, ``(q - zp)`` unchanged; quant's 4-bit floats are
packed two a byte exactly as the library packs them. Only 4 and 8 bits of int are written and
read: compressed-tensors 0.18 changed the 3/5/6/7-bit layout to cross-word packing, so those
widths do not load the same everywhere.

Each container format is one ``CTFormat``; ``FORMATS`` maps quant's schemes onto them. The
reading side turns a checkpoint back into ``CTEntry`` objects that decompress, inspect and
report restore like quant's own entries.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace

import ml_dtypes
import numpy as np

from quantcli.core.layout import param_shape
from quantcli.core.packing import pack, unpack
from quantcli.core.scales import SCALE_KINDS
from quantcli.core.schemes.base import SCALE_NUMPY_DTYPES
from quantcli.core.spec import QuantSpec
from quantcli.errors import QuantizedFormatError, SpecError
from quantcli.io.quantized_format import SCALE_SUFFIX, TENSOR_SCALE_SUFFIX, ZERO_POINT_SUFFIX

QUANT_METHOD = "compressed-tensors"
PACK_QUANTIZED = "pack-quantized"
NAIVE_QUANTIZED = "naive-quantized"
FLOAT_QUANTIZED = "float-quantized"
NVFP4_PACK_QUANTIZED = "nvfp4-pack-quantized"
MXFP4_PACK_QUANTIZED = "mxfp4-pack-quantized"
MIXED_PRECISION = "mixed-precision"
SUPPORTED_BITS = (4, 8)

PACKED = "_packed"
SCALE = "_scale"
SHAPE = "_shape"
ZERO_POINT = "_zero_point"
GLOBAL_SCALE = "_global_scale"

# the float dtypes scales are stored in: the model's own (vLLM expects scales in model dtype)
_SCALE_DTYPES = {
    np.dtype(np.float32): "float32",
    np.dtype(np.float16): "float16",
    np.dtype(ml_dtypes.bfloat16): "bfloat16",
}
_LINEAR = ("Linear", "CompressedLinear")
_FIX = "the checkpoint is damaged; export it again"


# -- layout: int32 packing ----------------------------------------------------------------


def packed_words(n: int, bits: int) -> int:
    """int32 words a row of ``n`` codes of ``bits`` bits takes."""
    return -(-n * bits // 32)


def pack_int32(offset_codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack uint8 ``offset_codes`` [rows, n] (signed codes + 2**(b-1), so 0..2**b-1) into
    int32 [rows, packed_words(n, bits)], element i of a row at bits i*b from the LSB."""
    rows, n = offset_codes.shape
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"pack_int32: {bits} bits; only {SUPPORTED_BITS} are written")
    return _words(pack(np.asarray(offset_codes, np.uint8), bits), rows, n, bits)


def _words(row_bytes: np.ndarray, rows: int, n: int, bits: int) -> np.ndarray:
    """uint8 [rows, ceil(n*b/8)] row streams -> int32 [rows, words], rows zero-padded."""
    width = packed_words(n, bits) * 4
    if row_bytes.shape[1] != width:
        padded = np.zeros((rows, width), np.uint8)
        padded[:, : row_bytes.shape[1]] = row_bytes
        row_bytes = padded
    return np.ascontiguousarray(row_bytes).view("<i4").astype(np.int32, copy=False)


def unpack_int32(packed: np.ndarray, bits: int, n: int) -> tuple[np.ndarray, bool]:
    """int32 [rows, words] -> (int8 signed codes [rows, n], whether every padding bit is 0)."""
    packed = np.ascontiguousarray(packed).astype("<i4", copy=False)
    rows = packed.shape[0]
    stream = packed.view(np.uint8).reshape(rows, packed.shape[1] * 4)
    used = -(-n * bits // 8)
    clean = not stream[:, used:].any()
    if bits == 8:
        offset = stream[:, :n]
    else:
        if n % 2 and rows:  # the unused high nibble of the last byte
            clean = clean and not (stream[:, used - 1] >> 4).any()
        offset = unpack(stream[:, :used], bits, n, signed=False)
    codes = (offset.astype(np.int16) - (1 << (bits - 1))).astype(np.int8)
    return codes, clean


# -- writing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CTFormat:
    """One compressed-tensors format: what it holds and how its arrays are laid out.

    layout: ``int32`` (codes packed into int32 words, ``M.weight_packed`` with
    ``M.weight_shape``), ``weight`` (one code per element under ``M.weight`` itself, as
    FP8 is stored) or ``nibbles`` (two E2M1 codes a byte, even element in the low nibble,
    ``M.weight_packed`` uint8 [out, in / 2]). scale_dtype: the stored scales' kind, or None
    for the model's own float dtype. group_strategy: the library's ``strategy`` for quant's
    groups (NVFP4's groups sit under a per-tensor scale: ``tensor_group``).
    """

    name: str
    type: str  # QuantizationArgs.type: "int" or "float"
    bits: tuple[int, ...]
    granularities: tuple[str, ...]
    layout: str
    scale_dtype: str | None = None
    group_strategy: str = "group"


PACK = CTFormat(PACK_QUANTIZED, "int", SUPPORTED_BITS, ("channel", "group"), "int32")
# FP8 weight-only: what the library's own compressor names it ("float-quantized" is the
# name it gives FP8 with quantized activations; both load the same way)
# block: DeepSeek-style 2-D tiles (``block_structure`` [R, C]; llm-compressor's FP8_BLOCK)
FP8 = CTFormat(NAIVE_QUANTIZED, "float", (8,), ("tensor", "block", "channel"), "weight")
NVFP4 = CTFormat(NVFP4_PACK_QUANTIZED, "float", (4,), ("group",), "nibbles", "e4m3", "tensor_group")
MXFP4 = CTFormat(MXFP4_PACK_QUANTIZED, "float", (4,), ("group",), "nibbles", "e8m0")

FORMATS = {
    "absmax": PACK,
    "zeropoint": PACK,
    "zeropoint-ct": PACK,
    "fullrange": PACK,
    "fullrange-ct": PACK,
    "fp8": FP8,
    "nvfp4": NVFP4,
    "mxfp4-ct": MXFP4,
    "mxfp4": MXFP4,  # the same bytes; only the exponent chosen for a block may differ
}
# schemes the format cannot hold, and the nearest spec that works
_REFUSED = {
    "nf4": "compressed-tensors has no NF4 format (a 16-value codebook); use --scheme nvfp4 "
    "(4-bit floats in blocks of 16, the closest it holds) or --scheme absmax --bits 4 "
    "--granularity group --group-size 64",
    "fp8-e5m2": "compressed-tensors stores FP8 weights as E4M3 only; use --scheme fp8",
}
_TORCH_SCALE_DTYPES = {"e4m3": "torch.float8_e4m3fn", "e8m0": "torch.uint8"}
# the library's compressor writes these scales where quant writes 1 (a group of zeros)
_LIBRARY_ZERO_SCALE = ("fullrange-ct", "zeropoint-ct", "fp8")


def scale_dtype_for(dtype: np.dtype) -> str:
    """The scale dtype a tensor of ``dtype`` gets: its own float dtype (float32 otherwise)."""
    return _SCALE_DTYPES.get(np.dtype(dtype), "float32")


def export_spec(spec: QuantSpec, dtype: np.dtype, name: str, shape: tuple[int, ...]) -> QuantSpec:
    """``spec`` as written for tensor ``name`` (``dtype``, ``shape``): with its scales in the
    model's dtype where the format stores them so, checked (``check_spec``)."""
    fmt = _format_for(spec, f"tensor {name}")
    if spec.two_level:
        raise SpecError(
            f"{spec.scale_dtype} scales in tensor {name}: compressed-tensors has no two-level "
            "(super-block) scales; drop --scale-dtype for scales in the model's dtype, or "
            "write quant's own format with --format quant"
        )
    if fmt.scale_dtype is None:
        own = scale_dtype_for(dtype)
        if spec.scale_dtype not in ("float32", own):
            raise SpecError(
                f"{spec.scale_dtype} scales in tensor {name}: compressed-tensors stores scales "
                f"in the model's dtype ({own}); drop --scale-dtype"
            )
        spec = replace(spec, scale_dtype=own)
    check_spec(spec, name, shape)
    return spec


def _format_for(spec: QuantSpec, where: str) -> CTFormat:
    fmt = FORMATS.get(spec.scheme)
    if fmt is None:
        why = _REFUSED.get(spec.scheme) or (
            f"compressed-tensors holds {', '.join(FORMATS)}; use one of them or --format quant"
        )
        raise SpecError(f"scheme {spec.scheme} in {where}: {why}")
    return fmt


def check_spec(spec: QuantSpec, name: str, shape: tuple[int, ...]) -> None:
    """Refuse a spec compressed-tensors cannot hold for tensor ``name`` of ``shape``, naming
    the nearest spec that works."""
    where = f"tensor {name}"
    fmt = _format_for(spec, where)
    if spec.bits not in fmt.bits:
        nearest = min(fmt.bits, key=lambda b: (abs(b - spec.bits), -b))
        raise SpecError(
            f"{spec.bits}-bit codes in {where}: compressed-tensors {fmt.name} is written for "
            f"{' and '.join(map(str, fmt.bits))} bits only (other widths changed layout between "
            f"library versions); use --bits {nearest}, or --format quant"
        )
    if len(shape) != 2:
        raise SpecError(
            f"{len(shape)}-D weight {list(shape)} in {where}: compressed-tensors quantizes "
            f"Linear weights [out, in]; keep it with --exclude '{name}'"
        )
    if spec.granularity not in fmt.granularities:
        if spec.granularity == "tensor":
            raise SpecError(
                f"per-tensor scale in {where}: quant writes compressed-tensors {fmt.name} per "
                "channel or per group (what vLLM's kernels take); use --granularity channel"
            )
        raise SpecError(
            f"{spec.granularity} scales in {where}: compressed-tensors {fmt.name} scales "
            f"{' or '.join(fmt.granularities)}; use --granularity {fmt.granularities[-1]}"
        )
    if spec.granularity == "channel" and spec.axis not in (0, -2):
        raise SpecError(
            f"channel axis {spec.axis} in {where}: compressed-tensors scales the output rows "
            "(axis 0) of a Linear weight; use --axis 0"
        )
    if spec.granularity == "group" and shape[1] % spec.group_size:
        if fmt.layout == "nibbles":
            raise SpecError(
                f"row length {shape[1]} in {where}: {spec.scheme} has one scale per "
                f"{spec.group_size} elements, which does not divide it, and compressed-tensors "
                f"has no ragged last block; keep it with --exclude '{name}'"
            )
        fits = [g for g in (128, 64, 32, 16) if shape[1] % g == 0 and g <= shape[1]]
        hint = f"--group-size {fits[0]}" if fits else "--granularity channel"
        raise SpecError(
            f"group size {spec.group_size} in {where}: it does not divide the row length "
            f"{shape[1]}, and compressed-tensors has no ragged last group; use {hint}"
        )


def weight_args(spec: QuantSpec) -> dict:
    """The ``weights`` QuantizationArgs of ``spec``: only keys the library's pydantic model
    knows (it rejects unknown ones), for int and FP8 in every version from 0.9 on. NVFP4 and
    MXFP4 also name their scales' dtype, as the library's own NVFP4A16 and MXFP4A16 schemes
    do (its observer applies the MX exponent rule only to ``scale_dtype`` uint8)."""
    fmt = FORMATS[spec.scheme]
    group = spec.granularity == "group"
    args = {
        "num_bits": spec.bits,
        "type": fmt.type,
        "symmetric": not spec.has_zero_point,
        "strategy": fmt.group_strategy if group else spec.granularity,
        "group_size": spec.group_size if group else None,
        "dynamic": False,
        "actorder": None,
    }
    if spec.granularity == "block":
        args["block_structure"] = list(spec.block_size)
    if fmt.scale_dtype is not None:
        args["scale_dtype"] = _TORCH_SCALE_DTYPES[fmt.scale_dtype]
    return args


def module_of(name: str) -> str:
    """``model.layers.0.mlp.up_proj.weight`` -> ``model.layers.0.mlp.up_proj``."""
    if not name.endswith(".weight"):
        raise ValueError(f"{name} is no weight name")
    return name[: -len(".weight")]


def module_target(module: str, prefixes: tuple[str, ...] = ()) -> str:
    """An anchored ``re:`` target matching ``module`` under any parent (a task head's base
    model prefix), and without a leading base model prefix among ``prefixes`` (a causal-LM
    checkpoint loaded as its base model drops ``model.``)."""
    head, _, rest = module.partition(".")
    if rest and head in prefixes:
        return rf"re:^(?:.*\.)?(?:{re.escape(head)}\.)?{re.escape(rest)}$"
    return rf"re:^(?:.*\.)?{re.escape(module)}$"


def quantization_config(
    groups: list[tuple[QuantSpec, list[str]]], ignore: list[str], prefixes: tuple[str, ...] = ()
) -> dict:
    """The ``quantization_config`` of config.json.

    groups: (spec, module names) for each set of modules sharing one spec; ignore: modules
    left in float that a ``Linear`` target could match (for readers that list them). Specs
    of several formats make a ``mixed-precision`` config whose groups name their format.
    """
    formats = {FORMATS[spec.scheme].name for spec, _ in groups}
    mixed = len(formats) > 1
    config_groups = {}
    for i, (spec, modules) in enumerate(groups):
        group = {
            "targets": [module_target(m, prefixes) for m in modules],
            "weights": weight_args(spec),
            "input_activations": None,
            "output_activations": None,
        }
        if mixed:
            group["format"] = FORMATS[spec.scheme].name
        config_groups[f"group_{i}"] = group
    return {
        "quant_method": QUANT_METHOD,
        "format": MIXED_PRECISION if mixed else formats.pop() if formats else PACK_QUANTIZED,
        "quantization_status": "compressed",
        "config_groups": config_groups,
        "ignore": sorted(ignore),
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
    }


# the Linear layers vLLM loads as one (qkv_proj, gate_up_proj, MLA's fused q_a/kv_a, BERT's
# query/key/value, an expert's w1/w3): it keeps one NVFP4 global scale per fused layer, the
# largest of its parts', for all of them
_FUSED = (
    ("q_proj", "k_proj", "v_proj"),
    ("gate_proj", "up_proj"),
    ("q_a_proj", "kv_a_proj_with_mqa"),
    ("query", "key", "value"),
    ("w1", "w3"),
)


def fused_groups(names: list[str]) -> list[list[str]]:
    """The weights among ``names`` that vLLM loads as one fused layer: the q/k/v projections
    of one attention block (BERT's query/key/value), gate/up of one MLP (an expert's w1/w3,
    an MLA block's q_a/kv_a), each set of two or more, in the order of ``names``."""
    groups: dict[tuple[str, int], list[str]] = {}
    for name in names:
        parent, _, leaf = module_of(name).rpartition(".")
        for i, parts in enumerate(_FUSED):
            if leaf in parts:
                groups.setdefault((parent, i), []).append(name)
    return [group for group in groups.values() if len(group) > 1]


def stored_layout(
    name: str, spec: QuantSpec, shape: tuple[int, ...]
) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
    """(name, dtype, shape) of the arrays weight ``name`` of ``shape`` is written as."""
    fmt = FORMATS[spec.scheme]
    weight = module_of(name) + ".weight"
    out_f, in_f = shape
    scale_dtype = SCALE_NUMPY_DTYPES[spec.scale_dtype]
    # the library stores a per-tensor scale as [1], the others as [out, 1] or [out, groups]
    pshape = (1,) if spec.granularity == "tensor" else param_shape(shape, spec)
    if fmt.layout == "weight":
        return [(weight, spec.format.code_dtype, shape), (weight + SCALE, scale_dtype, pshape)]
    if fmt.layout == "nibbles":
        out = [
            (weight + PACKED, np.dtype(np.uint8), (out_f, in_f // 2)),
            (weight + SCALE, scale_dtype, pshape),
        ]
        if spec.format.tensor_scale:
            out.append((weight + GLOBAL_SCALE, np.dtype(np.float32), (1,)))
        return out
    out = [
        (weight + PACKED, np.dtype(np.int32), (out_f, packed_words(in_f, spec.bits))),
        (weight + SCALE, scale_dtype, pshape),
        (weight + SHAPE, np.dtype(np.int64), (2,)),
    ]
    if spec.has_zero_point:
        zshape = (packed_words(out_f, spec.bits), pshape[1])
        out.append((weight + ZERO_POINT, np.dtype(np.int32), zshape))
    return out


def stored_arrays(
    name: str, spec: QuantSpec, shape: tuple[int, ...], quant_arrays: list[tuple[str, np.ndarray]]
) -> list[tuple[str, np.ndarray]]:
    """The compressed-tensors arrays of weight ``name``, from quant's stored arrays of it
    (codes packed by ``quantcli.core.packing``, scales, zero points, a tensor scale), in the
    order of ``stored_layout``. A pure re-layout: the dequantized values are unchanged."""
    arrays = dict(quant_arrays)
    codes, scale = np.asarray(arrays[name]), np.asarray(arrays[name + SCALE_SUFFIX])
    layout = stored_layout(name, spec, shape)
    fmt = FORMATS[spec.scheme]
    out_f, in_f = shape
    if fmt.layout == "weight":
        codes = codes.reshape(shape)
        scale = _library_zero_scale(spec, scale.reshape(layout[1][2]), codes.view(np.uint8) & 0x7F)
        return [(layout[0][0], codes), (layout[1][0], scale)]
    if fmt.layout == "nibbles":
        # quant packs 4-bit codes as the library does: element 2i low, 2i+1 high
        result = [
            (layout[0][0], codes.reshape(layout[0][2])),
            (layout[1][0], scale.reshape(layout[1][2])),
        ]
        if spec.format.tensor_scale:
            tensor_scale = np.asarray(arrays[name + TENSOR_SCALE_SUFFIX], np.float32)
            result.append((layout[2][0], tensor_scale.reshape(1)))
        return result
    bits = spec.bits
    row_bytes = codes.view(np.uint8).reshape(out_f, -1)
    if spec.scheme in _LIBRARY_ZERO_SCALE:
        # codes in the signed convention: 0 throughout a group of zeros
        signed = (
            unpack(row_bytes, bits, in_f, signed=False).astype(np.int16) - 2 ** (bits - 1)
            if spec.has_zero_point
            else unpack(row_bytes, bits, in_f, signed=True)
        )
        scale = _library_zero_scale(spec, scale.reshape(layout[1][2]), signed)
    if not spec.has_zero_point:
        # two's complement code c -> offset c + 2**(b-1): the top bit of every field flips
        flip = np.uint8(0x80 if bits == 8 else 0x88)
        row_bytes = row_bytes ^ flip
        if bits == 4 and in_f % 2 and out_f:
            row_bytes[:, -1] &= np.uint8(0x0F)  # the padding nibble stays zero
    # zeropoint codes 0..2**b-1 are already the offset values of q - 2**(b-1)
    result = [
        (layout[0][0], _words(row_bytes, out_f, in_f, bits)),
        (layout[1][0], scale.reshape(layout[1][2])),
        (layout[2][0], np.array(shape, np.int64)),
    ]
    if spec.has_zero_point:
        zp = np.asarray(arrays[name + ZERO_POINT_SUFFIX], np.uint8).reshape(out_f, -1)
        packed = pack_int32(np.ascontiguousarray(zp.T), bits)  # along dim 0
        result.append((layout[3][0], packed.T.copy()))  # canonical strides, even for [n, 1]
    return result


def _library_zero_scale(spec: QuantSpec, scale: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``scale`` ([out, 1], [out, groups] or [1]) with the library's value for a group of
    zeros where quant stores 1: the machine epsilon of the scale dtype (compressed-tensors'
    observer replaces a zero scale by it). Only for the library's own rules (fullrange-ct,
    zeropoint-ct, fp8), so their bytes match its compressor's; every code of such a group is
    0 (its zero point, for zeropoint-ct), so no restored value changes. codes: [out, in], in
    the signed convention: zero where the element's code is 0."""
    if spec.scheme not in _LIBRARY_ZERO_SCALE or spec.calibration != "minmax":
        return scale
    rows = codes.shape[0]
    if spec.granularity == "tensor":
        zero = np.array([not codes.any()])
    elif spec.granularity == "group":
        zero = ~codes.reshape(rows, scale.shape[1], -1).any(axis=2)
    elif spec.granularity == "block":
        r, c = spec.block_size
        nonzero = np.logical_or.reduceat(codes != 0, np.arange(0, codes.shape[1], c), axis=1)
        zero = ~np.logical_or.reduceat(nonzero, np.arange(0, rows, r), axis=0)
    else:
        zero = ~codes.reshape(rows, -1).any(axis=1, keepdims=True)
    zero = zero.reshape(scale.shape) & (scale == 1)
    if not zero.any():
        return scale
    eps = scale.dtype.type(ml_dtypes.finfo(scale.dtype).eps)
    return np.where(zero, eps, scale).astype(scale.dtype)


# -- reading ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CTEntry:
    """One quantized Linear weight of a compressed-tensors checkpoint, as quant sees it.

    spec: absmax for symmetric int args (its codes may use the whole signed range, down to
    -2**(b-1), and its scales may be negative, as a fullrange export's are), zeropoint for
    asymmetric ones, fp8, nvfp4 or mxfp4 for the float formats; ``scale_dtype`` is the
    stored scales'. dtype: the weight's original dtype (the scales' for int and FP8, the
    model's config.json ``dtype`` for NVFP4 and MXFP4, whose scales are 8-bit).
    """

    name: str
    spec: QuantSpec
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def module(self) -> str:
        return module_of(self.name)

    @property
    def fmt(self) -> CTFormat:
        return FORMATS[self.spec.scheme]

    def stored(self) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
        return stored_layout(self.name, self.spec, self.shape)


def is_compressed_tensors(config: dict | None) -> bool:
    qc = config.get("quantization_config") if isinstance(config, dict) else None
    return isinstance(qc, dict) and qc.get("quant_method") == QUANT_METHOD


def _bad(label: str, why: str) -> QuantizedFormatError:
    return QuantizedFormatError(f"bad compressed-tensors checkpoint in {label}: {why}; {_FIX}")


def _names(targets: list, module: str, classes: tuple[str, ...] = ()) -> bool:
    """Whether ``targets`` (module names, ``re:`` patterns matched with re.match as the
    library does, or class names among ``classes``) name ``module``."""
    for target in targets:
        if not isinstance(target, str):
            continue
        if target.startswith("re:"):
            try:
                if re.match(target[3:], module):
                    return True
            except (re.error, RecursionError):
                continue
        elif target == module or target in classes:
            return True
    return False


# the formats quant reads, by the name config.json gives them
_READ_FORMATS = {
    PACK_QUANTIZED: PACK,
    NAIVE_QUANTIZED: FP8,
    FLOAT_QUANTIZED: FP8,
    NVFP4_PACK_QUANTIZED: NVFP4,
    MXFP4_PACK_QUANTIZED: MXFP4,
}
_READS = (
    "quant reads pack-quantized int (4 and 8 bits), naive- and float-quantized FP8, "
    "nvfp4-pack-quantized and mxfp4-pack-quantized weights"
)


def _infer_format(kind: str, bits: int, group: int | None) -> CTFormat | None:
    """A group's format when config.json names none (or ``mixed-precision``), as the library
    infers a module's: MXFP4 for 4-bit floats in groups of 32, NVFP4 in groups of 16, FP8
    for 8-bit floats, pack-quantized for ints."""
    if kind == "float":
        return {4: {32: MXFP4, 16: NVFP4}.get(group), 8: FP8}.get(bits)
    return PACK if kind == "int" else None


def _parse_args(name: str, args: object, fmt_name: object, label: str) -> dict:
    if not isinstance(args, dict):
        raise _bad(label, f"group {name!r} has no weights arguments")
    bits = args.get("num_bits", 8)
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise _bad(label, f"group {name!r}: num_bits {bits!r} is not an integer")
    kind = args.get("type", "int")
    group = args.get("group_size")
    if group is not None and (isinstance(group, bool) or not isinstance(group, int)):
        raise _bad(label, f"group {name!r}: group_size {group!r} is not an integer")
    if fmt_name is None or fmt_name == MIXED_PRECISION:
        fmt = _infer_format(kind, bits, group)
    else:
        fmt = _READ_FORMATS.get(fmt_name) if isinstance(fmt_name, str) else None
    if fmt is None or kind != fmt.type:
        shown = fmt_name if isinstance(fmt_name, str) else "unnamed"
        raise QuantizedFormatError(
            f"unsupported compressed-tensors format in {label}: group {name!r} is {shown} "
            f"{kind!s:.20} {bits}-bit; {_READS}"
        )
    if bits not in fmt.bits:
        if fmt is PACK:
            raise QuantizedFormatError(
                f"unsupported compressed-tensors width in {label}: group {name!r} has {bits}-bit "
                "codes, whose packing changed between library versions; quant reads 4 and 8 bits"
            )
        raise _bad(label, f"group {name!r}: {fmt.name} has {fmt.bits[0]}-bit codes, not {bits}")
    strategy = args.get("strategy") or ("group" if group else "channel")
    if strategy == fmt.group_strategy:
        strategy = "group"
    if strategy not in fmt.granularities:
        raise QuantizedFormatError(
            f"unsupported compressed-tensors strategy in {label}: group {name!r} is "
            f"{strategy!r}; quant reads {fmt.name} with strategy "
            f"{' or '.join(fmt.group_strategy if g == 'group' else g for g in fmt.granularities)}"
        )
    if strategy == "group" and (group is None or group < 1):
        raise _bad(label, f"group {name!r}: group_size {group!r} is not a positive integer")
    block = args.get("block_structure")
    if strategy == "block":
        ok = isinstance(block, list) and len(block) == 2
        if not ok or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in block):
            raise _bad(label, f"group {name!r}: block_structure {block!r} is not two positive ints")
    symmetric = args.get("symmetric", True)
    if not isinstance(symmetric, bool):
        raise _bad(label, f"group {name!r}: symmetric {symmetric!r} is not true or false")
    if fmt is not PACK:
        if not symmetric:
            raise QuantizedFormatError(
                f"unsupported compressed-tensors weights in {label}: group {name!r} is an "
                f"asymmetric {fmt.name}; quant reads it symmetric, as the library writes it"
            )
        wanted = {NVFP4: 16, MXFP4: 32}.get(fmt)
        if wanted is not None and group != wanted:
            raise _bad(label, f"group {name!r}: {fmt.name} has groups of {wanted}, not {group}")
    return {
        "format": fmt,
        "bits": bits,
        "strategy": strategy,
        "group_size": group,
        "block_size": tuple(block) if strategy == "block" else None,
        "symmetric": symmetric,
    }


def read_config(config: dict, label: str) -> tuple[list[tuple[list, dict]], list]:
    """The (targets, parsed weights args) of every group, and the ignore list."""
    qc = config.get("quantization_config")
    if qc.get("quantization_status", "compressed") != "compressed":
        raise QuantizedFormatError(
            f"not a compressed checkpoint in {label}: quantization_status is "
            f"{qc.get('quantization_status')!r}; quant reads 'compressed' checkpoints"
        )
    groups = qc.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise _bad(label, "quantization_config has no config_groups")
    fmt = qc.get("format")
    parsed = []
    for gname, group in groups.items():
        if not isinstance(group, dict):
            raise _bad(label, f"config group {gname!r} is not an object")
        targets = group.get("targets")
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise _bad(label, f"config group {gname!r} has no list of targets")
        if group.get("weights") is None:
            continue  # activation-only group: nothing stored
        group_fmt = group.get("format") or fmt
        parsed.append((targets, _parse_args(str(gname), group["weights"], group_fmt, label)))
    ignore = qc.get("ignore") or []
    if not isinstance(ignore, list):
        raise _bad(label, "ignore is not a list")
    return parsed, ignore


_DTYPE_NAMES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def model_dtype(config: dict) -> np.dtype:
    """The model's float dtype from config.json (``dtype``, or the older ``torch_dtype``, of
    the model or its text model); float32, transformers' default, when it names none."""
    for part in (config, config.get("text_config")):
        if not isinstance(part, dict):
            continue
        for key in ("dtype", "torch_dtype"):
            value = part.get(key)
            if isinstance(value, str) and value.removeprefix("torch.") in _DTYPE_NAMES:
                return np.dtype(_DTYPE_NAMES[value.removeprefix("torch.")])
    return np.dtype(np.float32)


_E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)


def read_entries(config: dict, infos: dict, label: str) -> dict[str, CTEntry]:
    """The quantized weights of a checkpoint: config.json's dict and its tensors' infos
    (name -> TensorInfo). A pack-quantized weight's shape is read from its ``M.weight_shape``
    tensor later (``load_entries``), since that needs the tensor's data."""
    groups, ignore = read_config(config, label)
    entries = {}
    for tensor, info in infos.items():
        if tensor.endswith(".weight" + PACKED):
            module, stored = tensor[: -len(".weight" + PACKED)], "packed"
        elif tensor.endswith(".weight") and np.dtype(info.dtype) == _E4M3:
            module, stored = tensor[: -len(".weight")], "float8"
        else:
            continue
        # a quantized weight is a Linear's, whatever class name a target uses for it
        args = next((a for t, a in groups if _names(t, module, _LINEAR)), None)
        if args is None or _names(ignore, module):
            raise _bad(label, f"{tensor} is {stored} but no config group targets {module}")
        fmt = args["format"]
        if (fmt.layout == "weight") != (stored == "float8"):
            raise _bad(label, f"{tensor} is {stored} but its config group is {fmt.name}")
        scale = infos.get(module + ".weight" + SCALE)
        if scale is None:
            raise _bad(label, f"{module}.weight_scale is missing")
        if fmt.scale_dtype is None:
            if np.dtype(scale.dtype) not in _SCALE_DTYPES:
                raise _bad(label, f"{module}.weight_scale is {scale.dtype}, not a float dtype")
            scale_dtype, dtype = _SCALE_DTYPES[np.dtype(scale.dtype)], np.dtype(scale.dtype)
        else:
            scale_dtype, dtype = fmt.scale_dtype, model_dtype(config)
        scheme = {FP8: "fp8", NVFP4: "nvfp4", MXFP4: "mxfp4"}.get(fmt)
        if scheme is None:
            scheme = "absmax" if args["symmetric"] else "zeropoint"
        spec = QuantSpec(
            scheme=scheme,
            bits=args["bits"],
            granularity=args["strategy"],
            group_size=args["group_size"] or 128,
            scale_dtype=scale_dtype,
            block_size=args["block_size"],
        )
        shape = (0, 0)  # pack-quantized: from M.weight_shape
        if fmt.layout != "int32":
            if len(info.shape) != 2:
                raise _bad(label, f"{tensor} is {len(info.shape)}-D, not a Linear weight")
            rows, cols = info.shape
            shape = (rows, cols) if fmt.layout == "weight" else (rows, 2 * cols)
            if spec.granularity == "group" and shape[1] % spec.group_size:
                raise _bad(
                    label,
                    f"{tensor} holds rows of {shape[1]}, which groups of {spec.group_size} "
                    "do not divide",
                )
        name = module + ".weight"
        entries[name] = CTEntry(name, spec, shape, dtype)
    return entries


def with_shape(entry: CTEntry, weight_shape: np.ndarray, label: str) -> CTEntry:
    """``entry`` with the shape its ``weight_shape`` tensor gives, checked."""
    ws = np.asarray(weight_shape)
    if ws.dtype.kind not in "iu" or ws.shape != (2,) or (ws <= 0).any() or (ws >= 2**40).any():
        raise _bad(label, f"{entry.module}.weight_shape is not two positive integers")
    shape = (int(ws[0]), int(ws[1]))
    if entry.spec.granularity == "group" and shape[1] % entry.spec.group_size:
        raise _bad(
            label,
            f"{entry.name} has rows of {shape[1]}, which group size {entry.spec.group_size} "
            "does not divide",
        )
    return CTEntry(entry.name, entry.spec, shape, entry.dtype)


def check_stored(entry: CTEntry, infos: dict, label: str) -> None:
    """Refuse arrays whose dtype or shape is not what ``entry`` (with its shape) stores."""
    for name, dtype, shape in entry.stored():
        info = infos.get(name)
        if info is None:
            raise _bad(label, f"{name} is missing")
        if np.dtype(info.dtype) != dtype or tuple(info.shape) != tuple(shape):
            raise _bad(
                label,
                f"{name} is {info.dtype} {list(info.shape)} but a {entry.spec.bits}-bit "
                f"{entry.spec.granularity} weight of shape {list(entry.shape)} stores "
                f"{dtype} {list(shape)}",
            )
    zp = entry.module + ".weight" + ZERO_POINT
    if not entry.spec.has_zero_point and zp in infos:
        raise _bad(label, f"{zp} is stored but the weights are symmetric")


def unpacked_codes(entry: CTEntry, packed: np.ndarray, label: str) -> np.ndarray:
    """The codes [out, in] of ``entry``: signed int8 for pack-quantized (padding bits must
    be zero), float8_e4m3fn for FP8 (NaN is no code), uint8 E2M1 codes for NVFP4 and MXFP4."""
    layout = entry.fmt.layout
    if layout == "weight":
        codes = np.asarray(packed)
        if not np.isfinite(codes.astype(np.float32)).all():
            raise _bad(label, f"{entry.name} holds NaN, which no FP8 weight is")
        return codes
    if layout == "nibbles":
        return unpack(np.asarray(packed, np.uint8), 4, entry.shape[1], signed=False)
    codes, clean = unpack_int32(packed, entry.spec.bits, entry.shape[1])
    if not clean:
        raise _bad(label, f"{entry.module}.weight_packed has bits set past the row's last code")
    return codes


def restore(entry: CTEntry, arrays: dict, label: str, dtype=None) -> np.ndarray:
    """Floats of ``entry`` from its stored arrays (name -> array), computed in float32 as
    quant dequantizes its own formats (``(q - zp) * scale`` per group; E2M1 or FP8 values
    times the scale, over the global scale for NVFP4), in ``dtype`` (default: the entry's)."""
    spec, module, fmt = entry.spec, entry.module, entry.fmt
    stored = entry.stored()
    codes = unpacked_codes(entry, arrays[stored[0][0]], label)
    scale = np.asarray(arrays[module + ".weight" + SCALE])
    scale32 = SCALE_KINDS[spec.scale_dtype].load(scale)
    if fmt is PACK and not spec.has_zero_point:
        # a fullrange export's scales are negative where its largest value is positive
        valid, why = np.isfinite(scale32).all() and (scale32 != 0).all(), "finite and non-zero"
    else:
        valid, why = spec.format.valid_scales(scale32), "finite and positive"
    if not valid:
        raise _bad(label, f"{module}.weight_scale has values that are not {why}")
    zp = tensor_scale = None
    if spec.has_zero_point:
        bits, half = spec.bits, 1 << (spec.bits - 1)
        out_f = entry.shape[0]
        packed_zp = np.asarray(arrays[module + ".weight" + ZERO_POINT])
        zp_t, clean = unpack_int32(np.ascontiguousarray(packed_zp.T), bits, out_f)
        if not clean:
            raise _bad(label, f"{module}.weight_zero_point has bits set past its last value")
        # the signed convention back to quant's unsigned one: (q - zp) is unchanged
        zp = (zp_t.T.astype(np.int16) + half).astype(np.uint8)
        codes = (codes.astype(np.int16) + half).astype(np.uint8)
    if spec.format.tensor_scale:
        tensor_scale = np.asarray(arrays[module + ".weight" + GLOBAL_SCALE], np.float32)
        if not (np.isfinite(tensor_scale).all() and (tensor_scale > 0).all()):
            raise _bad(label, f"{module}.weight_global_scale is not finite and positive")
    from quantcli.core.quantizer import dequantize  # the numerics load only when restoring

    target = np.dtype(entry.dtype if dtype is None else dtype)
    x_hat = dequantize(codes, scale, zp, spec, tensor_scale=tensor_scale)  # scales as stored
    return x_hat if target == np.float32 else x_hat.astype(target)


def dump_config(config: dict) -> bytes:
    """config.json's bytes as transformers writes them: 2-space indent, sorted keys."""
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


def load_entries(config: dict, infos: dict, read, label: str) -> dict[str, CTEntry]:
    """``read_entries`` with each pack-quantized entry's shape read from its
    ``M.weight_shape`` tensor (``read(name)`` gives a tensor's array), and every entry's
    stored arrays checked."""
    entries = {}
    for name, entry in read_entries(config, infos, label).items():
        if entry.fmt.layout == "int32":
            shape_name = entry.module + ".weight" + SHAPE
            if shape_name not in infos:
                raise _bad(label, f"{shape_name} is missing")
            if infos[shape_name].size != 2:
                raise _bad(label, f"{shape_name} is not two positive integers")
            entry = with_shape(entry, read(shape_name), label)
        check_stored(entry, infos, label)
        entries[name] = entry
    return entries
