"""The ggml type registry: ids and sizes as gguf-py knows them, row checks and their errors,
llama.cpp's fallback table, shapes, dtypes and chunking."""

from __future__ import annotations

import dataclasses

import ml_dtypes
import numpy as np
import pytest
from ggml_cases import mixed_weights

from quantcli.core.ggml import (
    FALLBACK_TYPES,
    GGML_TYPES,
    GGML_TYPES_BY_ID,
    BlockSizeError,
    decode,
    encode,
    fallback_type,
)
from quantcli.errors import InputError, NonFiniteError, QuantError, SpecError

gguf = pytest.importorskip("gguf")

ALL = sorted(GGML_TYPES)


@pytest.mark.parametrize("name", ALL)
def test_ids_and_sizes_are_ggufs(name):
    t = GGML_TYPES[name]
    gtype = gguf.GGMLQuantizationType[name]
    assert t.type_id == int(gtype)
    assert (t.block_size, t.block_bytes) == gguf.constants.GGML_QUANT_SIZES[gtype]
    assert GGML_TYPES_BY_ID[t.type_id] is t


def test_bits_per_weight():
    bpw = {name: t.bits_per_weight for name, t in GGML_TYPES.items()}
    expected = {"Q4_0": 4.5, "Q4_1": 5.0, "Q5_0": 5.5, "Q5_1": 6.0, "Q8_0": 8.5, "MXFP4": 4.25}
    expected |= {"Q2_K": 2.625, "Q3_K": 3.4375, "Q4_K": 4.5, "Q5_K": 5.5, "Q6_K": 6.5625}
    for name, bits in expected.items():
        assert bpw[name] == bits


@pytest.mark.parametrize("name", ALL)
def test_rows_must_fit_whole_blocks(name):
    t = GGML_TYPES[name]
    n = t.block_size * 3 - 1
    with pytest.raises(BlockSizeError) as info:
        t.encode(np.ones((2, n), np.float32), name="blk.0.ffn_down.weight")
    message = str(info.value)
    assert f"row size ({n}) is not a multiple of {name} block size ({t.block_size})" in message
    assert "blk.0.ffn_down.weight" in message
    assert isinstance(info.value, SpecError) and isinstance(info.value, QuantError)
    with pytest.raises(BlockSizeError):
        t.decode(np.zeros((2, t.block_bytes * 3), np.uint8), n)


def test_a_k_quant_error_names_llama_cpps_fallback():
    with pytest.raises(BlockSizeError) as info:
        encode(np.ones((1, 4128), np.float32), "Q4_K")
    assert str(info.value).endswith(
        "row size (4128) is not a multiple of Q4_K block size (256); "
        "choose another type (llama.cpp would store it as Q5_0)"
    )


def test_the_error_message_gives_the_way_out():
    with pytest.raises(BlockSizeError) as info:
        encode(np.ones((1, 4095), np.float32), "Q4_0", name="token_embd.weight")
    assert str(info.value) == (
        "Q4_0 in tensor token_embd.weight: row size (4095) is not a multiple of Q4_0 block "
        "size (32); choose another type (llama.cpp would store it as F16)"
    )


def test_fallback_table_is_llama_quants():
    # tensor_type_fallback in llama.cpp's src/llama-quant.cpp
    assert FALLBACK_TYPES == {
        "Q2_K": "Q4_0",
        "Q3_K": "Q4_0",
        "Q4_K": "Q5_0",
        "Q5_K": "Q5_1",
        "Q6_K": "Q8_0",
    }
    for name, fallback in FALLBACK_TYPES.items():
        assert GGML_TYPES[fallback].block_size == 32
        assert fallback_type(name, 4096) == name
        assert fallback_type(name, 4096 + 32) == fallback
        assert fallback_type(name, 4096 + 16) == "F16"
    assert fallback_type("Q4_0", 64) == "Q4_0"
    # a 32-element type has no smaller block: F16, as llama.cpp (0c1e57098) writes it
    for name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "MXFP4"):
        assert fallback_type(name, 48) == "F16"


@pytest.mark.parametrize("name", ALL)
def test_byte_count_is_checked_on_decode(name):
    t = GGML_TYPES[name]
    n = t.block_size * 2
    with pytest.raises(InputError, match=f"expected uint8 rows of {2 * t.block_bytes} bytes"):
        t.decode(np.zeros((3, 2 * t.block_bytes + 1), np.uint8), n)
    with pytest.raises(InputError):
        t.decode(np.zeros((3, 2 * t.block_bytes), np.int8), n)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused(bad):
    x = np.ones((4, 512), np.float32)
    x[3, 300] = bad
    for t in GGML_TYPES.values():
        with pytest.raises(NonFiniteError, match="1 non-finite values .* in tensor w"):
            t.encode(x, name="w")


