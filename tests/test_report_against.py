"""``quant report --against`` refuses a quantized file made from other weights.

compress records a fingerprint of each source tensor (docs/FORMAT.md); --against checks names,
shapes, dtypes and those fingerprints before measuring anything, and names the first tensor
that differs. The fingerprint is recomputed here from its documented definition.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from typer.testing import CliRunner

from quantcli.cli import app
from quantcli.ops.fingerprint import fingerprint

REPO = Path(__file__).resolve().parent.parent
TRANSFORMER = REPO / "sample_weights" / "transformer.safetensors"
ENV = {"COLUMNS": "100", "NO_COLOR": "1"}


def run(*args):
    result = CliRunner().invoke(app, [str(a) for a in args], env=ENV)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def fails(result, code: int, *fragments: str) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def documented_fingerprint(x: np.ndarray) -> str:
    """docs/FORMAT.md: BLAKE2b-64 of "<dtype>;<shape>;" and the little-endian bytes of 16 runs
    of 1024 elements evenly spread (C order; all elements when there are at most 16384)."""
    flat = np.ascontiguousarray(x).reshape(-1)
    n = flat.size
    if n <= 16 * 1024:
        sample = flat
    else:
        starts = [int(s) for s in np.linspace(0, n - 1024, 16)]
        sample = np.concatenate([flat[s : s + 1024] for s in starts])
    little = sample.astype(sample.dtype.newbyteorder("<"))
    dtype = np.dtype(x.dtype).name
    head = f"{dtype};{','.join(str(d) for d in x.shape)};".encode()
    return "s1:" + hashlib.blake2b(head + little.tobytes(), digest_size=8).hexdigest()


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("against") / "q.safetensors"
    result = run("compress", TRANSFORMER, "-o", out, "--bits", "4", "--quiet")
    assert result.exit_code == 0, result.stderr
    return out


def metadata_of(path: Path) -> dict[str, str]:
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n])["__metadata__"]


def with_metadata(path: Path, out: Path, metadata: dict[str, str]) -> None:
    """A copy of the safetensors file ``path`` with another ``__metadata__`` (the data bytes and
    the offsets unchanged)."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    out.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


def variant(tmp_path: Path, change) -> Path:
    tensors = load_file(str(TRANSFORMER))
    change(tensors)
    path = tmp_path / "input.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


# -- what compress records ------------------------------------------------------------------


def test_compress_records_the_documented_fingerprint(quantized):
    entries = json.loads(metadata_of(quantized)["quant.tensors"])
    original = load_file(str(TRANSFORMER))
    assert len(entries) == 14
    for name, entry in entries.items():
        assert entry["fingerprint"] == documented_fingerprint(original[name]), name


def test_fingerprint_of_a_large_tensor_samples_it():
    x = np.random.default_rng(0).normal(0, 1, (300, 200)).astype(np.float32)  # 60000 elements
    assert fingerprint(x) == documented_fingerprint(x)
    y = x.copy()
    y[0, 0] += 1  # in the first sampled run
    assert fingerprint(y) != fingerprint(x)
    y = x.copy()
    y[-1, -1] += 1  # in the last one
    assert fingerprint(y) != fingerprint(x)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16, np.float64])
def test_fingerprint_is_about_values_not_storage(dtype):
    x = np.random.default_rng(1).normal(0, 1, (70, 40)).astype(dtype)
    same = [np.asfortranarray(x), x.astype(np.dtype(dtype).newbyteorder(">"))]
    if np.dtype(dtype) == np.dtype(ml_dtypes.bfloat16):
        same = same[:1]  # no big-endian bfloat16
    for other in same:
        assert fingerprint(other) == fingerprint(x)
    assert fingerprint(x.reshape(40, 70)) != fingerprint(x)  # the shape is part of it
    assert fingerprint(x.astype(np.float64)) != fingerprint(x.astype(np.float32))


# -- what --against refuses ------------------------------------------------------------------


def test_other_weights_with_the_same_names_are_refused(quantized, tmp_path):
    name = "model.layers.1.mlp.down_proj.weight"

    def retrain(t):
        t[name] = (t[name] * 0.9 + 0.001).astype(np.float32)

    other = variant(tmp_path, retrain)
    fails(
        run("report", other, "--against", quantized),
        1,
        f"tensor {name} of {other} holds other values than the one {quantized} was made from",
        "the quantized file was made from other weights; pass the file it was compressed from",
    )


def test_a_changed_kept_tensor_is_refused(quantized, tmp_path):
    def renorm(t):
        t["model.norm.weight"] = t["model.norm.weight"] + np.float32(1)

    fails(
        run("report", variant(tmp_path, renorm), "--against", quantized),
        1,
        "tensor model.norm.weight of",
        "other weights",
    )


def test_names_shapes_and_dtypes_are_checked(quantized, tmp_path):
    def drop(t):
        del t["lm_head.weight"]

    fails(
        run("report", variant(tmp_path, drop), "--against", quantized),
        1,
        f"tensor lm_head.weight of {quantized} is missing in",
    )

    def extra(t):
        t["extra.weight"] = np.ones((4, 4), np.float32)

    fails(
        run("report", variant(tmp_path, extra), "--against", quantized),
        1,
        "tensor extra.weight of",
        f"is not in {quantized}",
    )

    def reshape(t):
        t["model.layers.0.mlp.up_proj.weight"] = t["model.layers.0.mlp.up_proj.weight"].reshape(
            64, 172
        )

    fails(
        run("report", variant(tmp_path, reshape), "--against", quantized),
        1,
        "tensor model.layers.0.mlp.up_proj.weight differs in",
        "float32 [64, 172] but",
        "quantized a float32 [172, 64]",
    )

    def retype(t):
        t["model.layers.0.mlp.up_proj.weight"] = t["model.layers.0.mlp.up_proj.weight"].astype(
            np.float16
        )

    fails(
        run("report", variant(tmp_path, retype), "--against", quantized),
        1,
        "tensor model.layers.0.mlp.up_proj.weight differs in",
        "it is float16",
    )


def test_the_right_input_passes(quantized):
    result = run("report", TRANSFORMER, "--against", quantized)
    assert result.exit_code == 0, result.stderr
    assert "absmax i4 g128" in result.stdout
    assert "fingerprints" not in result.stdout


# -- files without fingerprints -----------------------------------------------------------------


def test_a_file_without_fingerprints_still_reads(quantized, tmp_path):
    meta = metadata_of(quantized)
    entries = json.loads(meta["quant.tensors"])
    for entry in entries.values():
        del entry["fingerprint"]
    old = tmp_path / "old.safetensors"
    with_metadata(quantized, old, {**meta, "quant.tensors": json.dumps(entries)})

    def as_json(q):
        result = run("report", TRANSFORMER, "--against", q, "--format", "json", "--per-tensor")
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)

    new_doc, old_doc = as_json(quantized), as_json(old)
    assert old_doc["results"] == new_doc["results"]
    table = run("report", TRANSFORMER, "--against", old)
    assert table.exit_code == 0
    assert "records no fingerprints" in " ".join(table.stdout.split())
    for command in (["inspect", old], ["decompress", old, "-o", tmp_path / "r.safetensors"]):
        assert run(*command).exit_code == 0
