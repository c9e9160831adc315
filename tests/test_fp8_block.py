"""FP8 with 2-D block scales (``--granularity block``), as DeepSeek-V3's checkpoints store
them: one float32 scale per R x C tile of a 2-D weight (``weight_scale_inv`` of shape
[ceil(out/128), ceil(in/128)]), scale = amax of the tile / max, codes the format's cast of the
clipped ratio. The references here are NumPy loops over the tiles and ml_dtypes' own cast.
"""

from __future__ import annotations

import json
import math

import ml_dtypes
import numpy as np
import pytest
from cli_runner import cli
from safetensors import safe_open

import quantcli.core.quantizer as quantize_module
from quantcli.core import QuantSpec, quantize
from quantcli.core.layout import param_shape
from quantcli.core.spec import parse_block_size
from quantcli.errors import NonFiniteError, SpecError
from quantcli.ops.plan import parse_spec

FORMATS = {"fp8": ml_dtypes.float8_e4m3fn, "fp8-e5m2": ml_dtypes.float8_e5m2}


def weights(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_t(3, shape) * 0.05).astype(np.float32)
    if shape[0] > 130 and shape[1] > 2:
        x[129, 1] = 100.0  # an outlier: only its own block's scale grows
        x[:128, :128] = 0.0 if shape[1] >= 128 else x[:128, :128]  # a block of zeros
    return x


def reference(x: np.ndarray, scheme: str, rows: int, cols: int):
    """(scales float32 [ceil(out/R), ceil(in/C)], codes of x's shape), tile by tile."""
    dtype = FORMATS[scheme]
    top = np.float32(ml_dtypes.finfo(dtype).max)
    nr, nc = math.ceil(x.shape[0] / rows), math.ceil(x.shape[1] / cols)
    scales = np.empty((nr, nc), np.float32)
    codes = np.empty(x.shape, dtype)
    for i in range(nr):
        for j in range(nc):
            tile = x[i * rows : (i + 1) * rows, j * cols : (j + 1) * cols]
            amax = np.abs(tile).max()
            scale = amax / top if amax > 0 else np.float32(1)
            scales[i, j] = scale
            ratio = np.clip(tile / scale, -top, top)
            codes[i * rows : (i + 1) * rows, j * cols : (j + 1) * cols] = ratio.astype(dtype)
    return scales, codes


@pytest.mark.parametrize("scheme", ["fp8", "fp8-e5m2"])
@pytest.mark.parametrize(
    "shape, block",
    [((256, 384), (128, 128)), ((300, 200), (128, 128)), ((37, 53), (8, 16)), ((5, 7), (9, 9))],
)
def test_scales_are_block_amax_over_max_and_codes_the_clipped_cast(scheme, shape, block):
    x = weights(shape)
    qt = quantize(x, QuantSpec(scheme, granularity="block", block_size=block), measure=True)
    scales, codes = reference(x, scheme, *block)
    assert qt.scale.dtype == np.float32
    assert qt.scale.shape == (math.ceil(shape[0] / block[0]), math.ceil(shape[1] / block[1]))
    np.testing.assert_array_equal(qt.scale, scales)
    assert qt.codes.dtype == FORMATS[scheme]
    np.testing.assert_array_equal(qt.codes.view(np.uint8), codes.view(np.uint8))
    restored = qt.dequantize()
    np.testing.assert_array_equal(restored, codes.astype(np.float32) * np.repeat(
        np.repeat(scales, block[0], 0)[: shape[0]], block[1], 1)[:, : shape[1]])  # fmt: skip
    err = restored.astype(np.float64) - x
    assert qt.stats.sum_sq_error == pytest.approx(float(np.sum(err**2)), rel=1e-9)


def test_partial_edge_blocks_have_their_own_scales():
    # DeepSeek-V3's kv_a_proj_with_mqa is [576, 7168]: 576 = 4*128 + 64, a half block row
    x = weights((576, 300), seed=3)
    qt = quantize(x, QuantSpec("fp8", granularity="block"))
    assert qt.scale.shape == (5, 3)
    edge = x[512:, 256:]  # 64 x 44
    assert qt.scale[4, 2] == np.abs(edge).max() / np.float32(448)
    # the outlier at [129, 1] raised only block (1, 0)
    assert qt.scale[1, 0] == np.float32(100.0) / np.float32(448)
    assert qt.scale[1, 1] < qt.scale[1, 0] / 10
    # the block of zeros: scale 1, codes 0
    assert qt.scale[0, 0] == 1
    assert not qt.codes[:128, :128].view(np.uint8).any()


