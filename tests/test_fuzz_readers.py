"""Fuzzing every reader: whatever bytes quant is given, only a QuantError may escape.

Inputs are random bytes (some behind a real magic string, to get past format detection) and
valid files with bytes flipped, set, inserted, deleted or cut, or with their header rewritten
field by field (safetensors JSON, the .npy header dict, a sharded index, the quant.* metadata
of a quantized file). Every reader is driven as a command would drive it: open_input on a
.safetensors, .npy, .npz, a sharded index and stdin bytes; then every tensor of what opens is
read; quantized files also go through decompress and inspect (the ops functions).

Each input must either work or raise a QuantError whose message is one line; anything else
(an IndexError, a struct.error, a RecursionError, ...) is a bug. A watchdog fails an input
that takes more than WATCHDOG_SECONDS, so a hang is a failure too, not a stuck CI job.

The default number of inputs per test is small so that the suite stays fast; ``make fuzz``
sets QUANT_FUZZ_EXAMPLES=20000 for a long run.
"""

from __future__ import annotations

import contextlib
import faulthandler
import functools
import io
import json
import os
import shutil
import signal
import struct
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path
from unittest import mock

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from quantcli.cli.app import one_line
from quantcli.core.spec import QuantSpec
from quantcli.errors import InputError, QuantError, UsageError
from quantcli.io import open_input, save_bytes
from quantcli.ops.compress import compress
from quantcli.ops.decompress import decompress
from quantcli.ops.inspect_file import inspect_file
from quantcli.select import Selector

EXAMPLES = int(os.environ.get("QUANT_FUZZ_EXAMPLES", "30"))
WATCHDOG_SECONDS = 20

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # shared machines are noisy; the watchdog catches real hangs
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---------------------------------------------------------------------------------------
# Seeds: small valid files of every format (small, so that random edits often hit headers)


def _npy(array: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=version, allow_pickle=False)
    return buffer.getvalue()


def _npz(compressed: bool, **arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "layer.weight": rng.standard_normal((6, 8)).astype(np.float32),
        "layer.bias": rng.standard_normal(6).astype(np.float16),
        "emb": rng.standard_normal((4, 5)).astype(ml_dtypes.bfloat16),
        "ids": np.arange(5, dtype=np.int8),
        "scalar": np.array(3.5, np.float64),
        "empty": np.zeros((0, 3), np.float32),
    }


@functools.cache
def safetensors_seeds() -> tuple[bytes, ...]:
    t = _tensors()
    return (
        save_bytes(t, {"format": "pt"}),
        save_bytes({"w": t["layer.weight"]}),
        save_bytes({"b": t["layer.bias"], "e": t["empty"], "s": t["scalar"]}),
    )


@functools.cache
def npy_seeds() -> tuple[bytes, ...]:
    t = _tensors()
    return (
        _npy(t["layer.weight"]),
        _npy(np.asfortranarray(t["layer.weight"])),
        _npy(t["layer.bias"].astype(">f2"), version=(2, 0)),
        _npy(t["scalar"], version=(3, 0)),
        _npy(t["ids"]),
    )


@functools.cache
def npz_seeds() -> tuple[bytes, ...]:
    t = _tensors()
    small = {k: v for k, v in t.items() if k != "emb"}  # .npz has no bfloat16
    return (_npz(False, **small), _npz(True, **small), _npz(False, w=t["layer.weight"]))


def _all_seeds() -> tuple[bytes, ...]:
    return safetensors_seeds() + npy_seeds() + npz_seeds()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _sharded_seed(folder: Path) -> dict[str, bytes]:
    """name -> bytes of a two-shard checkpoint (index included)."""
    t = _tensors()
    shards = {
        "model-00001-of-00002.safetensors": {
            "a.weight": t["layer.weight"],
            "a.bias": t["layer.bias"],
        },
        "model-00002-of-00002.safetensors": {"b.weight": t["layer.weight"] * 2, "ids": t["ids"]},
    }
    files = {name: save_bytes(tensors) for name, tensors in shards.items()}
    weight_map = {tensor: name for name, tensors in shards.items() for tensor in tensors}
    index = {"metadata": {"total_size": 1234}, "weight_map": weight_map}
    files["model.safetensors.index.json"] = json.dumps(index, indent=2).encode()
    return files


INDEX = "model.safetensors.index.json"