def test_finite_weights_whose_sum_overflows_are_encoded():
    """The finiteness check sums a chunk first: huge finite weights overflow that sum, and the
    exact check then lets them through (+inf and -inf together sum to NaN: still refused)."""
    x = np.full((4, 512), 3e38, np.float32)
    for t in GGML_TYPES.values():
        assert t.encode(x, name="w").shape == (4, t.row_bytes(512))
    x[0, 0], x[1, 0] = np.inf, -np.inf
    with pytest.raises(NonFiniteError, match="2 non-finite values"):
        GGML_TYPES["Q8_0"].encode(x, name="w")


def test_non_float_weights_are_refused():
    with pytest.raises(InputError, match="unsupported dtype int32"):
        encode(np.ones((2, 256), np.int32), "Q8_0")


@pytest.mark.parametrize("name", ALL)
def test_leading_shapes_and_one_row(name):
    t = GGML_TYPES[name]
    n = t.block_size * 4
    x = mixed_weights(12, n).reshape(2, 6, n)
    raw = t.encode(x)
    assert raw.shape == (2, 6, t.row_bytes(n)) and raw.dtype == np.uint8
    np.testing.assert_array_equal(raw.reshape(12, -1), t.encode(x.reshape(12, n)))
    np.testing.assert_array_equal(t.encode(x[1, 2]), raw[1, 2])
    restored = t.decode(raw, n)
    assert restored.shape == x.shape and restored.dtype == np.float32
    np.testing.assert_array_equal(decode(raw[1, 2], name, n), restored[1, 2])


@pytest.mark.parametrize("name", ALL)
def test_results_do_not_depend_on_the_chunking(name):
    t = GGML_TYPES[name]
    x = mixed_weights(24, t.block_size * 16)
    tiny = dataclasses.replace(t, chunk_elements=t.block_size * 3)
    raw = t.encode(x)
    np.testing.assert_array_equal(tiny.encode(x), raw)
    np.testing.assert_array_equal(
        tiny.decode(raw, x.shape[1]).view(np.uint32), t.decode(raw, x.shape[1]).view(np.uint32)
    )


@pytest.mark.parametrize("dtype", [np.float16, np.float64, ml_dtypes.bfloat16])
def test_other_float_dtypes_are_encoded_as_their_float32_values(dtype):
    x = np.random.default_rng(5).standard_normal((6, 512)).astype(dtype)
    for t in GGML_TYPES.values():
        np.testing.assert_array_equal(t.encode(x), t.encode(x.astype(np.float32)))


def test_non_contiguous_input():
    x = mixed_weights(12, 1024)
    for t in GGML_TYPES.values():
        view = x[::2, ::2]
        np.testing.assert_array_equal(t.encode(view), t.encode(np.ascontiguousarray(view)))


def test_results_do_not_depend_on_the_thread_count(monkeypatch):
    x = mixed_weights(12, 2048)
    single = {name: t.encode(x) for name, t in GGML_TYPES.items()}
    monkeypatch.setenv("QUANT_THREADS", "2")
    for name, t in GGML_TYPES.items():
        small = dataclasses.replace(t, chunk_elements=t.block_size * 5)
        np.testing.assert_array_equal(small.encode(x), single[name])
        np.testing.assert_array_equal(
            small.decode(single[name], x.shape[1]).view(np.uint32),
            t.decode(single[name], x.shape[1]).view(np.uint32),
        )


@pytest.mark.parametrize(
    ("blocks", "step", "want"),
    [
        (10, 4, [(0, 4), (4, 8), (8, 10)]),  # a tail of half a chunk stays a chunk
        (9, 4, [(0, 4), (4, 9)]),  # a smaller one joins the chunk before
        (1024, 1000, [(0, 1024)]),
        (3, 4, [(0, 3)]),
        (0, 4, []),
    ],
)
def test_encoder_chunks_cover_every_block_once(blocks, step, want):
    t = dataclasses.replace(GGML_TYPES["Q4_0"], chunk_elements=32 * step)
    assert t._chunks(blocks) == want
