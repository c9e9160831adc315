"""The compressed-tensors container: what transformers and vLLM load (docs/EXPORT.md).

A quantized Linear weight ``M.weight`` of shape [out, in] is stored as:

- ``M.weight_packed``: int32 [out, ceil(in * b / 32)]. Codes are signed, offset by 2**(b-1)
  to unsigned, and packed least significant bits first along the row: element i of a row at
  bits [i*b, (i+1)*b) of the row's bit stream, in little-endian 32-bit words; each row is
  padded with zero bits to a whole word. Codes [-8, -7, 0, 1, 2, 3, 6, 7] at 4 bits are the
  single word 0xFEBA9810.
- ``M.weight_scale``: the model's float dtype, [out, 1] (channel) or [out, in / group] (group).
- ``M.weight_shape``: int64 [2], the original [out, in].
- ``M.weight_zero_point`` (asymmetric only): signed codes packed the same way along dim 0,
  int32 [ceil(out * b / 32), groups].

config.json describes them in ``quantization_config`` (``quantization_config`` builds it).

quant's schemes map onto it without changing a dequantized value: ``absmax`` codes lie in
[-qmax, qmax], a subset of the signed range; ``zeropoint`` codes 0..2**b-1 and zero points
shift by -2**(b-1) to the signed convention, ``(q - zp)`` unchanged. Only 4 and 8 bits are
written and read: compressed-tensors 0.18 changed the 3/5/6/7-bit layout to cross-word
packing, so those widths do not load the same everywhere.

Each container format is one ``CTFormat`` in ``FORMATS``; the integer one is
``pack-quantized``. The reading side turns a checkpoint back into ``CTEntry`` objects that
decompress, inspect and report restore like quant's own entries.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from quantcli.core.layout import param_shape
from quantcli.core.packing import pack, unpack
from quantcli.core.schemes.base import SCALE_NUMPY_DTYPES
from quantcli.core.spec import QuantSpec
from quantcli.errors import QuantizedFormatError, SpecError

QUANT_METHOD = "compressed-tensors"
PACK_QUANTIZED = "pack-quantized"
SUPPORTED_BITS = (4, 8)

PACKED = "_packed"
SCALE = "_scale"
SHAPE = "_shape"
ZERO_POINT = "_zero_point"

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
    """One compressed-tensors format: which quant specs it holds and how its arguments read."""

    name: str
    type: str  # QuantizationArgs.type: "int" or "float"
    schemes: tuple[str, ...]
    bits: tuple[int, ...]


FORMATS = {
    "absmax": CTFormat(PACK_QUANTIZED, "int", ("absmax", "zeropoint"), SUPPORTED_BITS),
    "zeropoint": CTFormat(PACK_QUANTIZED, "int", ("absmax", "zeropoint"), SUPPORTED_BITS),
}


def scale_dtype_for(dtype: np.dtype) -> str:
    """The scale dtype a tensor of ``dtype`` gets: its own float dtype (float32 otherwise)."""
    return _SCALE_DTYPES.get(np.dtype(dtype), "float32")


def check_spec(spec: QuantSpec, name: str, shape: tuple[int, ...]) -> None:
    """Refuse a spec compressed-tensors cannot hold for tensor ``name`` of ``shape``, naming
    the nearest spec that works."""
    where = f"tensor {name}"
    fmt = FORMATS.get(spec.scheme)
    if fmt is None:
        raise SpecError(
            f"scheme {spec.scheme} in {where}: compressed-tensors holds "
            f"{', '.join(FORMATS)}; use one of them or --format quant"
        )
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
    if spec.granularity == "tensor":
        raise SpecError(
            f"per-tensor scale in {where}: quant writes compressed-tensors per channel or per "
            "group (what vLLM's kernels take); use --granularity channel"
        )
    if spec.granularity == "channel" and spec.axis not in (0, -2):
        raise SpecError(
            f"channel axis {spec.axis} in {where}: compressed-tensors scales the output rows "
            "(axis 0) of a Linear weight; use --axis 0"
        )
    if spec.granularity == "group" and shape[1] % spec.group_size:
        fits = [g for g in (128, 64, 32, 16) if shape[1] % g == 0 and g <= shape[1]]
        hint = f"--group-size {fits[0]}" if fits else "--granularity channel"
        raise SpecError(
            f"group size {spec.group_size} in {where}: it does not divide the row length "
            f"{shape[1]}, and compressed-tensors has no ragged last group; use {hint}"
        )


def weight_args(spec: QuantSpec) -> dict:
    """The ``weights`` QuantizationArgs of ``spec``: only keys the library's pydantic model
    knows (it rejects unknown ones), in every version from 0.9 on."""
    fmt = FORMATS[spec.scheme]
    return {
        "num_bits": spec.bits,
        "type": fmt.type,
        "symmetric": not spec.has_zero_point,
        "strategy": spec.granularity,
        "group_size": spec.group_size if spec.granularity == "group" else None,
        "dynamic": False,
        "actorder": None,
    }


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
    left in float that a ``Linear`` target could match (for readers that list them).
    """
    formats = {FORMATS[spec.scheme].name for spec, _ in groups}
    config_groups = {
        f"group_{i}": {
            "targets": [module_target(m, prefixes) for m in modules],
            "weights": weight_args(spec),
            "input_activations": None,
            "output_activations": None,
        }
        for i, (spec, modules) in enumerate(groups)
    }
    return {
        "quant_method": QUANT_METHOD,
        "format": formats.pop() if len(formats) == 1 else "mixed-precision",
        "quantization_status": "compressed",
        "config_groups": config_groups,
        "ignore": sorted(ignore),
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
    }