@functools.cache
def quantized_seeds() -> tuple[tuple[str, dict[str, bytes]], ...]:
    """(name, {file: bytes}) of quantized outputs: single files and one sharded folder.

    Made by quant compress itself, with a spread of schemes, bit widths and granularities.
    """
    rng = np.random.default_rng(3)
    specs = [
        QuantSpec("absmax", 8, "channel"),
        QuantSpec("zeropoint", 4, "group", group_size=3),
        QuantSpec("absmax", 2, "tensor", scale_dtype="bfloat16"),
        QuantSpec("zeropoint", 8, "channel", axis=1, scale_dtype="float16"),
        QuantSpec("absmax", 3, "group", group_size=4, calibration="percentile", percentile=99),
    ]
    seeds = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source = folder / "in.safetensors"
        tensors = {
            "w": rng.standard_normal((6, 10)).astype(np.float32),
            "v": rng.standard_normal((3, 2, 5)).astype(np.float16),
            "bias": rng.standard_normal(6).astype(np.float32),
            "ids": np.arange(4, dtype=np.int32),
        }
        source.write_bytes(save_bytes(tensors, {"format": "pt"}))
        np.save(folder / "one.npy", tensors["w"])
        for i, spec in enumerate(specs):
            out = folder / f"q{i}.safetensors"
            compress(str(source), str(out), Selector(spec, min_elements=1))
            seeds.append((f"q{i}", {"q.safetensors": out.read_bytes()}))
        out = folder / "npy.q.safetensors"
        compress(str(folder / "one.npy"), str(out), Selector(specs[1]))
        seeds.append(("npy", {"q.safetensors": out.read_bytes()}))
        ckpt = folder / "ckpt"
        ckpt.mkdir()
        for name, data in _sharded_seed(ckpt).items():
            _write(ckpt / name, data)
        compress(str(ckpt), str(folder / "ckq"), Selector(specs[1], min_elements=1))
        seeds.append(("sharded", {p.name: p.read_bytes() for p in (folder / "ckq").iterdir()}))
    return tuple(seeds)


# ---------------------------------------------------------------------------------------
# Mutations

INTERESTING_INTS = [
    0,
    1,
    2,
    7,
    8,
    9,
    255,
    256,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**32,
    2**53,
    2**62,
    2**63 - 1,
    2**63,
    2**64 - 1,
    100_000_000,
    100_000_001,
]


def positions(data: st.DataObject, size: int) -> int:
    """A byte position, biased towards the start, where the headers are."""
    return data.draw(
        st.one_of(st.integers(0, min(size - 1, 128)), st.integers(0, size - 1)), label="pos"
    )


def mutate_bytes(data: st.DataObject, seed: bytes, keep_length: bool = False) -> bytes:
    """``seed`` with a few random byte-level edits (mostly one, so that some inputs get past
    the first check); ``keep_length``: only edits that change values, not positions."""
    buf = bytearray(seed)
    kinds = ["flip", "set", "int"] + ([] if keep_length else ["cut", "insert", "delete", "dup"])
    for _ in range(data.draw(st.sampled_from([1, 1, 1, 1, 2, 3, 6]), label="edits")):
        if not buf:
            break
        kind = data.draw(st.sampled_from(kinds), label="kind")
        pos = positions(data, len(buf))
        if kind == "flip":
            buf[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "set":
            buf[pos] = data.draw(st.integers(0, 255))
        elif kind == "int":  # a length or offset field set to an edge value
            value = data.draw(st.sampled_from(INTERESTING_INTS)) % 2**64
            width = min(data.draw(st.sampled_from([2, 4, 8])), len(buf) - pos)
            buf[pos : pos + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
        elif kind == "cut":
            del buf[pos:]
        elif kind == "insert":
            buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del buf[pos : pos + data.draw(st.integers(1, 16))]
        else:  # repeat a chunk (duplicated JSON keys, zip records, ...)
            end = pos + data.draw(st.integers(1, 64))
            buf[pos:pos] = buf[pos:end]
    return bytes(buf)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.sampled_from(INTERESTING_INTS + [-1, -(2**63), 3, 4, 16, 24])
    | st.integers(-(2**70), 2**70)
    | st.integers(0, 100)
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["F32", "BF16", "F16", "I8", "U8", "C64", "F4", "F8_E8M0", "", "f4"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)


def mutate_json(data: st.DataObject, value: object, depth: int = 0) -> object:
    """``value`` with one node replaced, removed or added, recursively."""
    if isinstance(value, dict) and value and depth < 4:
        key = data.draw(st.sampled_from(sorted(value)), label="key")
        action = data.draw(st.sampled_from(["descend", "replace", "delete", "add", "rename"]))
        value = dict(value)
        if action == "descend":
            value[key] = mutate_json(data, value[key], depth + 1)
        elif action == "replace":
            value[key] = data.draw(json_values, label="new value")
        elif action == "delete":
            del value[key]
        elif action == "add":
            value[data.draw(st.text(max_size=8), label="new key")] = data.draw(json_values)
        else:
            value[data.draw(st.text(max_size=8), label="new name")] = value.pop(key)
        return value
    if isinstance(value, list) and value and depth < 4:
        value = list(value)
        i = data.draw(st.integers(0, len(value) - 1))
        action = data.draw(st.sampled_from(["descend", "replace", "delete", "append"]))
        if action == "descend":
            value[i] = mutate_json(data, value[i], depth + 1)
        elif action == "replace":
            value[i] = data.draw(json_values)
        elif action == "delete":
            del value[i]
        else:
            value.append(data.draw(json_values))
        return value
    if isinstance(value, int) and not isinstance(value, bool) and data.draw(st.booleans()):
        return value + data.draw(st.integers(-9, 9))
    return data.draw(json_values, label="new value")


def split_safetensors(raw: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def join_safetensors(data: st.DataObject, header: object, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    length = len(text)
    if data.draw(st.integers(0, 9), label="wrong length") == 0:
        length = data.draw(st.sampled_from(INTERESTING_INTS + [length - 1, length + 1])) % 2**64
    return struct.pack("<Q", length) + text + body


ST_DTYPES = [
    "F64",
    "F32",
    "F16",
    "BF16",
    "F8_E4M3",
    "F8_E5M2",
    "I64",
    "I32",
    "I16",
    "I8",
    "U64",
    "U32",
    "U16",
    "U8",
    "BOOL",
    "C64",
]


def plausible_entry(data: st.DataObject, entry: dict, header: dict) -> dict:
    """``entry`` with one field changed to a value a real (if broken) file could hold, so that
    the checks beyond JSON parsing are reached: dtypes of the same or another size, shapes and
    offsets near the real ones (overlaps, holes, size mismatches, out of bounds)."""
    entry = dict(entry) if isinstance(entry, dict) else {}
    field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "swap"]), label="field")
    offsets = sorted(
        {
            o
            for e in header.values()
            if isinstance(e, dict) and isinstance(e.get("data_offsets"), list)
            for o in e["data_offsets"]
            if type(o) is int
        }
    )
    near = st.builds(
        lambda o, d: max(o + d, 0),
        st.sampled_from(offsets or [0]),
        st.sampled_from([0, 0, 0, 1, -1, 2, -2, 4, -4, 8]),
    )
    if field == "dtype":
        entry["dtype"] = data.draw(st.sampled_from(ST_DTYPES))
    elif field == "shape":
        entry["shape"] = data.draw(st.lists(st.integers(0, 12), max_size=4))
    elif field == "data_offsets":
        entry["data_offsets"] = [data.draw(near), data.draw(near)]
    else:  # another tensor's offsets: an exact overlap
        other = header[data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))]
        entry["data_offsets"] = other.get("data_offsets") if isinstance(other, dict) else None
    return entry


