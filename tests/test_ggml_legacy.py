"""Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and MXFP4 against gguf-py's NumPy port of llama.cpp's
reference quantizers (``gguf.quants``), byte for byte and bit for bit.

gguf-py's port is itself checked against the C code by llama.cpp's tests; quant's codecs are
written independently (different reductions, rounding and packing code) and must agree with
it on every block, ties, zero blocks, subnormal and huge values included.
"""

from __future__ import annotations

import numpy as np
import pytest
from ggml_cases import edge_blocks, mixed_weights, relative_mse

from quantcli.core.ggml import GGML_TYPES

gguf = pytest.importorskip("gguf")

LEGACY = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "MXFP4"]


def gguf_type(name: str):
    return getattr(gguf.GGMLQuantizationType, name)


def ref_quantize(x: np.ndarray, name: str) -> np.ndarray:
    # gguf warns where inf and NaN appear on the way (scales of huge or tiny weights)
    with np.errstate(all="ignore"):
        return gguf.quants.quantize(x, gguf_type(name))


def ref_dequantize(raw: np.ndarray, name: str) -> np.ndarray:
    with np.errstate(all="ignore"):
        return gguf.quants.dequantize(raw, gguf_type(name))


@pytest.fixture(scope="module")
def weights() -> np.ndarray:
    # ties: values on a grid of halves with the block's largest magnitude fixed, so that
    # x / d lands exactly on k + 0.5 (Q8_0: d = 63.5 / 127 = 0.5) in many places
    rng = np.random.default_rng(7)
    ties = (rng.integers(-16, 17, (512, 32)) / 2).astype(np.float32)
    ties[:, 3] = 8.0
    ties_q8 = ties.copy()
    ties_q8[:, 3] = 63.5
    return np.concatenate(
        [
            mixed_weights(96, 1024).reshape(-1, 32),
            edge_blocks(32),
            ties,
            -ties,
            ties * np.float32(0.1),
            ties_q8,
        ]
    )


