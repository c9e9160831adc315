"""The quantized file format, checked against its specification (docs/FORMAT.md).

Files written by ``quant compress`` are opened with the reference reader
(``safetensors.safe_open(path, "numpy")``); their tensors, dtypes, shapes, packing and
``__metadata__`` are compared with what FORMAT.md says, and restoring by hand with FORMAT.md's
formulas must give exactly what ``quant decompress`` gives. Golden files in tests/data pin the
bytes (regenerate them with tests/data/make_golden.py, only on a deliberate format change).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from cli_runner import cli
from safetensors import safe_open

import quantcli
import quantcli.io.quantized_format as quantized_format
from quantcli.io import save_bytes

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
SAMPLES = HERE.parent / "sample_weights"
TRANSFORMER = SAMPLES / "transformer.safetensors"

METADATA_KEYS = {
    "quant.format",
    "quant.format_version",
    "quant.producer",
    "quant.tensors",
    "quant.source_metadata",
    "quant.source_format",
}
ENTRY_KEYS = {
    "scheme", "bits", "granularity", "axis", "group_size", "calibration", "percentile",
    "scale_dtype", "shape", "dtype",
}  # fmt: skip
SCALE_DTYPES = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}
ST_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}


def _load_make_golden():
    spec = importlib.util.spec_from_file_location("make_golden", DATA / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_golden = _load_make_golden()


# -- helpers -----------------------------------------------------------------------------------


run, ok = cli(100)


def read_header(data: bytes) -> tuple[dict, int]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]), 8 + n


def raw_tensor(path: Path, name: str) -> np.ndarray:
    """One tensor read from the bytes by hand (for BF16, which safe_open's numpy cannot)."""
    data = path.read_bytes()
    header, base = read_header(data)
    h = header[name]
    start, end = h["data_offsets"]
    return np.frombuffer(data[base + start : base + end], ST_DTYPES[h["dtype"]]).reshape(h["shape"])


def read_stored(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every tensor and the metadata, through safetensors' own reader (BF16 by hand)."""
    arrays = {}
    with safe_open(str(path), "numpy") as f:
        meta = f.metadata()
        for name in f.keys():
            if f.get_slice(name).get_dtype() == "BF16":
                arrays[name] = raw_tensor(path, name)
            else:
                arrays[name] = f.get_tensor(name)
    return arrays, meta


def pack_by_hand(codes: np.ndarray, bits: int) -> np.ndarray:
    """FORMAT.md's packing, one Python integer per row: element i at bits [i*b, (i+1)*b)."""
    codes = np.asarray(codes).reshape(-1, codes.shape[-1] if codes.ndim else 1)
    n = codes.shape[1]
    nbytes = math.ceil(n * bits / 8)
    mask = (1 << bits) - 1
    rows = []
    for row in codes.tolist():
        acc = 0
        for i, q in enumerate(row):
            acc |= (q & mask) << (i * bits)  # two's complement low bits for negative codes
        rows.append(list(acc.to_bytes(nbytes, "little")))
    return np.array(rows, np.uint8).reshape(codes.shape[:-1] + (nbytes,))


def unpack_by_hand(packed: np.ndarray, bits: int, n: int, signed: bool) -> np.ndarray:
    rows = packed.reshape(-1, packed.shape[-1])
    mask = (1 << bits) - 1
    out = []
    for row in rows:
        acc = int.from_bytes(bytes(row.tolist()), "little")
        assert acc >> (n * bits) == 0, "padding bits must be zero"
        values = [(acc >> (i * bits)) & mask for i in range(n)]
        if signed:
            values = [v - (1 << bits) if v >= 1 << (bits - 1) else v for v in values]
        out.append(values)
    return np.array(out, np.int64).reshape(packed.shape[:-1] + (n,))


def expand(param: np.ndarray, spec: dict, shape: tuple[int, ...]) -> np.ndarray:
    """Scales / zero points broadcast to the tensor's shape, per FORMAT.md's table."""
    if spec["granularity"] == "group":
        return np.repeat(param, spec["group_size"], axis=-1)[..., : shape[-1]]
    return np.broadcast_to(param, shape)


def expected_scale_shape(spec: dict, shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(shape) or (1,)
    if spec["granularity"] == "tensor":
        return (1,) * len(shape)
    if spec["granularity"] == "channel":
        return tuple(n if i == spec["axis"] else 1 for i, n in enumerate(shape))
    return shape[:-1] + (math.ceil(shape[-1] / spec["group_size"]),)


def codes_of(stored: dict[str, np.ndarray], name: str, spec: dict) -> np.ndarray:
    """The integer codes of ``name`` (int64, its shape), unpacked by hand."""
    shape = tuple(spec["shape"])
    signed = spec["scheme"] == "absmax"
    if spec["bits"] == 8:
        return stored[name].astype(np.int64).reshape(shape)
    n = shape[-1] if shape else 1
    return unpack_by_hand(stored[name], spec["bits"], n, signed).reshape(shape)


def restore_by_hand(stored: dict[str, np.ndarray], name: str, spec: dict) -> np.ndarray:
    """FORMAT.md's "Restoring", in float32: x_hat = q * s, or (q - z) * s."""
    shape = tuple(spec["shape"])
    stored_shape = shape or (1,)  # a 0-d tensor is stored as (1,)
    q = codes_of(stored, name, spec).reshape(stored_shape)
    s = expand(stored[name + ".scale"].astype(np.float32), spec, stored_shape)
    if spec["scheme"] == "zeropoint":
        z = expand(stored[name + ".zero_point"].astype(np.int64), spec, stored_shape)
        return ((q - z).astype(np.float32) * s).reshape(shape)
    return (q.astype(np.float32) * s).reshape(shape)


# -- the layout, case by case ----------------------------------------------------------------

CASES = {
    "absmax8_channel": [],
    "zeropoint8_channel": ["--scheme", "zeropoint"],
    "absmax4_group": ["--bits", "4", "--granularity", "group", "--group-size", "48"],
    "zeropoint4_tensor": ["--scheme", "zeropoint", "--bits", "4", "--granularity", "tensor"],
    "absmax2_tensor": ["--bits", "2", "--granularity", "tensor"],
    "zeropoint3_group_f16": [
        "--scheme", "zeropoint", "--bits", "3", "--granularity", "group", "--group-size", "48",
        "--scale-dtype", "float16",
    ],
    "zeropoint5_axis1": ["--scheme", "zeropoint", "--bits", "5", "--axis", "1"],
    "absmax7_axis-1_f16": ["--bits", "7", "--axis", "-1", "--scale-dtype", "float16"],
    "absmax6_group_bf16": [
        "--bits", "6", "--granularity", "group", "--group-size", "20", "--scale-dtype", "bfloat16",
    ],
    "zeropoint6_percentile": [
        "--scheme", "zeropoint", "--bits", "6", "--calibration", "percentile",
        "--percentile", "99.5",
    ],
}  # fmt: skip

DEFAULTS = {
    "scheme": "absmax",
    "bits": 8,
    "granularity": "channel",
    "axis": 0,
    "group_size": 128,
    "calibration": "minmax",
    "percentile": 99.99,
    "scale_dtype": "float32",
}
OPTION_KEYS = {
    "--scheme": "scheme",
    "--bits": "bits",
    "--granularity": "granularity",
    "--axis": "axis",
    "--group-size": "group_size",
    "--calibration": "calibration",
    "--percentile": "percentile",
    "--scale-dtype": "scale_dtype",
}


def expected_spec(args: list[str], ndim: int) -> dict:
    spec = dict(DEFAULTS)
    for option, value in zip(args[::2], args[1::2]):
        key = OPTION_KEYS[option]
        spec[key] = type(DEFAULTS[key])(value)
    if spec["granularity"] == "channel":
        spec["axis"] %= ndim  # stored non-negative
    # the default search (--search auto): mse at 4 bits and below, per group or channel 0
    searched = (
        spec["bits"] <= 4
        and spec["calibration"] == "minmax"
        and (
            spec["granularity"] == "group"
            or (spec["granularity"] == "channel" and not spec["axis"])
        )
    )
    spec["search"] = "mse" if searched else "none"
    return spec


@pytest.fixture(scope="module")
def original() -> tuple[dict[str, np.ndarray], dict[str, str]]:
    return read_stored(TRANSFORMER)


@pytest.mark.parametrize("case", CASES)
def test_layout_metadata_and_restoring(tmp_path, original, case):
    args = CASES[case]
    path = tmp_path / "q.safetensors"
    ok("compress", TRANSFORMER, "-o", path, "--quiet", *args)
    tensors, source_meta = original
    stored, meta = read_stored(path)

    # __metadata__: exactly FORMAT.md's keys
    assert set(meta) == METADATA_KEYS
    assert meta["quant.format"] == "quantcli"
    assert meta["quant.format_version"] == "1"
    assert meta["quant.producer"] == f"quant {quantcli.__version__}"
    assert meta["quant.source_format"] == "safetensors"
    assert json.loads(meta["quant.source_metadata"]) == source_meta
    entries = json.loads(meta["quant.tensors"])
    quantized = {n for n, a in tensors.items() if a.ndim >= 2 and a.dtype.kind == "f"}
    assert set(entries) == quantized and len(quantized) == 14

    # tensors: every quantized NAME as NAME, NAME.scale (+ NAME.zero_point); the rest as is
    zeropoint = "zeropoint" in args
    expected_names = set(tensors) - quantized
    for name in quantized:
        expected_names |= {name, name + ".scale"} | ({name + ".zero_point"} if zeropoint else set())
    assert set(stored) == expected_names
    for name in set(tensors) - quantized:
        a, b = tensors[name], stored[name]
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()

    exact = tmp_path / "exact.safetensors"
    ok("decompress", path, "-o", exact, "--dtype", "float32", "--quiet")
    restored, restored_meta = read_stored(exact)
    assert restored_meta == source_meta  # the input's own metadata comes back

    for name in quantized:
        entry = entries[name]
        x = tensors[name]
        shape = x.shape
        spec = expected_spec(args, x.ndim)
        searched = {"search"} if spec["search"] != "none" else set()
        # fingerprint: the source's, tests/test_report_against
        assert set(entry) == ENTRY_KEYS | {"fingerprint"} | searched
        assert {k: entry[k] for k in DEFAULTS} | {"search": entry.get("search", "none")} == spec
        assert entry["shape"] == list(shape) and entry["dtype"] == "F32"
        bits, signed = spec["bits"], spec["scheme"] == "absmax"

        codes = stored[name]
        if bits == 8:
            assert codes.dtype == (np.int8 if signed else np.uint8) and codes.shape == shape
        else:
            assert codes.dtype == np.uint8
            assert codes.shape == shape[:-1] + (math.ceil(shape[-1] * bits / 8),)
        scale = stored[name + ".scale"]
        assert scale.dtype == SCALE_DTYPES[spec["scale_dtype"]]
        assert scale.shape == expected_scale_shape(spec, shape)
        s32 = scale.astype(np.float32)
        assert np.all(np.isfinite(s32)) and np.all(s32 > 0)
        if zeropoint:
            zp = stored[name + ".zero_point"]
            assert zp.dtype == np.uint8 and zp.shape == scale.shape
            assert int(zp.max()) <= 2**bits - 1

        q = codes_of(stored, name, entry)
        if signed:
            assert q.min() >= -(2 ** (bits - 1) - 1) and q.max() <= 2 ** (bits - 1) - 1
        else:
            assert q.min() >= 0 and q.max() <= 2**bits - 1
        if bits < 8:  # re-packing the codes by hand gives the stored bytes
            assert np.array_equal(pack_by_hand(q, bits), codes)

        if spec["calibration"] == "minmax" and spec["scale_dtype"] == "float32":
            # the codes are FORMAT.md's formula applied with the stored float32 scale
            s = expand(s32, spec, shape)
            t = np.rint(x.astype(np.float32) / s)
            if signed:
                want = np.clip(t, -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)
            else:
                z = expand(stored[name + ".zero_point"].astype(np.float32), spec, shape)
                want = np.clip(t + z, 0, 2**bits - 1)
            assert np.array_equal(q, want.astype(np.int64)), name

        # restoring by hand with FORMAT.md's formulas == quant decompress, bit for bit
        by_hand = restore_by_hand(stored, name, entry)
        assert restored[name].dtype == np.float32
        assert np.array_equal(by_hand, restored[name]), name


def test_4bit_packing_is_onnx_nibble_order(tmp_path):
    """Element 2i in the low nibble of byte i, 2i+1 in the high nibble; odd rows pad high."""
    x = np.array([[1, -1, 2, -7, 7, 0, -3]], np.float32) / 7  # absmax 1: codes = 7 * x
    np.save(tmp_path / "x.npy", x)
    ok("compress", tmp_path / "x.npy", "-o", tmp_path / "q.safetensors", "--bits", "4", "-q")
    with safe_open(str(tmp_path / "q.safetensors"), "numpy") as f:
        packed = f.get_tensor("x")
        assert np.array_equal(f.get_tensor("x.scale"), np.array([[1 / 7]], np.float32))
    codes = [1, -1, 2, -7, 7, 0, -3]
    nibbles = [c & 0xF for c in codes] + [0]
    expected = [nibbles[2 * i] | nibbles[2 * i + 1] << 4 for i in range(4)]
    assert packed.tolist() == [expected] == [[0xF1, 0x92, 0x07, 0x0D]]


def test_zero_row_and_0d_tensor(tmp_path):
    """amax == 0: scale 1 and codes 0; a 0-d tensor is stored as shape (1,)."""
    from safetensors.numpy import save_file

    w = np.zeros((4, 300), np.float32)
    w[1] = np.linspace(-1, 2, 300)
    save_file({"w": w, "s": np.array(-2.5, np.float32)}, str(tmp_path / "in.safetensors"))
    for scheme, bits in (("absmax", 8), ("zeropoint", 8), ("absmax", 4), ("zeropoint", 3)):
        out = tmp_path / f"{scheme}{bits}.safetensors"
        ok(
            "compress",
            tmp_path / "in.safetensors",
            "-o",
            out,
            "--scheme",
            scheme,
            "--bits",
            bits,
            "--granularity",
            "channel",  # per tensor for the 0-d one
            "--include",
            "*",
            "-q",
        )
        stored, meta = read_stored(out)
        entries = json.loads(meta["quant.tensors"])
        assert entries["s"]["shape"] == [] and entries["s"]["granularity"] == "tensor"
        assert stored["s"].shape == (1,) and stored["s.scale"].shape == (1,)
        assert stored["w.scale"][0, 0] == 1 and stored["w.scale"][2, 0] == 1
        q = codes_of(stored, "w", entries["w"])
        if scheme == "zeropoint":
            assert stored["w.zero_point"][0, 0] == 0
        assert np.all(q[[0, 2, 3]] == 0)
        back = tmp_path / f"{scheme}{bits}.restored.safetensors"
        ok("decompress", out, "-o", back, "-q")
        restored, _ = read_stored(back)
        assert restored["s"].shape == () and restored["w"].shape == (4, 300)
        assert np.array_equal(restored["s"], restore_by_hand(stored, "s", entries["s"]))
        assert np.all(restored["w"][[0, 2, 3]] == 0)


def test_readme_example_reads_a_quantized_file(tmp_path):
    """FORMAT.md's "Reading it elsewhere" snippet, verbatim in spirit."""
    path = tmp_path / "model.absmax-int8.safetensors"
    ok("compress", TRANSFORMER, "-o", path, "-q")
    with safe_open(str(path), "numpy") as f:
        meta = f.metadata()
        spec = json.loads(meta["quant.tensors"])["lm_head.weight"]
        codes = f.get_tensor("lm_head.weight")
        scale = f.get_tensor("lm_head.weight.scale")
        weight = codes.astype(np.float32) * scale
    assert spec["granularity"] == "channel" and codes.dtype == np.int8
    assert scale.shape == (256, 1)
    ok("decompress", path, "-o", tmp_path / "r.safetensors", "-q")
    with safe_open(str(tmp_path / "r.safetensors"), "numpy") as f:
        assert np.array_equal(f.get_tensor("lm_head.weight"), weight)


def test_sharded_index_metadata(tmp_path):
    """The index of a sharded output repeats the quant.* keys for all tensors."""
    from safetensors.numpy import save_file

    tensors, _ = read_stored(TRANSFORMER)
    names = list(tensors)
    (tmp_path / "ckpt").mkdir()
    weight_map = {}
    for k, part in enumerate((names[::2], names[1::2])):
        file = f"model-{k + 1:05d}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(tmp_path / "ckpt" / file))
        weight_map.update(dict.fromkeys(part, file))
    index = tmp_path / "ckpt" / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map": weight_map}))
    ok("compress", index, "-o", tmp_path / "out", "-q")
    out_index = json.loads((tmp_path / "out" / index.name).read_text())
    meta = out_index["metadata"]
    assert METADATA_KEYS <= set(meta) and "total_size" in meta
    entries = json.loads(meta["quant.tensors"])
    assert len(entries) == 14
    for file in set(weight_map.values()):
        stored, shard_meta = read_stored(tmp_path / "out" / file)
        assert set(shard_meta) == METADATA_KEYS
        shard_entries = json.loads(shard_meta["quant.tensors"])
        assert shard_entries == {n: e for n, e in entries.items() if weight_map[n] == file}
        assert {n for n, f in out_index["weight_map"].items() if f == file} == set(stored)


# -- golden files --------------------------------------------------------------------------


@pytest.fixture
def golden_version(monkeypatch):
    """The producer version the golden files were written with (see make_golden.py)."""
    monkeypatch.setattr(quantcli, "__version__", make_golden.GOLDEN_VERSION)
    monkeypatch.setattr(quantized_format, "__version__", make_golden.GOLDEN_VERSION)


def test_golden_input_is_what_make_golden_writes():
    stored, meta = read_stored(make_golden.INPUT)
    want = make_golden.golden_tensors()
    assert meta == {"format": "pt"}
    assert set(stored) == set(want)
    for name, a in want.items():
        assert stored[name].dtype == a.dtype and stored[name].tobytes() == a.tobytes()


@pytest.mark.parametrize("name", make_golden.CASES)
def test_golden_bytes(tmp_path, golden_version, name):
    """compress still writes the committed bytes. On a deliberate format change, bump the
    format version if needed and run tests/data/make_golden.py (see its docstring)."""
    golden = (DATA / name).read_bytes()
    out = tmp_path / name
    result = run(*make_golden.compress_args(name, out))
    assert result.exit_code == 0, result.stderr
    data = out.read_bytes()
    if data != golden:  # say what changed before failing
        assert read_header(data)[0] == read_header(golden)[0]
        assert data == golden


@pytest.mark.parametrize("name", make_golden.CASES)
def test_golden_files_restore(tmp_path, name):
    """The committed files still read back, and to FORMAT.md's formulas."""
    path = DATA / name
    stored, meta = read_stored(path)
    assert set(meta) == METADATA_KEYS
    assert meta["quant.producer"] == f"quant {make_golden.GOLDEN_VERSION}"
    entries = json.loads(meta["quant.tensors"])
    assert set(entries) == {"proj.weight", "head.weight"}
    ok("decompress", path, "-o", tmp_path / "exact.safetensors", "--dtype", "float32", "-q")
    ok("decompress", path, "-o", tmp_path / "r.safetensors", "-q")
    exact, _ = read_stored(tmp_path / "exact.safetensors")
    restored, restored_meta = read_stored(tmp_path / "r.safetensors")
    original, original_meta = read_stored(make_golden.INPUT)
    assert restored_meta == original_meta
    assert set(restored) == set(original)
    for tensor, x in original.items():
        assert restored[tensor].dtype == x.dtype and restored[tensor].shape == x.shape
        if tensor not in entries:
            assert restored[tensor].tobytes() == x.tobytes()
            continue
        by_hand = restore_by_hand(stored, tensor, entries[tensor])
        assert np.array_equal(by_hand, exact[tensor])
        assert np.array_equal(by_hand.astype(x.dtype), restored[tensor])
        if entries[tensor]["scale_dtype"] == "float32":  # else the scale rounding adds error
            s = expand(stored[tensor + ".scale"], entries[tensor], x.shape)
            assert np.all(np.abs(x.astype(np.float32) - by_hand) <= s / 2 * (1 + 1e-6))


# -- refusals ------------------------------------------------------------------------------


def rewrite_metadata(src: Path, dst: Path, **changes: str) -> None:
    """Copy a safetensors file with some ``__metadata__`` values changed (data untouched)."""
    data = src.read_bytes()
    header, base = read_header(data)
    header["__metadata__"].update(changes)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    dst.write_bytes(len(text).to_bytes(8, "little") + text + data[base:])


def assert_error(result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_unknown_format_version_is_refused(tmp_path):
    future = tmp_path / "future.safetensors"
    rewrite_metadata(
        DATA / "golden_zeropoint8_channel.safetensors", future, **{"quant.format_version": "999"}
    )
    assert read_stored(future)[1]["quant.format_version"] == "999"  # still valid safetensors
    out = tmp_path / "out.safetensors"
    assert_error(run("decompress", future, "-o", out), 1, str(future), "999")
    assert not out.exists()
    assert_error(run("inspect", future), 1, str(future), "999")


def patch_tensor_bytes(src: Path, dst: Path, name: str, index: int, value: int) -> None:
    data = bytearray(src.read_bytes())
    header, base = read_header(bytes(data))
    start, _ = header[name]["data_offsets"]
    data[base + start + index] = value
    dst.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("golden", "byte", "what"),
    [
        # absmax 4 bits: the code -8 (nibble 0x8) never occurs
        ("golden_absmax4_group.safetensors", 0x80, "code out of range"),
        # zeropoint 3 bits: a zero point of 8 does not fit in 3 bits
        ("golden_zeropoint3_group_f16.safetensors", 8, "zero point out of range"),
    ],
)
def test_out_of_range_values_are_refused(tmp_path, golden, byte, what):
    bad = tmp_path / "bad.safetensors"
    tensor = "proj.weight" if what.startswith("code") else "proj.weight.zero_point"
    patch_tensor_bytes(DATA / golden, bad, tensor, 0, byte)
    assert_error(run("decompress", bad, "-o", tmp_path / "r.safetensors"), 1, what, str(bad))


def test_absmax8_code_minus_128_is_refused(tmp_path):
    src = tmp_path / "q.safetensors"
    ok("compress", DATA / "golden_input.safetensors", "-o", src, "-q")
    bad = tmp_path / "bad.safetensors"
    patch_tensor_bytes(src, bad, "proj.weight", 5, 0x80)  # int8 -128
    assert_error(run("decompress", bad, "-o", tmp_path / "r.safetensors"), 1, "code out of range")


# -- data alignment ------------------------------------------------------------------------

ITEMSIZE = {"F64": 8, "F32": 4, "I32": 4, "BF16": 2, "F16": 2, "U8": 1, "I8": 1}


def assert_aligned(path: Path) -> list[str]:
    """Every tensor's data starts at a multiple of its element size, counted from the start
    of the file (what loaders that view a mapped file as typed arrays need)."""
    header, base = read_header(path.read_bytes())
    header.pop("__metadata__", None)
    for name, entry in header.items():
        start = base + entry["data_offsets"][0]
        assert start % ITEMSIZE[entry["dtype"]] == 0, (name, entry)
    return list(header)


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_outputs_are_aligned_and_list_tensors_in_source_order(tmp_path, bits):
    """Odd-length packed codes come before float scales and kept float tensors in the source
    order; the data is still laid out so that every tensor is aligned, while the header (and
    so decompress) keeps the source order; inspect lists names in natural order."""
    rng = np.random.default_rng(5)
    tensors = {
        "a.weight": rng.standard_normal((17, 65)).astype(np.float32),  # odd-length codes
        "a.bias": rng.standard_normal(5).astype(np.float32),
        "b.weight": rng.standard_normal((33, 65)).astype(ml_dtypes.bfloat16),
        "b.norm": rng.standard_normal(3).astype(np.float16),
    }
    src = tmp_path / "in.safetensors"
    src.write_bytes(save_bytes(tensors))
    q = tmp_path / "q.safetensors"
    opts = ["--granularity", "group", "--group-size", "32", "--bits", str(bits)]
    ok("compress", src, "-o", q, "--scheme", "zeropoint", *opts, "-q")
    names = assert_aligned(q)
    logical = [n for n in names if not n.endswith((".scale", ".zero_point"))]
    assert logical == list(tensors)
    restored = tmp_path / "r.safetensors"
    ok("decompress", q, "-o", restored, "-q")
    assert assert_aligned(restored) == list(tensors)
    inspect = json.loads(ok("inspect", "--json", q).stdout)
    assert [t["tensor"] for t in inspect["tensors"]] == sorted(tensors)  # natural = plain here
    quantized = [t["tensor"] for t in inspect["tensors"] if t["spec"] is not None]
    assert quantized == ["a.weight", "b.weight"]


def test_files_in_the_earlier_unaligned_layout_still_restore(tmp_path):
    """legacy_unaligned.safetensors was written by quant 0.1.0 before the aligned layout
    (data in plan order, so its float32 scales follow odd-length codes). It restores to the
    same floats as a file compressed now from the same input."""
    old = DATA / "legacy_unaligned.safetensors"
    header, base = read_header(old.read_bytes())
    assert any((base + e["data_offsets"][0]) % 4 for n, e in header.items() if n.endswith("scale"))
    new = tmp_path / "new.safetensors"
    opts = ["--scheme", "zeropoint", "--bits", "3", "--granularity", "group", "--group-size", "32"]
    # round to nearest, as quant 0.1.0 had no search
    opts += ["--search", "none"]
    ok("compress", DATA / "legacy_unaligned_input.safetensors", "-o", new, *opts, "-q")
    assert_aligned(new)
    ok("decompress", old, "-o", tmp_path / "old_restored.safetensors", "-q")
    ok("decompress", new, "-o", tmp_path / "new_restored.safetensors", "-q")
    a, _ = read_stored(tmp_path / "old_restored.safetensors")
    b, _ = read_stored(tmp_path / "new_restored.safetensors")
    assert a.keys() == b.keys()
    order = ["a.weight", "a.bias", "b.weight"]
    assert assert_aligned(tmp_path / "old_restored.safetensors") == order
    assert assert_aligned(tmp_path / "new_restored.safetensors") == order
    assert all(a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a)