def test_default_block_is_128x128_and_shows_in_labels():
    spec = QuantSpec("fp8", granularity="block")
    assert spec.block_size == (128, 128)
    assert spec.label() == "fp8 block(128x128)"
    assert QuantSpec("e5m2", granularity="block", block_size="64x32").short_label() == (
        "fp8-e5m2 b64x32"
    )
    assert param_shape((1000, 129), spec) == (8, 2)
    assert spec.to_dict()["block_size"] == [128, 128]
    assert QuantSpec.from_dict(spec.to_dict()) == spec
    assert "block_size" not in QuantSpec("fp8").to_dict()


@pytest.mark.parametrize(
    "text, expected", [("128x128", (128, 128)), ("64,32", (64, 32)), ("16", (16, 16)),
                       (" 8 X 4 ", (8, 4)), (32, (32, 32)), ([1, 2], (1, 2))],
)  # fmt: skip
def test_block_size_spellings(text, expected):
    assert parse_block_size(text) == expected


@pytest.mark.parametrize("bad", ["0x128", "128x", "axb", "1x2x3", "-4", "", 1.5, True])
def test_bad_block_sizes_are_refused(bad):
    with pytest.raises(SpecError, match="block size .* use ROWSxCOLUMNS"):
        parse_block_size(bad)


@pytest.mark.parametrize("shape", [(), (7,), (2, 3, 4)])
def test_tensors_that_are_not_2d_are_refused(shape):
    x = np.ones(shape, np.float32)
    with pytest.raises(SpecError, match=r"-D shape .* in tensor w: 2-D block scales are for 2-D"):
        quantize(x, QuantSpec("fp8", granularity="block"), "w")


def test_the_spec_rules():
    with pytest.raises(SpecError, match="absmax has no 2-D block scales, only fp8, fp8-e5m2"):
        QuantSpec("absmax", granularity="block")
    with pytest.raises(SpecError, match="only --granularity block has 2-D blocks"):
        QuantSpec("fp8", granularity="group", block_size=(4, 4))
    with pytest.raises(SpecError, match="use --calibration minmax"):
        QuantSpec("fp8", granularity="block", calibration="percentile")


@pytest.mark.parametrize("threads", ["1", "2"])
@pytest.mark.parametrize("chunk", [1, 11, 200, 5000])
def test_chunks_and_threads_change_nothing(chunk, threads, monkeypatch):
    x = weights((61, 45), seed=5)
    spec = QuantSpec("fp8", granularity="block", block_size=(8, 16))
    whole = quantize(x, spec, measure=True)
    monkeypatch.setattr(quantize_module, "CHUNK_ELEMENTS", chunk)
    monkeypatch.setenv("QUANT_THREADS", threads)
    part = quantize(x, spec, measure=True)
    np.testing.assert_array_equal(part.codes.view(np.uint8), whole.codes.view(np.uint8))
    np.testing.assert_array_equal(part.scale, whole.scale)
    np.testing.assert_array_equal(part.clip_hi, whole.clip_hi)
    # sums of many chunks add in another order: equal to rounding, the rest exactly
    a, b = part.stats.as_dict(), whole.stats.as_dict()
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-12), key
    assert part.stats.max_abs_error == whole.stats.max_abs_error
    np.testing.assert_array_equal(part.dequantize(), whole.dequantize())


def test_empty_and_nonfinite():
    qt = quantize(np.zeros((0, 300), np.float32), QuantSpec("fp8", granularity="block"))
    assert qt.scale.shape == (0, 3) and qt.codes.shape == (0, 300)
    qt = quantize(np.zeros((3, 0), np.float32), QuantSpec("fp8", granularity="block"))
    assert qt.scale.shape == (1, 0)
    x = weights((20, 20))
    x[13, 2] = np.nan
    with pytest.raises(NonFiniteError, match="1 non-finite values"):
        quantize(x, QuantSpec("fp8", granularity="block", block_size=4))


def test_rule_key_parses_block_size():
    parsed = parse_spec("fp8,granularity=block,block_size=64x32", "--rule")
    assert dict(parsed.options)["block_size"] == (64, 32)


# -- the command line -------------------------------------------------------------------------


run, _ = cli(100)