def assert_bits_equal(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype == np.float32
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("name", LEGACY)
def test_encoder_gives_ggufs_bytes(weights, name):
    ours = GGML_TYPES[name].encode(weights)
    theirs = ref_quantize(weights, name)
    assert ours.dtype == np.uint8 and ours.shape == theirs.shape
    differ = np.flatnonzero((ours != theirs).any(axis=1))
    assert differ.size == 0, f"{differ.size} blocks differ, first {weights[differ[:1]]}"


@pytest.mark.parametrize("name", LEGACY)
def test_decoder_gives_ggufs_floats(weights, name):
    raw = ref_quantize(weights, name)
    assert_bits_equal(GGML_TYPES[name].decode(raw, 32), ref_dequantize(raw, name))


@pytest.mark.parametrize("name", LEGACY)
def test_codecs_raise_no_floating_point_warnings(weights, name, strict_numerics):
    # inf scales and 1/d overflow are expected on the edge blocks: the codec says nothing
    t = GGML_TYPES[name]
    with strict_numerics():
        t.decode(t.encode(weights), 32)


@pytest.mark.parametrize("name", LEGACY)
def test_decoder_on_arbitrary_bytes(name):
    # every bit pattern a block can hold, not only what an encoder writes (NaN/inf scales too)
    t = GGML_TYPES[name]
    raw = np.random.default_rng(3).integers(0, 256, (4096, t.block_bytes), dtype=np.uint8)
    assert_bits_equal(t.decode(raw, 32), ref_dequantize(raw, name))


def test_q8_0_rounds_ties_away_from_zero():
    # d = 15.875 / 127 = 0.125 exactly, so (k + 0.5) * d are exact ties of x / d
    k = np.arange(-8, 7, dtype=np.float32)
    x = np.zeros((1, 32), np.float32)
    x[0, 0] = 15.875
    x[0, 1:16] = (k + 0.5) * 0.125
    raw = GGML_TYPES["Q8_0"].encode(x)
    codes = raw[0, 2:18].view(np.int8)
    assert raw[0, :2].view(np.float16)[0] == 0.125 and codes[0] == 127
    np.testing.assert_array_equal(codes[1:], np.where(k >= 0, k + 1, k))


def test_q4_0_picks_the_first_of_two_equal_magnitudes():
    # d = (signed value of largest magnitude) / -8: with +2 and -2 both present the first
    # decides the sign of d, as the C loop's strict comparison does
    x = np.zeros((2, 32), np.float32)
    x[0, [4, 9]] = [2.0, -2.0]
    x[1, [4, 9]] = [-2.0, 2.0]
    d = GGML_TYPES["Q4_0"].encode(x)[:, :2].copy().view(np.float16)[:, 0]
    np.testing.assert_array_equal(d, [-0.25, 0.25])


def extreme_blocks(rng: np.random.Generator) -> np.ndarray:
    """float32 (k, 32) blocks for the encoders' per-block extremes, taken from bit-level
    reductions: +a and -a both present (either order, among smaller values, or alone), zeros
    of both signs in every arrangement, one non-zero value, subnormal and huge values (max -
    min overflows for Q4_1), ties of the largest value, and all-negative blocks."""
    blocks = []
    a = rng.uniform(0.1, 10, 64).astype(np.float32)
    for first, second in ((1, -1), (-1, 1)):
        b = (rng.uniform(-1, 1, (64, 32)) * a[:, None] * 0.9).astype(np.float32)
        b[np.arange(64), rng.integers(0, 16, 64)] = first * a
        b[np.arange(64), rng.integers(16, 32, 64)] = second * a
        blocks.append(b)
    pm = np.zeros((4, 32), np.float32)
    pm[0, [0, 31]] = [3.0, -3.0]
    pm[1, [0, 31]] = [-3.0, 3.0]
    pm[2, [5, 6]] = [-1e-45, 1e-45]
    pm[3, [7, 9]] = [3.4e38, -3.4e38]
    blocks.append(pm)
    zeros = np.where(rng.random((64, 32)) < 0.5, np.float32(0.0), np.float32(-0.0))
    zeros[:2] = [[0.0], [-0.0]]
    blocks.append(zeros.astype(np.float32))
    for value in (-0.0, 1e-45, -1e-45, 1e-40, 3e-37, -1.0, 2.5, 3.4e38, -3.4e38):
        one = np.where(rng.random((8, 32)) < 0.5, np.float32(0.0), np.float32(-0.0))
        one = one.astype(np.float32)
        one[np.arange(8), rng.integers(0, 32, 8)] = value
        blocks.append(one)
    for scale in (1e-45, 1e-42, 1e-39, 3e-38, 1e-37, 1e37, 1e38):
        blocks.append((rng.standard_normal((16, 32)) * scale).astype(np.float32))
    huge = rng.choice(np.array([3e38, -3e38, 1e38, -1e38, 1.0, 0.0], np.float32), (32, 32))
    blocks.append(huge)
    ties = np.repeat(rng.uniform(-5, 5, (16, 4)).astype(np.float32), 8, axis=1)
    blocks.append(ties)
    blocks.append(-np.abs(rng.standard_normal((16, 32)).astype(np.float32)))
    blocks.append(np.abs(rng.standard_normal((16, 32)).astype(np.float32)))
    return np.concatenate(blocks)


@pytest.mark.parametrize("name", LEGACY)
def test_encoder_gives_ggufs_bytes_on_block_extremes(name):
    x = extreme_blocks(np.random.default_rng(11))
    np.testing.assert_array_equal(GGML_TYPES[name].encode(x), ref_quantize(x, name))


@pytest.mark.parametrize("name", LEGACY)
@pytest.mark.parametrize("blocks", [1, 3, 4097])
def test_encoder_gives_ggufs_bytes_for_any_block_count(name, blocks):
    # the encoders work on an element-major copy of each chunk: short and uneven chunks
    # (one block, a chunk and one more) must come out in block order
    x = np.random.default_rng(blocks).standard_normal((blocks, 32), dtype=np.float32)
    np.testing.assert_array_equal(GGML_TYPES[name].encode(x), ref_quantize(x, name))


def test_q8_0_rounds_just_below_and_above_ties_as_c():
    # d = 15.875 / 127 = 0.125: x / d one float32 step either side of k + 0.5, where
    # adding 0.5 then truncating would round 0.49999997 up
    k = np.arange(-8, 8, dtype=np.float32) + np.float32(0.5)
    below = np.nextafter(k, np.float32(0)) * np.float32(0.125)
    above = np.nextafter(k, np.float32(np.inf) * np.sign(k)) * np.float32(0.125)
    x = np.zeros((2, 32), np.float32)
    x[:, 0] = 15.875
    x[0, 1:17], x[1, 1:17] = below, above
    raw = GGML_TYPES["Q8_0"].encode(x)
    np.testing.assert_array_equal(raw, ref_quantize(x, "Q8_0"))
    codes = raw[:, 2:].view(np.int8)[:, 1:17]
    np.testing.assert_array_equal(codes[0], np.trunc(k))
    np.testing.assert_array_equal(codes[1], np.trunc(k) + np.sign(k))


def test_mxfp4_rounds_every_midpoint_and_its_neighbours():
    # amax 12 gives d = 1, so |x| / d is x itself: every grid point and midpoint of 0 1 2 3 4
    # 6 8 12 and the float32 values either side of each, with both signs; then the same
    # under other exponents, including the tiny blocks whose e is 0 or wraps around
    grid = np.array([0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 5, 6, 7, 8, 10, 12], np.float32)
    values = np.concatenate(
        [grid, np.nextafter(grid, np.float32(0)), np.nextafter(grid, np.float32(16))]
    )
    values = np.concatenate([values, -values])[1:]  # 90 values, without the first 0's copy
    blocks = np.zeros((3, 32), np.float32)
    blocks.reshape(-1)[: values.size] = values
    blocks[:, 31] = 12.0
    # e = k + 128: wrapped below 0 (k < -128), 0 (doubled), 1, then ordinary exponents
    exponents = (-140, -130, -128, -127, -126, -124, -100, 0, 20, 116)
    scaled = [blocks * np.float32(2.0**k) for k in exponents]
    x = np.concatenate(scaled).astype(np.float32)
    np.testing.assert_array_equal(GGML_TYPES["MXFP4"].encode(x), ref_quantize(x, "MXFP4"))


def test_zero_blocks_encode_to_zero_scale_and_decode_to_zero():
    x = np.zeros((1, 64), np.float32)
    for name in LEGACY:
        t = GGML_TYPES[name]
        raw = t.encode(x)
        assert not np.any(t.decode(raw, 64))
        np.testing.assert_array_equal(raw, ref_quantize(x, name))


# relative MSE on seeded N(0, 1) 1024 x 4096 weights; the reference figures are the
# project guide's (section 6, "Data-free optimizers"), within 3 %
GUIDE_FIGURES = {"Q4_0": 0.00738, "Q4_1": 0.00612, "Q5_0": 0.00182}


@pytest.fixture(scope="module")
def gaussian() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((1024, 4096), dtype=np.float32)


@pytest.mark.parametrize("name", sorted(GUIDE_FIGURES))
def test_relative_mse_matches_the_guide(gaussian, name):
    t = GGML_TYPES[name]
    err = relative_mse(gaussian, t.decode(t.encode(gaussian), gaussian.shape[1]))
    assert err == pytest.approx(GUIDE_FIGURES[name], rel=0.03)


def test_relative_mse_of_q8_0_and_mxfp4_follow_their_step_sizes(gaussian):
    # a uniform quantizer of step D has MSE D^2 / 12. Q8_0's step is amax / 127 per block of
    # 32; E[amax^2] of 32 N(0,1) values is about 5.0, so relative MSE ~ 5.0 / 127^2 / 12.
    w = gaussian[:256]
    q8 = GGML_TYPES["Q8_0"]
    err = relative_mse(w, q8.decode(q8.encode(w), w.shape[1]))
    amax2 = (np.abs(w.reshape(-1, 32)).max(axis=1).astype(np.float64) ** 2).mean()
    assert err == pytest.approx(amax2 / 127**2 / 12, rel=0.05)
    # MXFP4 has 8 magnitudes under a power-of-two scale: far coarser than Q4_0's 16 levels
    mx = GGML_TYPES["MXFP4"]
    err_mx = relative_mse(w, mx.decode(mx.encode(w), w.shape[1]))
    q4 = GGML_TYPES["Q4_0"]
    assert relative_mse(w, q4.decode(q4.encode(w), w.shape[1])) < err_mx < 0.02


def test_mxfp4_ties_go_to_the_smaller_magnitude():
    # amax 12: e = floor(log2 12) - 2 + 127 = 128, d = 2**(e - 128) = 1, so the grid is
    # 0 1 2 3 4 6 8 12 itself and 0.5, 2.5, 5, 7, 10 lie exactly between two points
    x = np.zeros((1, 32), np.float32)
    x[0, :12] = [12, 0.5, -0.5, 2.5, -2.5, 5, 7, 10, -10, 1.4, 1.6, -7.5]
    mx = GGML_TYPES["MXFP4"]
    raw = mx.encode(x)
    assert raw[0, 0] == 128
    restored = mx.decode(raw, 32)[0, :12]
    np.testing.assert_array_equal(restored, [12, 0, 0, 2, -2, 4, 6, 8, -8, 1, 2, -8])
    np.testing.assert_array_equal(raw, ref_quantize(x, "MXFP4"))