def mutate_safetensors_header(data: st.DataObject, raw: bytes) -> bytes:
    """A valid safetensors file with its JSON header edited field by field."""
    header, body = split_safetensors(raw)
    for _ in range(data.draw(st.integers(1, 3), label="header edits")):
        tensors = (
            sorted(k for k in header if k != "__metadata__") if isinstance(header, dict) else []
        )
        if tensors and data.draw(st.booleans(), label="plausible edit"):
            header = dict(header)
            name = data.draw(st.sampled_from(tensors), label="tensor")
            header[name] = plausible_entry(data, header[name], header)
        else:
            header = mutate_json(data, header)
    if data.draw(st.booleans(), label="edit body too"):
        body = mutate_bytes(data, body) if body else body
    return join_safetensors(data, header, body)


NPY_DESCRS = [
    "<f4",
    ">f8",
    "<f2",
    "|b1",
    "<i8",
    "<c8",
    "<c16",
    "|O",
    "<U3",
    "|S4",
    "<M8[s]",
    "|V8",
    "<f16",
    [("a", "<f4")],
    [("a", "|O")],
    ("<f4", (2,)),
    "bfloat16",
    "",
    7,
    None,
]


def mutate_npy(data: st.DataObject, raw: bytes) -> bytes:
    """A valid .npy with its header dict rewritten (descr, shape, order, version, length)."""
    major = raw[6]
    length_size = 2 if major == 1 else 4
    (n,) = struct.unpack("<H" if major == 1 else "<I", raw[8 : 8 + length_size])
    fields = eval(raw[8 + length_size : 8 + length_size + n].decode("latin1"))  # our own seed
    body = raw[8 + length_size + n :]
    field = data.draw(st.sampled_from(["descr", "shape", "fortran_order", "keys", "text"]))
    if field == "descr":
        fields["descr"] = data.draw(st.sampled_from(NPY_DESCRS))
    elif field == "shape":
        fields["shape"] = tuple(
            data.draw(
                st.lists(
                    st.one_of(
                        st.sampled_from(INTERESTING_INTS + [-1, True, 3, 6, 8, 48]),
                        st.integers(0, 100),
                    ),
                    max_size=5,
                )
            )
        )
    elif field == "fortran_order":
        fields["fortran_order"] = data.draw(st.sampled_from([0, 1, None, "yes", True, False]))
    elif field == "keys":
        fields[data.draw(st.text(max_size=5))] = 1
    text = repr(fields)
    if field == "text":
        text = data.draw(
            st.sampled_from(
                [
                    "",
                    "{",
                    "{'descr': '<f4'",
                    "()" * 3000,
                    "[" * 500 + "]" * 500,
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (1e400,)}",
                    "__import__('os')",
                    "{**{}}",
                    "{'a': lambda: 1}",
                ]
            )
        )
    header = text.encode("latin1", "replace") + b"\n"
    version = data.draw(st.sampled_from([(1, 0), (2, 0), (3, 0), (major, 0), (4, 0), (1, 1)]))
    fmt = "<H" if version[0] == 1 else "<I"
    length = len(header)
    if data.draw(st.integers(0, 7)) == 0:
        length = data.draw(st.sampled_from([0, 1, length - 1, length + 1, 10_001, 65_535]))
    if fmt == "<H":
        length %= 2**16
    head = b"\x93NUMPY" + bytes(version) + struct.pack(fmt, length) + header
    return head + (body if data.draw(st.booleans()) else mutate_bytes(data, body or b"\0"))