def stored_layout(
    name: str, spec: QuantSpec, shape: tuple[int, ...]
) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
    """(name, dtype, shape) of the arrays weight ``name`` of ``shape`` is written as."""
    module = module_of(name)
    out_f, in_f = shape
    scale_dtype = SCALE_NUMPY_DTYPES[spec.scale_dtype]
    pshape = param_shape(shape, spec)
    out = [
        (module + ".weight" + PACKED, np.dtype(np.int32), (out_f, packed_words(in_f, spec.bits))),
        (module + ".weight" + SCALE, scale_dtype, pshape),
        (module + ".weight" + SHAPE, np.dtype(np.int64), (2,)),
    ]
    if spec.has_zero_point:
        zshape = (packed_words(out_f, spec.bits), pshape[1])
        out.append((module + ".weight" + ZERO_POINT, np.dtype(np.int32), zshape))
    return out


def stored_arrays(
    name: str, spec: QuantSpec, shape: tuple[int, ...], quant_arrays: list[tuple[str, np.ndarray]]
) -> list[tuple[str, np.ndarray]]:
    """The compressed-tensors arrays of weight ``name``, from quant's stored arrays of it
    (codes packed by ``quantcli.core.packing``, scales, zero points), in the order of
    ``stored_layout``. A pure re-layout: the dequantized values are unchanged."""
    arrays = dict(quant_arrays)
    codes, scale = np.asarray(arrays[name]), np.asarray(arrays[name + ".scale"])
    out_f, in_f = shape
    bits = spec.bits
    row_bytes = codes.view(np.uint8).reshape(out_f, -1)
    if not spec.has_zero_point:
        # two's complement code c -> offset c + 2**(b-1): the top bit of every field flips
        flip = np.uint8(0x80 if bits == 8 else 0x88)
        row_bytes = row_bytes ^ flip
        if bits == 4 and in_f % 2 and out_f:
            row_bytes[:, -1] &= np.uint8(0x0F)  # the padding nibble stays zero
    # zeropoint codes 0..2**b-1 are already the offset values of q - 2**(b-1)
    layout = stored_layout(name, spec, shape)
    result = [
        (layout[0][0], _words(row_bytes, out_f, in_f, bits)),
        (layout[1][0], scale.reshape(layout[1][2])),
        (layout[2][0], np.array(shape, np.int64)),
    ]
    if spec.has_zero_point:
        zp = np.asarray(arrays[name + ".zero_point"], np.uint8).reshape(out_f, -1)
        packed = pack_int32(np.ascontiguousarray(zp.T), bits)  # along dim 0
        result.append((layout[3][0], np.ascontiguousarray(packed.T)))
    return result


# -- reading ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CTEntry:
    """One quantized Linear weight of a compressed-tensors checkpoint, as quant sees it.

    spec: absmax for symmetric args (its codes may use the whole signed range, down to
    -2**(b-1)), zeropoint for asymmetric ones; ``scale_dtype`` is the stored scales'.
    """

    name: str
    spec: QuantSpec
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def module(self) -> str:
        return module_of(self.name)

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


def _parse_args(name: str, args: object, fmt: str, label: str) -> dict:
    if not isinstance(args, dict):
        raise _bad(label, f"group {name!r} has no weights arguments")
    bits = args.get("num_bits", 8)
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise _bad(label, f"group {name!r}: num_bits {bits!r} is not an integer")
    kind = args.get("type", "int")
    if kind != "int" or fmt != PACK_QUANTIZED:
        raise QuantizedFormatError(
            f"unsupported compressed-tensors format in {label}: group {name!r} is {fmt} "
            f"{kind}; quant reads pack-quantized int weights"
        )
    if bits not in SUPPORTED_BITS:
        raise QuantizedFormatError(
            f"unsupported compressed-tensors width in {label}: group {name!r} has {bits}-bit "
            "codes, whose packing changed between library versions; quant reads 4 and 8 bits"
        )
    strategy = args.get("strategy") or ("group" if args.get("group_size") else "channel")
    if strategy not in ("channel", "group"):
        raise QuantizedFormatError(
            f"unsupported compressed-tensors strategy in {label}: group {name!r} is "
            f"{strategy!r}; quant reads channel and group"
        )
    group = args.get("group_size")
    if strategy == "group" and (isinstance(group, bool) or not isinstance(group, int) or group < 1):
        raise _bad(label, f"group {name!r}: group_size {group!r} is not a positive integer")
    symmetric = args.get("symmetric", True)
    if not isinstance(symmetric, bool):
        raise _bad(label, f"group {name!r}: symmetric {symmetric!r} is not true or false")
    return {"bits": bits, "strategy": strategy, "group_size": group, "symmetric": symmetric}


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
    fmt = qc.get("format", PACK_QUANTIZED)
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


