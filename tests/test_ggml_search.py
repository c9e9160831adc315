"""The least-squares ggml encoders (search "mse", quantcli.core.ggml.search): the same block
types with less squared error than llama.cpp's reference quantizers.

Every block is decoded with gguf-py's own dequantizer (the reference NumPy port of
llama.cpp's) and compared with the reference encoder's block on the same weights.
"""

from __future__ import annotations

import numpy as np
import pytest
from ggml_cases import edge_blocks, mixed_weights, relative_mse

from quantcli.core.ggml import GGML_TYPES
from quantcli.core.ggml.search import SEARCH_ENCODERS
from quantcli.errors import SpecError

gguf = pytest.importorskip("gguf")

SEARCHED = list(SEARCH_ENCODERS)


def gguf_decode(raw: np.ndarray, name: str) -> np.ndarray:
    with np.errstate(all="ignore"):
        return gguf.quants.dequantize(raw, getattr(gguf.GGMLQuantizationType, name))


def block_errors(x: np.ndarray, x_hat: np.ndarray, block: int) -> np.ndarray:
    """float64 squared error of each block (inf where the decoded value is not finite)."""
    with np.errstate(all="ignore"):
        diff = x.reshape(-1, block).astype(np.float64) - x_hat.reshape(-1, block)
        err = (diff * diff).sum(axis=1)
    err[~np.isfinite(err)] = np.inf
    return err


def special_blocks(block: int) -> np.ndarray:
    """float32 (k, block): all zero, constant (positive, negative), a lone outlier among
    zeros and among small values, tiny (subnormal-ish) values, two levels, a ramp."""
    rng = np.random.default_rng(5)
    rows = [
        np.zeros(block),
        np.full(block, 0.75),
        np.full(block, -3.0),
        np.eye(1, block, 3)[0] * 42.0,
        np.where(np.arange(block) == block // 2, -1000.0, rng.normal(0, 0.01, block)),
        rng.normal(0, 1, block) * 1e-7,
        rng.normal(0, 1, block) * 1e-39,
        np.where(rng.random(block) < 0.5, 1.0, -2.0),
        np.linspace(-1, 3, block),
        np.abs(rng.standard_t(1, block)),
    ]
    return np.array(rows, np.float32)


def weights_for(block: int) -> np.ndarray:
    return np.concatenate(
        [
            mixed_weights(12, 2048).reshape(-1, block),
            edge_blocks(block),
            special_blocks(block),
        ]
    )


@pytest.mark.parametrize("name", SEARCHED)
def test_no_block_worse_than_reference(name):
    t = GGML_TYPES[name]
    x = weights_for(t.block_size)
    ref = t.encode(x)
    ours = t.encode(x, search="mse")
    assert ours.shape == ref.shape and ours.dtype == np.uint8
    e_ref = block_errors(x, gguf_decode(ref, name), t.block_size)
    e_ours = block_errors(x, gguf_decode(ours, name), t.block_size)
    worse = np.flatnonzero(e_ours > e_ref)
    assert worse.size == 0, f"blocks {worse[:10]} worse than the reference"
    # a block differs from the reference's only where it has strictly less error
    changed = (ours != ref).any(axis=1)
    assert (e_ours[changed] < e_ref[changed]).all()
    # and most ordinary blocks improve
    gaussian = slice(0, 6 * 2048 // t.block_size)
    assert (e_ours[gaussian] < e_ref[gaussian]).mean() > 0.5


@pytest.mark.parametrize("name", SEARCHED)
def test_decodes_as_gguf_decodes(name):
    t = GGML_TYPES[name]
    x = weights_for(t.block_size)
    raw = t.encode(x, search="mse")
    mine = t.decode(raw, t.block_size)
    theirs = gguf_decode(raw, name)
    np.testing.assert_array_equal(mine.view(np.uint32), theirs.view(np.uint32))


@pytest.mark.parametrize("name", SEARCHED)
def test_special_blocks_never_worse(name):
    t = GGML_TYPES[name]
    x = special_blocks(t.block_size)
    e_ref = block_errors(x, t.decode(t.encode(x), t.block_size), t.block_size)
    raw = t.encode(x, search="mse")
    e_ours = block_errors(x, t.decode(raw, t.block_size), t.block_size)
    assert (e_ours <= e_ref).all()
    # an all-zero block stays exactly zero
    assert not t.decode(raw[:1], t.block_size).any()


# reference relative MSE on seeded N(0,1) (docs/GGUF.md) and the least the search must take
# off it
GAINS = {
    "Q4_0": 0.08,
    "Q4_1": 0.15,
    "Q5_0": 0.08,
    "Q5_1": 0.15,
    "Q8_0": 0.1,
    "Q2_K": 0.15,
    "Q3_K": 0.05,
    "Q4_K": 0.02,
    "Q5_K": 0.04,
    "Q6_K": 0.08,
}


@pytest.mark.parametrize("name", SEARCHED)
def test_less_error_on_gaussian_weights(name):
    x = np.random.default_rng(1).standard_normal((16, 4096), dtype=np.float32)
    t = GGML_TYPES[name]
    ref = relative_mse(x, t.decode(t.encode(x), 4096))
    ours = relative_mse(x, t.decode(t.encode(x, search="mse"), 4096))
    assert ours < ref * (1 - GAINS[name])


def test_q4_k_reaches_the_projects_goal():
    """relative MSE <= 0.0050 at 4.5 bits per weight on N(0,1) (the reference: 0.00509)."""
    x = np.random.default_rng(1).standard_normal((128, 4096), dtype=np.float32)
    t = GGML_TYPES["Q4_K"]
    assert relative_mse(x, t.decode(t.encode(x), 4096)) > 0.0050
    assert relative_mse(x, t.decode(t.encode(x, search="mse"), 4096)) <= 0.0050


@pytest.mark.parametrize("name", ["Q4_0", "Q4_K", "Q6_K"])
def test_search_none_is_the_reference(name):
    x = mixed_weights(6, 1024)
    t = GGML_TYPES[name]
    np.testing.assert_array_equal(t.encode(x, search="none"), t.encode(x))


def test_mxfp4_has_no_search():
    t = GGML_TYPES["MXFP4"]
    assert t.searches == ("none",)
    with pytest.raises(SpecError, match="MXFP4 offers none"):
        t.encode(np.ones((1, 32), np.float32), "w", search="mse")


@pytest.mark.parametrize("name", SEARCHED)
def test_search_raises_no_floating_point_warnings(name, strict_numerics):
    t = GGML_TYPES[name]
    x = np.concatenate(
        [mixed_weights(6, 1024).reshape(-1, t.block_size), edge_blocks(256)[:, : t.block_size]]
    )
    with strict_numerics():
        t.decode(t.encode(x, search="mse"), t.block_size)


@pytest.mark.parametrize("name", SEARCHED)
def test_search_does_not_depend_on_the_chunking(name):
    import dataclasses

    t = GGML_TYPES[name]
    x = mixed_weights(6, t.block_size * 8)
    tiny = dataclasses.replace(t, chunk_elements=t.block_size * 3)
    np.testing.assert_array_equal(tiny.encode(x, search="mse"), t.encode(x, search="mse"))