def mutate_npz(data: st.DataObject, raw: bytes) -> bytes:
    """A .npz edited at the byte level, or rebuilt with one member replaced."""
    if data.draw(st.booleans(), label="rebuild"):
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            members = {info.filename: zf.read(info) for info in zf.infolist()}
        name = data.draw(st.sampled_from(sorted(members)))
        action = data.draw(st.sampled_from(["npy", "rename", "dir", "dup"]))
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as zf:
            for member, content in members.items():
                if member == name and action == "npy":
                    content = mutate_npy(data, content)
                elif member == name and action == "rename":
                    member = data.draw(
                        st.sampled_from(["x.txt", ".npy", "../a.npy", "a/b.npy", "x"])
                    )
                elif member == name and action == "dir":
                    zf.writestr(member[:-4] + "/", b"")
                elif member == name and action == "dup":
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # "Duplicate name": what we want
                        zf.writestr(member, content)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    zf.writestr(member, content)
        return out.getvalue()
    return mutate_bytes(data, raw)


# ---------------------------------------------------------------------------------------
# Checks


class Hang(BaseException):
    """An input took too long. A BaseException, so ``except Exception`` cannot swallow it."""


@contextlib.contextmanager
def watchdog(seconds: float = WATCHDOG_SECONDS):
    """Fail an input that takes longer than ``seconds``; a hang in C code (where the Python
    signal handler cannot run) makes faulthandler dump every stack and stop the run."""
    if not hasattr(signal, "setitimer"):  # Windows: no SIGALRM
        yield
        return

    def on_alarm(signum, frame):
        raise Hang(f"an input took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(seconds * 6, exit=True)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        faulthandler.cancel_dump_traceback_later()


def check_message(exc: QuantError, usage_ok: bool = False) -> None:
    """A bad input is exit code 1 (an InputError), one line, naming where; ``usage_ok``: a
    usage error (exit 2) is acceptable too, when it is about the output the test chose."""
    message = str(exc)
    if not (usage_ok and isinstance(exc, UsageError) and " output in " in message):
        assert isinstance(exc, InputError), f"{type(exc).__name__} for a bad input: {message}"
    assert message, f"{type(exc).__name__} without a message"
    # Messages quote names from the file as they are, and a name may hold a newline or an
    # escape sequence: the CLI escapes control characters, so the printed line is one line.
    assert one_line(message).isprintable(), f"not one printable line: {message!r}"
    assert " in " in message and ": " in message, f"message without <what> in <where>: {message!r}"
    event(f"{type(exc).__name__}: {message.split(' in ')[0][:40]}")  # --hypothesis-show-statistics


def read_everything(path: str) -> None:
    """Open ``path`` as a command would, read every tensor, inspect it. Only QuantError may
    escape, and arrays must be what the header promised."""
    try:
        with open_input(path) as source:
            for info in source.infos():
                array = source.read(info.name)
                assert array.dtype == info.dtype, (info, array.dtype)
                assert array.shape == info.shape, (info, array.shape)
                assert not array.flags.writeable
                array.tobytes()  # touch every byte
        event("opened and read")
    except QuantError as exc:
        check_message(exc)
    try:
        inspect_file(path)
    except QuantError as exc:
        check_message(exc)


def fuzz_file(folder: Path, suffix: str, content: bytes) -> None:
    """Write ``content`` as ``input<suffix>``, read it every way, check it is unchanged."""
    path = folder / f"input{suffix}"
    path.write_bytes(content)
    try:
        with watchdog():
            read_everything(str(path))
        assert path.read_bytes() == content, "the input was modified"
    finally:
        path.unlink()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


SUFFIXES = [".safetensors", ".npy", ".npz", ".bin", ""]


# ---------------------------------------------------------------------------------------
# The fuzz tests


@FUZZ
@given(
    content=st.one_of(
        st.binary(max_size=512),
        st.tuples(
            st.sampled_from(
                [
                    b"\x93NUMPY\x01\x00",
                    b"\x93NUMPY\x02\x00",
                    b"\x93NUMPY\x03\x00",
                    b"PK\x03\x04",
                    b"PK\x05\x06",
                    b"{",
                    b"\0\0\0\0\0\0\0\0{",
                ]
            ),
            st.binary(max_size=512),
        ).map(lambda parts: parts[0] + parts[1]),
        st.tuples(st.integers(0, 600), st.binary(max_size=600)).map(
            lambda parts: struct.pack("<Q", parts[0]) + b"{" + parts[1]
        ),
    ),
    suffix=st.sampled_from(SUFFIXES),
)
def test_random_bytes(workdir, content, suffix):
    fuzz_file(workdir, suffix, content)


@FUZZ
@given(data=st.data(), seed=st.sampled_from(range(3)), structured=st.booleans())
def test_mutated_safetensors(workdir, data, seed, structured):
    raw = safetensors_seeds()[seed]
    content = mutate_safetensors_header(data, raw) if structured else mutate_bytes(data, raw)
    fuzz_file(workdir, data.draw(st.sampled_from([".safetensors", ".bin"])), content)


@FUZZ
@given(data=st.data(), seed=st.sampled_from(range(5)), structured=st.booleans())
def test_mutated_npy(workdir, data, seed, structured):
    raw = npy_seeds()[seed]
    content = mutate_npy(data, raw) if structured else mutate_bytes(data, raw)
    fuzz_file(workdir, data.draw(st.sampled_from([".npy", ".safetensors"])), content)


@FUZZ
@given(data=st.data(), seed=st.sampled_from(range(3)))
def test_mutated_npz(workdir, data, seed):
    content = mutate_npz(data, npz_seeds()[seed])
    fuzz_file(workdir, data.draw(st.sampled_from([".npz", ".npy"])), content)


SHARD_NAMES = [
    "../model-00001-of-00002.safetensors",
    "/etc/passwd",
    "C:\\x.safetensors",
    "a\\b",
    "sub/../model-00001-of-00002.safetensors",
    ".",
    "",
    "./model-00001-of-00002.safetensors",
    INDEX,
    "missing.safetensors",
    "a\0b",
    "x" * 300,
    "\n.safetensors",
]


@FUZZ
@given(data=st.data())
def test_mutated_sharded(workdir, data):
    files = _sharded_seed(workdir)
    target = data.draw(st.sampled_from([INDEX] * 3 + sorted(files)), label="file")
    kind = data.draw(st.sampled_from(["bytes", "json", "shard names"]), label="kind")
    if target != INDEX and kind != "bytes":
        files[target] = mutate_safetensors_header(data, files[target])
    elif kind == "bytes":
        files[target] = mutate_bytes(data, files[target])
    elif kind == "json":
        files[INDEX] = json.dumps(mutate_json(data, json.loads(files[INDEX]))).encode()
    else:
        index = json.loads(files[INDEX])
        tensor = data.draw(st.sampled_from(sorted(index["weight_map"])))
        index["weight_map"][tensor] = data.draw(
            st.one_of(st.sampled_from(SHARD_NAMES), json_values)
        )
        files[INDEX] = json.dumps(index).encode()
    folder = Path(tempfile.mkdtemp(dir=workdir))
    for name, content in files.items():
        _write(folder / name, content)
    try:
        with watchdog():
            read_everything(str(folder / INDEX))
            read_everything(str(folder))
        for name, content in files.items():
            assert (folder / name).read_bytes() == content, f"{name} was modified"
    finally:
        for name in files:
            (folder / name).unlink()
        folder.rmdir()


class FakeStdin:
    def __init__(self, data: bytes) -> None:
        self.buffer = io.BytesIO(data)

    def isatty(self) -> bool:
        return False


@FUZZ
@given(data=st.data())
def test_stdin_bytes(data):
    if data.draw(st.booleans(), label="random"):
        content = data.draw(st.binary(max_size=512))
    else:
        content = mutate_bytes(data, data.draw(st.sampled_from(_all_seeds())))
    with watchdog():
        try:
            with mock.patch.object(sys, "stdin", FakeStdin(content)), open_input("-") as source:
                for info in source.infos():
                    array = source.read(info.name)
                    assert (array.dtype, array.shape) == (info.dtype, info.shape)
                    array.tobytes()
            event("opened and read")
        except QuantError as exc:
            check_message(exc)


# Values for each field of a quant.tensors entry: edges, wrong types, other valid choices.
SPEC_VALUES = {
    "scheme": ["absmax", "zeropoint", "symmetric", "asymmetric", "nf4", "", None],
    "bits": [1, 2, 3, 4, 7, 8, 9, 0, -8, 2.5, "8", None, True],
    "granularity": ["tensor", "channel", "group", "row", None],
    "axis": [-4, -3, -2, -1, 0, 1, 2, 3, 7, 2**63, 0.5, "0", None, False],
    "group_size": [0, 1, 2, 3, 4, 5, 7, 11, 64, 2**40, -1, 1.5, None],
    "calibration": ["minmax", "percentile", "mse", None],
    "percentile": [50, 50.01, 99.99, 100, 101, "nan", "inf", None, "x"],
    "scale_dtype": ["float32", "float16", "bfloat16", "float64", "F32", None],
    "shape": [
        [],
        [0],
        [1],
        [6, 10],
        [10, 6],
        [60],
        [3, 2, 5],
        [6, 5, 2],
        [2**40, 0],
        [-1, 6],
        [6, 10, 1],
        [[6], 10],
        "6,10",
        None,
    ],
    "dtype": ["F32", "F16", "BF16", "F64", "F8_E4M3", "I8", "I32", "BOOL", "C64", "F4", None],
}


QUANT_KEYS = [
    "quant.format_version",
    "quant.tensors",
    "quant.source_metadata",
    "quant.source_format",
    "quant.format",
]


def mutate_quantized(data: st.DataObject, raw: bytes) -> bytes:
    """A quantized safetensors file with its quant.* metadata, its header or its bytes edited."""
    kind = data.draw(st.sampled_from(["spec", "metadata", "header", "bytes", "data"]), label="kind")
    if kind == "bytes":
        return mutate_bytes(data, raw)
    header, body = split_safetensors(raw)
    if kind == "data":  # codes, scales and zero points: out of range, NaN, zero, negative
        (n,) = struct.unpack("<Q", raw[:8])
        return raw[: 8 + n] + mutate_bytes(data, body, keep_length=True)
    if kind == "header":
        return join_safetensors(data, mutate_json(data, header), body)
    meta = header["__metadata__"]
    if kind == "spec":
        tensors = json.loads(meta["quant.tensors"])
        name = data.draw(st.sampled_from(sorted(tensors)))
        field = data.draw(st.sampled_from(sorted(tensors[name]) + ["*"]))
        if field == "*":
            tensors = mutate_json(data, tensors)
        else:
            values = SPEC_VALUES.get(field, [])
            tensors[name][field] = data.draw(
                st.one_of(st.sampled_from(values), json_values) if values else json_values,
                label=field,
            )
        meta["quant.tensors"] = json.dumps(tensors)
    else:
        key = data.draw(st.sampled_from(QUANT_KEYS))
        meta[key] = data.draw(
            st.one_of(
                st.sampled_from(
                    [
                        "1",
                        "2",
                        "",
                        "{",
                        "[]",
                        "null",
                        "quantcli",
                        "npy",
                        "npz",
                        '{"a": 1}',
                        "{}",
                        "[1, 2]",
                    ]
                ),
                st.text(max_size=10),
            )
        )
    return join_safetensors(data, header, body)


@FUZZ
@given(data=st.data(), seed=st.sampled_from(range(7)))
def test_mutated_quantized_files(workdir, data, seed):
    name, files = quantized_seeds()[seed]
    files = dict(files)
    target = data.draw(st.sampled_from(sorted(files)), label="file")
    if target.endswith(".json"):
        index = json.loads(files[target])
        if data.draw(st.booleans()):
            index = mutate_json(data, index)
        else:
            key = data.draw(st.sampled_from(QUANT_KEYS))
            index["metadata"][key] = data.draw(st.one_of(json_values, st.sampled_from(["2", "{"])))
        files[target] = json.dumps(index).encode()
    else:
        files[target] = mutate_quantized(data, files[target])
    folder = Path(tempfile.mkdtemp(dir=workdir))
    out_folder = Path(tempfile.mkdtemp(dir=workdir))
    for file, content in files.items():
        _write(folder / file, content)
    source = str(folder if name == "sharded" else folder / "q.safetensors")
    suffix = data.draw(st.sampled_from([".safetensors", ".npz", ".npy"]))
    output = out_folder / ("restored" if name == "sharded" else f"restored{suffix}")
    try:
        with watchdog():
            try:
                decompress(source, str(output), force=True)
                event("decompressed")
            except QuantError as exc:
                check_message(exc, usage_ok=True)
                assert not output.exists(), "a failed decompress left an output"
            try:
                inspect_file(source)
                event("inspected")
            except QuantError as exc:
                check_message(exc)
        leftovers = [p.name for p in out_folder.rglob("*") if p.name.endswith(".tmp")]
        assert not leftovers, f"temp files left behind: {leftovers}"
        for file, content in files.items():
            assert (folder / file).read_bytes() == content, f"{file} was modified"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(out_folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# GGUF: the same fuzzing for .gguf files, plus the round trip of whatever is accepted
#
# Seeds are written by quant's writer and by llama.cpp's gguf package (with quantized
# tensors). Structured mutations set one integer field of the header (a count, a length, a
# value type, a dimension, a ggml type, an offset) to an edge value; the fields are found by
# the small walker below, which does not use quant's parser.

import gguf  # noqa: E402  (a dev dependency, used only by this block)

from quantcli.io.gguf_file import GGUFReader, GGUFValue, GGUFValueType  # noqa: E402
from quantcli.io.gguf_writer import save_gguf_bytes, write_copy  # noqa: E402


@functools.cache
def gguf_seeds() -> tuple[bytes, ...]:
    t = _tensors()
    V = GGUFValueType
    fields = {
        "general.architecture": GGUFValue(V.STRING, "llama"),
        "general.alignment": GGUFValue(V.UINT32, 16),
        "n": GGUFValue(V.UINT64, 7),
        "ok": GGUFValue(V.BOOL, True),
        "tokens": GGUFValue(V.ARRAY, ["a", "bc", ""], V.STRING),
        "scores": GGUFValue(V.ARRAY, [0.5, 1.5], V.FLOAT32),
        "nested": GGUFValue(V.ARRAY, [GGUFValue(V.ARRAY, [1, 2], V.INT8)], V.ARRAY),
    }
    plain = {k: v for k, v in t.items() if k not in ("empty", "scalar")}
    seeds = [
        save_gguf_bytes(fields, plain),
        save_gguf_bytes({}, {"w": t["layer.weight"]}),
        save_gguf_bytes({"k": GGUFValue(V.INT32, -1)}, {}),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "q.gguf")
        writer = gguf.GGUFWriter(path, "llama")
        writer.add_array("ids", [1, 2, 3])
        x = np.random.default_rng(5).standard_normal((2, 64)).astype(np.float32)
        writer.add_tensor(
            "q8",
            gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0),
            raw_dtype=gguf.GGMLQuantizationType.Q8_0,
        )
        writer.add_tensor("w", x)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        seeds.append(Path(path).read_bytes())
    return tuple(seeds)


def gguf_int_fields(raw: bytes) -> list[tuple[int, int]]:
    """(offset, width) of every integer field of a valid GGUF header, in file order."""
    fields = [(4, 4), (8, 8), (16, 8)]
    n_tensors, n_kv = struct.unpack_from("<QQ", raw, 8)
    pos = 24

    def string(pos: int) -> int:
        fields.append((pos, 8))
        return pos + 8 + struct.unpack_from("<Q", raw, pos)[0]

    def value(pos: int, vtype: int) -> int:
        if vtype == 8:
            return string(pos)
        if vtype == 9:
            item, count = struct.unpack_from("<IQ", raw, pos)
            fields.extend([(pos, 4), (pos + 4, 8)])
            pos += 12
            for _ in range(count):
                pos = value(pos, item)
            return pos
        width = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}[vtype]
        fields.append((pos, width))
        return pos + width

    for _ in range(n_kv):
        pos = string(pos)
        fields.append((pos, 4))
        pos = value(pos + 4, struct.unpack_from("<I", raw, pos)[0])
    for _ in range(n_tensors):
        pos = string(pos)
        (n_dims,) = struct.unpack_from("<I", raw, pos)
        fields.append((pos, 4))
        pos += 4
        for _ in range(n_dims):
            fields.append((pos, 8))
            pos += 8
        fields.extend([(pos, 4), (pos + 4, 8)])
        pos += 12
    return fields