def read_entries(config: dict, infos: dict, label: str) -> dict[str, CTEntry]:
    """The quantized weights of a checkpoint: config.json's dict and its tensors' infos
    (name -> TensorInfo). Shapes are checked against ``M.weight_shape`` later, in
    ``check_stored``, since that needs the tensor's data."""
    groups, ignore = read_config(config, label)
    entries = {}
    for tensor in infos:
        if not tensor.endswith(".weight" + PACKED):
            continue
        module = tensor[: -len(".weight" + PACKED)]
        # a packed weight is a Linear's, whatever class name a target uses for it
        args = next((a for t, a in groups if _names(t, module, _LINEAR)), None)
        if args is None or _names(ignore, module):
            raise _bad(label, f"{tensor} is packed but no config group targets {module}")
        scale = infos.get(module + ".weight" + SCALE)
        if scale is None:
            raise _bad(label, f"{module}.weight_scale is missing")
        if np.dtype(scale.dtype) not in _SCALE_DTYPES:
            raise _bad(label, f"{module}.weight_scale is {scale.dtype}, not a float dtype")
        spec = QuantSpec(
            scheme="absmax" if args["symmetric"] else "zeropoint",
            bits=args["bits"],
            granularity=args["strategy"],
            group_size=args["group_size"] or 128,
            scale_dtype=_SCALE_DTYPES[np.dtype(scale.dtype)],
        )
        name = module + ".weight"
        entries[name] = CTEntry(name, spec, (0, 0), np.dtype(scale.dtype))
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
    """The signed int8 codes [out, in] of ``entry``; padding bits must be zero."""
    codes, clean = unpack_int32(packed, entry.spec.bits, entry.shape[1])
    if not clean:
        raise _bad(label, f"{entry.module}.weight_packed has bits set past the row's last code")
    return codes


def restore(entry: CTEntry, arrays: dict, label: str, dtype=None) -> np.ndarray:
    """Floats of ``entry`` from its stored arrays (name -> array): (q - zp) * scale per
    group, computed in float32, in ``dtype`` (default: the scales' dtype, the model's)."""
    spec, module = entry.spec, entry.module
    bits, half = entry.spec.bits, 1 << (entry.spec.bits - 1)
    codes = unpacked_codes(entry, arrays[module + ".weight" + PACKED], label)
    scale = np.asarray(arrays[module + ".weight" + SCALE])
    scale32 = scale.astype(np.float32)
    if not np.isfinite(scale32).all() or (scale32 <= 0).any():
        raise _bad(label, f"{module}.weight_scale has values that are not finite and positive")
    zp = None
    if spec.has_zero_point:
        out_f = entry.shape[0]
        packed_zp = np.asarray(arrays[module + ".weight" + ZERO_POINT])
        zp_t, clean = unpack_int32(np.ascontiguousarray(packed_zp.T), bits, out_f)
        if not clean:
            raise _bad(label, f"{module}.weight_zero_point has bits set past its last value")
        # the signed convention back to quant's unsigned one: (q - zp) is unchanged
        zp = (zp_t.T.astype(np.int16) + half).astype(np.uint8)
        codes = (codes.astype(np.int16) + half).astype(np.uint8)
    from quantcli.core.quantizer import dequantize  # the numerics load only when restoring

    target = np.dtype(entry.dtype if dtype is None else dtype)
    x_hat = dequantize(codes, scale32, zp, spec)
    return x_hat if target == np.float32 else x_hat.astype(target)


def dump_config(config: dict) -> bytes:
    """config.json's bytes as transformers writes them: 2-space indent, sorted keys."""
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


def load_entries(config: dict, infos: dict, read, label: str) -> dict[str, CTEntry]:
    """``read_entries`` with each entry's shape read from its ``M.weight_shape`` tensor
    (``read(name)`` gives a tensor's array), and its stored arrays checked."""
    entries = {}
    for name, entry in read_entries(config, infos, label).items():
        shape_name = entry.module + ".weight" + SHAPE
        if shape_name not in infos:
            raise _bad(label, f"{shape_name} is missing")
        if infos[shape_name].size != 2:
            raise _bad(label, f"{shape_name} is not two positive integers")
        entry = with_shape(entry, read(shape_name), label)
        check_stored(entry, infos, label)
        entries[name] = entry
    return entries
