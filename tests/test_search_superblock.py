"""Two-level (Q4_K-style) group parameters: quant's super-block codes decoded by llama.cpp's
own decoder (gguf-py's Q4_K), never worse than llama.cpp's quantization rule, independent of
the neighbouring super-blocks, and the 4.5-bit figure on Gaussian weights."""

from __future__ import annotations

import numpy as np
import pytest

from quantcli.core.search import (
    SuperBlockParams,
    affine_error,
    affine_rtn,
    affine_search,
    superblock_params,
)
from quantcli.errors import InputError


@pytest.fixture(scope="module")
def weights() -> np.ndarray:
    return np.random.default_rng(11).standard_normal((64, 1024)).astype(np.float32)


def naive(params, per=8, top=63) -> SuperBlockParams:
    """llama.cpp's quantize_row_q4_K_ref rule: d = max / 63 in float16, codes to nearest."""
    s = params.scale.reshape(-1, per).astype(np.float64)
    m = -params.offset.reshape(-1, per).astype(np.float64)
    d = (s.max(axis=1) / top).astype(np.float16)
    dmin = (m.max(axis=1) / top).astype(np.float16)

    def codes(v, step):
        step = step.astype(np.float64)[:, None]
        ratio = np.where(step > 0, v / np.where(step > 0, step, 1), 0)
        return np.clip(np.rint(ratio), 0, top).astype(np.uint8).reshape(-1)

    return SuperBlockParams(d, dmin, codes(s, d), codes(m, dmin))


def pack_q4_k(sb: SuperBlockParams, groups: np.ndarray) -> np.ndarray:
    """GGUF Q4_K blocks (144 bytes: f16 d, f16 dmin, 12 bytes of 6-bit codes, 128 of
    nibbles) from super-block parameters and the groups of 32 they encode."""
    p = sb.affine()
    q = np.clip(np.rint((groups - p.offset[:, None]) / p.scale[:, None]), 0, 15)
    q = q.astype(np.uint8).reshape(-1, 8, 32)
    n = q.shape[0]
    sc, mc = sb.scale_codes.reshape(n, 8), sb.min_codes.reshape(n, 8)
    scales = np.zeros((n, 12), np.uint8)
    scales[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    scales[:, 4:8] = mc[:, :4] | ((mc[:, 4:] >> 4) << 6)
    scales[:, 8:12] = (sc[:, 4:] & 0xF) | ((mc[:, 4:] & 0xF) << 4)
    qs = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(n, 128)  # groups 2c low, 2c + 1 high
    head = np.stack([sb.d, sb.dmin], axis=1).view(np.uint8)
    return np.concatenate([head, scales, qs], axis=1)


@pytest.mark.parametrize("search_weights", ["plain", "rms_abs"])
def test_decoded_by_llama_cpps_q4_k_and_never_worse_than_its_rule(weights, search_weights):
    gguf = pytest.importorskip("gguf")
    x = weights.reshape(-1, 32)
    params = affine_search(x, 4, weights=search_weights)
    sb = superblock_params(x, params, 4)
    assert sb.d.dtype == np.float16 and sb.d.shape == (x.shape[0] // 8,)
    assert sb.scale_codes.dtype == np.uint8 and sb.scale_codes.max() <= 63
    assert sb.min_codes.max() <= 63 and np.all(sb.dmin >= 0)
    ours = affine_error(x, sb.affine(), 4)
    # the same weights through llama.cpp's decoder
    raw = pack_q4_k(sb, x)
    restored = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_K).reshape(x.shape)
    theirs = np.sum((x.astype(np.float64) - restored) ** 2, axis=1)
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12)
    rule = affine_error(x, naive(params).affine(), 4)
    per_block = ours.reshape(-1, 8).sum(axis=1)
    assert np.all(per_block <= rule.reshape(-1, 8).sum(axis=1))
    assert per_block.sum() < 0.99 * rule.sum()


def test_a_super_blocks_result_does_not_depend_on_its_neighbours(weights):
    x = weights.reshape(-1, 32)
    x[8:16] *= 1e-3  # a quiet super-block among loud ones
    params = affine_search(x, 4)
    together = superblock_params(x, params, 4)
    for b in (0, 1, 5, x.shape[0] // 8 - 1):
        part = slice(8 * b, 8 * b + 8)
        alone = superblock_params(x[part], affine_search(x[part], 4), 4)
        assert alone.d[0] == together.d[b] and alone.dmin[0] == together.dmin[b]
        np.testing.assert_array_equal(alone.scale_codes, together.scale_codes[part])
        np.testing.assert_array_equal(alone.min_codes, together.min_codes[part])


def test_zero_and_constant_super_blocks():
    x = np.zeros((16, 32), np.float32)
    x[8:] = -0.5
    params = affine_rtn(x, 4, "float")
    sb = superblock_params(x, params, 4)
    e = affine_error(x, sb.affine(), 4)
    assert np.all(e[:8] == 0)  # all-zero groups: exact
    # -0.5 = -dmin * mc: dmin = 0.5 / 63 is not a float16, the error is float16's
    assert np.all(e[8:] <= affine_error(x, naive(params).affine(), 4)[8:])
    assert np.all(e[8:] < 32 * (0.5 * 2.0**-10) ** 2)


def test_bad_input_is_refused(weights):
    x = weights.reshape(-1, 32)[:12]
    with pytest.raises(InputError):
        superblock_params(x, affine_search(x, 4), 4)  # 12 groups: not whole super-blocks
    y = weights.reshape(-1, 32)[:8]
    with pytest.raises(InputError):
        superblock_params(y, affine_search(y, 4, "integer"), 4)
    with pytest.raises(InputError):
        superblock_params(y, affine_rtn(y + 5, 4, "float", nonpositive_offset=False), 4)