def mutate_gguf(data: st.DataObject, raw: bytes) -> bytes:
    """A valid GGUF file with one to three header integers set to edge or nearby values."""
    buf = bytearray(raw)
    fields = gguf_int_fields(raw)
    for _ in range(data.draw(st.integers(1, 3), label="field edits")):
        pos, width = data.draw(st.sampled_from(fields), label="field")
        old = int.from_bytes(buf[pos : pos + width], "little")
        new = data.draw(
            st.one_of(
                st.sampled_from(INTERESTING_INTS + [3, 4, 13, 31, 39, 41, 42, 63, 64, 99]),
                st.integers(old - 40, old + 40),
            ),
            label="value",
        )
        buf[pos : pos + width] = (new % 2 ** (8 * width)).to_bytes(width, "little")
    return bytes(buf)


def read_gguf_everything(path: str) -> None:
    """Open ``path`` as a command would; for GGUF, also read every tensor's blocks and check
    that what was accepted is written back with the same fields, tensors and bytes."""
    try:
        with open_input(path) as source:
            for info in source.infos():
                try:
                    array = source.read(info.name)
                except QuantError as exc:  # a quantized tensor: not decoded yet
                    check_message(exc)
                    continue
                assert (array.dtype, array.shape) == (info.dtype, info.shape)
                assert not array.flags.writeable
                array.tobytes()
            if isinstance(source, GGUFReader):
                copy = io.BytesIO()
                write_copy(source, copy)
                again = GGUFReader.from_bytes(copy.getvalue())
                assert again.fields == source.fields
                assert again.tensors() == source.tensors()
                for tensor in source.tensors():
                    ours = source.read_blocks(tensor.name).blocks
                    assert ours.tobytes() == again.read_blocks(tensor.name).blocks.tobytes()
        event("opened and read")
    except QuantError as exc:
        check_message(exc)
    try:
        inspect_file(path)
    except QuantError as exc:
        check_message(exc)


