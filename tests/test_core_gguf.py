"""Agreement with llama.cpp's Q8_0, through gguf-py's NumPy reference (``gguf`` on PyPI).

Q8_0 is absmax int8 in blocks of 32 along the last axis with a float16 d = amax / 127: 34
bytes a block, the float16 d then 32 int8 codes. gguf computes codes as
round-half-away-from-zero(x * (1 / d)); quant computes rint(x / d) (half to even), so the
two may differ by one code where x / d is (within float32 rounding) a tie k + 0.5.
"""

from __future__ import annotations

import numpy as np
import pytest

from quantcli.core import QuantSpec, quantize

gguf = pytest.importorskip("gguf")
Q8_0 = gguf.GGMLQuantizationType.Q8_0

BLOCK, BLOCK_BYTES = 32, 34
SPEC = QuantSpec(
    scheme="absmax", bits=8, granularity="group", group_size=BLOCK, scale_dtype="float16"
)


def parse_q8_0(raw: np.ndarray, shape: tuple[int, ...]):
    """gguf's Q8_0 bytes -> (d float16 (..., n_blocks), codes int8 (..., n_blocks, 32))."""
    n_blocks = shape[-1] // BLOCK
    assert raw.dtype == np.uint8 and raw.shape == shape[:-1] + (n_blocks * BLOCK_BYTES,)
    blocks = raw.reshape(shape[:-1] + (n_blocks, BLOCK_BYTES))
    d = np.ascontiguousarray(blocks[..., :2]).view(np.float16)[..., 0]
    codes = np.ascontiguousarray(blocks[..., 2:]).view(np.int8)
    return d, codes


@pytest.fixture(scope="module")
def weights() -> np.ndarray:
    rng = np.random.default_rng(20261126)
    normal = rng.standard_normal((256, 4096)).astype(np.float32)
    # rows of very different magnitudes, blocks with one outlier, a heavy-tailed part
    scaled = rng.standard_normal((64, 4096)) * 10.0 ** rng.uniform(-4, 3, (64, 1))
    spiky = rng.standard_normal((32, 4096)) * 0.02
    spiky[:, ::97] *= 300
    heavy = rng.standard_t(2, (32, 4096))
    return np.concatenate([normal, scaled, spiky, heavy]).astype(np.float32)


@pytest.fixture(scope="module")
def both(weights):
    qt = quantize(weights, SPEC)
    raw = gguf.quants.quantize(weights, Q8_0)
    d, codes = parse_q8_0(raw, weights.shape)
    return qt, raw, d, codes


def test_scales_equal_ggufs_d_bit_for_bit(weights, both):
    qt, _, d, _ = both
    assert qt.scale.dtype == np.float16 and qt.scale.shape == d.shape == (384, 128)
    np.testing.assert_array_equal(qt.scale.view(np.uint16), d.view(np.uint16))


def test_codes_agree_but_at_rounding_ties(weights, both):
    qt, _, d, gcodes = both
    ours = qt.codes.reshape(gcodes.shape)
    differ = ours != gcodes
    assert differ.mean() < 1e-4
    # where they differ: one code apart, at a tie of x / d (d the float32 amax / 127)
    assert (np.abs(ours[differ].astype(int) - gcodes[differ]) == 1).all()
    blocks = weights.reshape(gcodes.shape)
    d32 = np.abs(blocks).max(axis=-1, keepdims=True) / np.float32(127)
    t = (blocks / d32)[differ].astype(np.float64)
    assert (np.abs(np.abs(t - np.floor(t)) - 0.5) < 1e-4).all()


def test_reconstruction_equals_ggufs_where_codes_agree(weights, both):
    qt, raw, _, gcodes = both
    ours = qt.dequantize()
    theirs = gguf.quants.dequantize(raw, Q8_0)
    assert theirs.shape == ours.shape and theirs.dtype == np.float32
    same = (qt.codes.reshape(gcodes.shape) == gcodes).reshape(ours.shape)
    np.testing.assert_array_equal(ours[same].view(np.uint32), theirs[same].view(np.uint32))
    # elsewhere one step apart
    steps = np.repeat(qt.scale.astype(np.float32), BLOCK, axis=-1)
    np.testing.assert_allclose(np.abs(ours - theirs)[~same], steps[~same], rtol=1e-6)


def test_q8_0_bits_per_weight():
    # 34 bytes a block of 32: 8.5 bits a weight, as quant's codes + float16 scales
    x = np.ones((2, 64), np.float32)
    raw = gguf.quants.quantize(x, Q8_0)
    qt = quantize(x, SPEC)
    assert raw.nbytes * 8 / x.size == 8.5
    assert (qt.codes.nbytes + qt.scale.nbytes) * 8 / x.size == 8.5


def test_exact_ties_show_the_two_rounding_conventions():
    # d = 15.875 / 127 = 0.125 exactly, so x = (k + 0.5) * d makes x / d = x * (1 / d) an exact
    # tie: quant rounds half to even (np.rint), gguf half away from zero (C's roundf).
    d = 0.125
    k = np.array([-4, -3, -2, -1, 0, 1, 2, 3] * 3 + [0] * 7, np.float64)
    x = np.concatenate([[127 * d], (k + 0.5) * d]).astype(np.float32).reshape(1, BLOCK)
    qt = quantize(x, SPEC)
    gd, gcodes = parse_q8_0(gguf.quants.quantize(x, Q8_0), x.shape)
    assert float(qt.scale[0, 0]) == float(gd[0, 0]) == d
    ours, theirs = qt.codes[0, 1:], gcodes[0, 0, 1:]
    assert qt.codes[0, 0] == gcodes[0, 0, 0] == 127
    np.testing.assert_array_equal(ours, np.rint(k + 0.5))  # -4, -2, -2, 0, 0, 2, 2, 4
    np.testing.assert_array_equal(theirs, np.sign(k + 0.5) * np.floor(np.abs(k + 0.5) + 0.5))
    # they differ exactly at the ties rint rounds toward zero: k + 0.5 = -2.5, -0.5, 0.5, 2.5
    differ = ours != theirs
    np.testing.assert_array_equal(np.unique((k + 0.5)[differ]), [-2.5, -0.5, 0.5, 2.5])
    # both are half a step from x there: the same error, by different conventions
    x_hat = qt.dequantize()[0, 1:]
    g_hat = gguf.quants.dequantize(gguf.quants.quantize(x, Q8_0), Q8_0)[0, 1:]
    np.testing.assert_array_equal(np.abs(x_hat - x[0, 1:]), np.abs(g_hat - x[0, 1:]))


def test_zero_blocks():
    # an all-zero block: gguf stores d = 0, quant stores scale 1 (GUIDE: amax == 0 -> scale 1);
    # both give codes 0 and an exact zero reconstruction
    x = np.zeros((1, 64), np.float32)
    x[0, 32:] = np.linspace(-1, 1, 32)
    qt = quantize(x, SPEC)
    raw = gguf.quants.quantize(x, Q8_0)
    gd, gcodes = parse_q8_0(raw, x.shape)
    assert float(gd[0, 0]) == 0.0 and float(qt.scale[0, 0]) == 1.0
    assert float(gd[0, 1]) == float(qt.scale[0, 1])
    np.testing.assert_array_equal(qt.codes.reshape(gcodes.shape), gcodes)
    np.testing.assert_array_equal(qt.dequantize(), gguf.quants.dequantize(raw, Q8_0))