def test_compress_decompress_round_trip_and_inspect(tmp_path):
    x = weights((300, 260), seed=9)
    np.save(tmp_path / "w.npy", x)
    out = tmp_path / "w.safetensors"
    result = run("compress", tmp_path / "w.npy", "-o", out, "--scheme", "fp8",
                 "--granularity", "block", "--block-size", "128x64")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "fp8 b128x64" in result.stderr
    with safe_open(str(out), "np") as f:
        meta = f.metadata()
        # safetensors' NumPy reader has no fp8 dtype: read the codes' bytes through their scale
        scale = f.get_tensor("w.scale")
    assert meta["quant.format_version"] == "4"
    entry = json.loads(meta["quant.tensors"])["w"]
    assert entry["granularity"] == "block" and entry["block_size"] == [128, 64]
    scales, codes = reference(x, "fp8", 128, 64)
    np.testing.assert_array_equal(scale, scales)
    result = run("decompress", out, "-o", tmp_path / "r.npy")
    assert result.exit_code == 0, result.stderr
    restored = np.load(tmp_path / "r.npy")
    expected = codes.astype(np.float32) * np.repeat(np.repeat(scales, 128, 0)[:300], 64, 1)[:, :260]
    np.testing.assert_array_equal(restored, expected)
    result = run("inspect", out)
    assert result.exit_code == 0
    assert "block(128x64)" in result.stdout
    result = run("report", tmp_path / "w.npy", "--scheme", "fp8", "--granularity", "block",
                 "--format", "json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    (row,) = json.loads(result.stdout)["results"]
    assert row["label"] == "fp8 b128x128" and row["block_size"] == "128x128"
    assert row["granularity"] == "block"


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--scheme", "fp8", "--granularity", "block", "--block-size", "0x8"],
         "'0x8' is not ROWSxCOLUMNS of positive integers"),
        (["--scheme", "fp8", "--granularity", "block", "--block-size", "12x"],
         "'12x' is not ROWSxCOLUMNS"),
        (["--scheme", "fp8", "--block-size", "64"],
         "--block-size 64x64 without --granularity block in quant compress"),
        (["--scheme", "absmax", "--granularity", "block"],
         "absmax has no 2-D block scales, only fp8, fp8-e5m2 do"),
    ],
)  # fmt: skip
def test_bad_options_are_one_line_errors(tmp_path, args, fragment):
    np.save(tmp_path / "w.npy", weights((16, 16)))
    out = tmp_path / "w.safetensors"
    result = run("compress", tmp_path / "w.npy", "-o", out, *args)
    assert result.exit_code == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], lines
    assert not out.exists()


def test_a_3d_tensor_is_a_one_line_error(tmp_path):
    np.save(tmp_path / "w.npy", np.ones((2, 3, 4), np.float32))
    result = run("compress", tmp_path / "w.npy", "-o", tmp_path / "w.safetensors",
                 "--scheme", "fp8", "--granularity", "block")  # fmt: skip
    assert result.exit_code != 0 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert "3-D shape [2, 3, 4] in tensor w: 2-D block scales are for 2-D weights" in line
    assert not (tmp_path / "w.safetensors").exists()


def test_block_scales_need_version_4():
    from quantcli.errors import QuantizedFormatError
    from quantcli.io.quantized_format import read_entries

    spec = QuantSpec("fp8", granularity="block", block_size=(64, 32))
    entry = {**spec.to_dict(), "shape": [100, 70], "dtype": "F32"}
    meta = {"quant.format": "quantcli", "quant.tensors": json.dumps({"w": entry})}
    (read,) = read_entries({**meta, "quant.format_version": "4"}, "f.safetensors").values()
    assert read.spec == spec and read.stored()[1][2] == (2, 3)
    with pytest.raises(QuantizedFormatError, match="block scales of w need version 4"):
        read_entries({**meta, "quant.format_version": "3"}, "f.safetensors")


def test_a_checkpoint_with_a_rule_keeps_1d_tensors_and_blocks_the_rest(tmp_path):
    from pathlib import Path

    from safetensors.numpy import load_file

    src = Path(__file__).resolve().parent.parent / "sample_weights" / "transformer.safetensors"
    out = tmp_path / "q.safetensors"
    result = run(
        "compress", src, "-o", out, "--rule", "*=fp8-e5m2,granularity=block,block_size=32x16"
    )
    assert result.exit_code == 0, result.stderr
    with safe_open(str(out), "np") as f:
        entries = json.loads(f.metadata()["quant.tensors"])
    original = load_file(str(src))
    assert entries and all(original[n].ndim == 2 for n in entries)
    assert any(a.ndim == 1 for a in original.values())  # kept, not refused
    result = run("decompress", out, "-o", tmp_path / "r.safetensors")
    assert result.exit_code == 0, result.stderr
    restored = load_file(str(tmp_path / "r.safetensors"))
    for name, entry in entries.items():
        assert entry["granularity"] == "block" and entry["block_size"] == [32, 16]
        x = original[name].astype(np.float32)
        scales, codes = reference(x, "fp8-e5m2", 32, 16)
        expected = (
            codes.astype(np.float32)
            * np.repeat(np.repeat(scales, 32, 0)[: x.shape[0]], 16, 1)[:, : x.shape[1]]
        )
        np.testing.assert_array_equal(restored[name].astype(np.float32), expected)