@FUZZ
@given(data=st.data(), seed=st.sampled_from(range(4)), structured=st.booleans())
def test_mutated_gguf(workdir, data, seed, structured):
    raw = gguf_seeds()[seed]
    content = mutate_gguf(data, raw) if structured else mutate_bytes(data, raw)
    path = workdir / data.draw(st.sampled_from(["input.gguf", "input.bin", "input"]))
    path.write_bytes(content)
    try:
        with watchdog():
            read_gguf_everything(str(path))
        assert path.read_bytes() == content, "the input was modified"
    finally:
        path.unlink()


GGUF_PREFIXES = [
    b"GGUF",
    b"GGUF\x03\x00\x00\x00",
    b"GGUF\x03\x00\x00\x00" + struct.pack("<QQ", 0, 1),
    b"GGUF\x03\x00\x00\x00" + struct.pack("<QQ", 1, 0),
    b"GGUF\x02\x00\x00\x00" + struct.pack("<QQ", 1, 1),
]


@FUZZ
@given(
    prefix=st.sampled_from(GGUF_PREFIXES),
    content=st.binary(max_size=600),
    suffix=st.sampled_from([".gguf", ""]),
)
def test_random_bytes_after_the_gguf_magic(workdir, prefix, content, suffix):
    fuzz_file(workdir, suffix, prefix + content)


@FUZZ
@given(data=st.data())
def test_gguf_on_stdin(data):
    content = mutate_bytes(data, data.draw(st.sampled_from(gguf_seeds())))
    with watchdog():
        try:
            with mock.patch.object(sys, "stdin", FakeStdin(content)), open_input("-") as source:
                for info in source.infos():
                    if isinstance(source, GGUFReader):
                        source.read_blocks(info.name).blocks.tobytes()
            event("opened and read")
        except QuantError as exc:
            check_message(exc)


# -- compressed-tensors model folders -------------------------------------------------------

CT_CONFIG = {"model_type": "llama", "vocab_size": 40, "architectures": ["LlamaForCausalLM"]}


@functools.cache
def compressed_tensors_seeds() -> tuple[tuple[str, dict[str, bytes]], ...]:
    """Model folders written by quant compress: (name, {file: bytes}), symmetric and
    asymmetric, one file and sharded; then one file of each float format (fp8, nvfp4,
    mxfp4)."""
    rng = np.random.default_rng(7)
    tensors = {
        "model.embed_tokens.weight": rng.standard_normal((40, 32)).astype(np.float32),
        "model.layers.0.q_proj.weight": rng.standard_normal((24, 64)).astype(np.float32),
        "model.layers.0.o_proj.weight": rng.standard_normal((33, 32)).astype(np.float32),
        "model.norm.weight": np.ones(32, np.float32),
    }
    seeds = []
    with tempfile.TemporaryDirectory() as tmp:
        for scheme in ("absmax", "zeropoint"):
            for sharded in (False, True):
                src = Path(tmp) / f"src-{scheme}-{sharded}"
                src.mkdir()
                (src / "config.json").write_text(json.dumps(CT_CONFIG))
                (src / "tokenizer.json").write_text("{}")
                if sharded:
                    names = sorted(tensors)
                    weight_map = {}
                    for i, part in enumerate((names[:2], names[2:])):
                        file = f"model-{i}.safetensors"
                        _write(src / file, save_bytes({n: tensors[n] for n in part}))
                        weight_map.update(dict.fromkeys(part, file))
                    index = {"metadata": {}, "weight_map": weight_map}
                    (src / "model.safetensors.index.json").write_text(json.dumps(index))
                else:
                    _write(src / "model.safetensors", save_bytes(tensors))
                out = Path(tmp) / f"out-{scheme}-{sharded}"
                spec = QuantSpec(scheme=scheme, bits=4, granularity="group", group_size=32)
                compress(str(src), str(out), Selector(spec, min_elements=1))
                files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
                seeds.append((f"{scheme}-{'sharded' if sharded else 'single'}", files))
        src = Path(tmp) / "src-absmax-False"
        for spec in (QuantSpec("fp8"), QuantSpec("nvfp4"), QuantSpec("mxfp4-ct")):
            out = Path(tmp) / f"out-{spec.scheme}"
            compress(str(src), str(out), Selector(spec, min_elements=1))
            files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
            seeds.append((spec.scheme, files))
    return tuple(seeds)


@FUZZ
@given(data=st.data(), seed=st.sampled_from(range(7)))
def test_mutated_compressed_tensors_folders(workdir, data, seed):
    """A damaged config.json (its quantization_config above all) or weight file: decompress,
    inspect and report --against either work or say what is wrong in one line, write
    nothing on failure and never touch the input."""
    _, files = compressed_tensors_seeds()[seed]
    files = dict(files)
    target = data.draw(st.sampled_from(sorted(files)), label="file")
    if target == "config.json":
        config = json.loads(files[target])
        if data.draw(st.booleans(), label="whole quantization_config"):
            config["quantization_config"] = mutate_json(data, config["quantization_config"])
        else:
            group = config["quantization_config"]["config_groups"]["group_0"]
            key = data.draw(st.sampled_from(sorted(group["weights"])), label="key")
            group["weights"][key] = data.draw(json_values, label="value")
        files[target] = json.dumps(config).encode()
    elif target.endswith(".json"):
        files[target] = json.dumps(mutate_json(data, json.loads(files[target]))).encode()
    elif data.draw(st.booleans(), label="structured"):
        files[target] = mutate_safetensors_header(data, files[target])
    else:
        files[target] = mutate_bytes(data, files[target])
    folder = Path(tempfile.mkdtemp(dir=workdir))
    out_folder = Path(tempfile.mkdtemp(dir=workdir))
    for file, content in files.items():
        _write(folder / file, content)
    output = out_folder / "restored"
    try:
        with watchdog():
            try:
                decompress(str(folder), str(output), force=True)
                event("decompressed")
            except QuantError as exc:
                check_message(exc, usage_ok=True)
                assert not output.exists(), "a failed decompress left an output"
            try:
                inspect_file(str(folder))
                event("inspected")
            except QuantError as exc:
                check_message(exc)
        leftovers = [p.name for p in out_folder.iterdir() if p.name.startswith(".")]
        assert not leftovers, f"temp folders left behind: {leftovers}"
        for file, content in files.items():
            assert (folder / file).read_bytes() == content, f"{file} was modified"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(out_folder, ignore_errors=True)
