"""llama.cpp's ggml block types as NumPy codecs: float32 rows <-> GGUF tensor bytes.

``GGML_TYPES`` is the registry: for each type its ggml type id (``enum ggml_type`` in
ggml.h, gguf-py's ``GGMLQuantizationType``), block size in elements, bytes per block, and an
encoder and a decoder. The encoders reproduce llama.cpp's reference quantizers (the ones
``llama-quantize`` runs without an importance matrix) and the decoders its dequantizers; the
block layouts are described in each family's module and in docs/GGUF.md.

    from quantcli.core.ggml import GGML_TYPES
    q4k = GGML_TYPES["Q4_K"]
    raw = q4k.encode(w)            # float32 (rows, n) -> uint8 (rows, n // 256 * 144)
    w_hat = q4k.decode(raw, n)     # -> float32 (rows, n)

A row whose length is not a multiple of the block is refused (``BlockSizeError``): choosing
another type is the caller's decision, and ``FALLBACK_TYPES`` / ``fallback_type`` give
llama.cpp's choice. Work is done in cache-sized chunks of whole blocks (on ``QUANT_THREADS``
threads when set); results do not depend on the chunking.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from quantcli.core.ggml import legacy, mxfp4, q2_k, q3_k, q4_k, q6_k
from quantcli.core.ggml.search import SEARCH_ENCODERS
from quantcli.core.parallel import map_chunks
from quantcli.errors import InputError, NonFiniteError, SpecError

BlockCodec = Callable[[np.ndarray, np.ndarray], None]

# float32 elements a chunk holds. Legacy types: their temporaries stay in the L2 cache.
# K-quants: 500 super-blocks, so the searches' (n, sub-blocks) arrays have rows of 4000 or
# 8000 floats: larger chunks pay NumPy's per-call cost less often (the searches make about
# 40 calls a candidate), and rows of 1024 or 2048 floats (4 or 8 KiB apart) made
# broadcasting operations five times slower on the project machine (cache aliasing).
LEGACY_CHUNK_ELEMENTS = 1 << 17
K_CHUNK_ELEMENTS = 128_000
# Q3_K's coordinate descent makes its later passes over the few sub-blocks still changing,
# at a cost per pass that hardly depends on their number: twice the chunk halves it per
# weight (12 -> 22 M weights/s on the project machine; larger chunks gained nothing more)
Q3_K_CHUNK_ELEMENTS = 256_000
# how ``encode`` chooses scales: llama.cpp's reference rules, or least squared error
SEARCHES = ("none", "mse")
# chunk of the least-squares searches: not the legacy types' 2**17, whose 4096 blocks make
# the searches' element-major (32, 4096) arrays rows 16 KiB apart, measured 1.2-1.6x slower
# than 4000 blocks (the same cache aliasing as K_CHUNK_ELEMENTS describes)
SEARCH_CHUNK_ELEMENTS = 128_000


class BlockSizeError(SpecError):
    """A row's length is not a multiple of the ggml type's block size."""


@dataclass(frozen=True)
class GGMLType:
    """One ggml block type.

    encode_blocks(x float32 (n, block_size), out uint8 (n, block_bytes)) and
    decode_blocks(raw uint8 (n, block_bytes), out float32 (n, block_size)) work on whole
    blocks; ``encode`` and ``decode`` take rows of any leading shape.
    """

    name: str
    type_id: int
    block_size: int
    block_bytes: int
    encode_blocks: BlockCodec
    decode_blocks: BlockCodec
    chunk_elements: int = LEGACY_CHUNK_ELEMENTS
    # least-squares encoder (``quantcli.core.ggml.search``), None for a type without one
    search_blocks: BlockCodec | None = None

    @property
    def searches(self) -> tuple[str, ...]:
        """The ``search`` values ``encode`` takes for this type."""
        return SEARCHES if self.search_blocks is not None else ("none",)

    @property
    def bits_per_weight(self) -> float:
        return self.block_bytes * 8 / self.block_size

    def row_bytes(self, n: int) -> int:
        """Bytes a row of ``n`` elements takes (``n`` a multiple of the block size)."""
        return n // self.block_size * self.block_bytes

    def check_row_size(self, n: int, name: str = "tensor") -> None:
        """Raise BlockSizeError unless rows of ``n`` elements fit whole blocks."""
        if n % self.block_size:
            raise BlockSizeError(
                f"{self.name} in tensor {name}: row size ({n}) is not a multiple of "
                f"{self.name} block size ({self.block_size}); choose another type "
                f"(llama.cpp would store it as {fallback_type(self.name, n)})"
            )

    def encode(self, x: np.ndarray, name: str = "tensor", search: str = "none") -> np.ndarray:
        """Quantize float rows ``x`` (..., n) (float32, or a float dtype converted to it) into
        uint8 (..., n // block_size * block_bytes).

        search: "none", llama.cpp's reference quantizer (the same bytes); "mse", the
        least-squares encoder, whose blocks never have more squared error than the
        reference's (types without one refuse it: ``searches``).

        Raises BlockSizeError when n is not a multiple of the block size, InputError for
        non-float input, NonFiniteError when ``x`` holds NaN or inf, and SpecError for a
        search the type does not offer.
        """
        if search not in self.searches:
            raise SpecError(
                f"--search {search} with {self.name} in tensor {name}: {self.name} offers "
                f"{', '.join(self.searches)}; use --search none for it"
            )
        codec = self.encode_blocks if search == "none" else self.search_blocks
        x = np.asarray(x)
        if x.ndim == 0:
            raise InputError(f"scalar tensor {name}: {self.name} needs rows; reshape it to (1, n)")
        if x.dtype.kind != "f" and x.dtype.name != "bfloat16":
            raise InputError(
                f"unsupported dtype {x.dtype} in tensor {name}: only float tensors can be "
                f"stored as {self.name}; convert it first"
            )
        n = x.shape[-1]
        self.check_row_size(n, name)
        blocks = x.reshape(-1, self.block_size)
        out = np.empty((blocks.shape[0], self.block_bytes), np.uint8)
        bounds = self._chunks(blocks.shape[0], search)

        def run(chunk: tuple[int, int]) -> None:
            part = blocks[chunk[0] : chunk[1]]
            part = part if part.dtype == np.float32 else part.astype(np.float32)
            # one pass: a sum of finite values is finite unless it overflows, which only the
            # exact check (two passes) then tells apart from an inf or NaN in the data
            with np.errstate(over="ignore", invalid="ignore"):
                finite = np.isfinite(np.add.reduce(part, axis=None))
            if not finite:
                lo, hi = part.min(initial=0.0), part.max(initial=0.0)
                if not (np.isfinite(lo) and np.isfinite(hi)):
                    raise _nonfinite_error(x, name)
            # as in llama.cpp, scales of huge weights overflow float16 to inf, and 1 / d
            # overflows for tiny ones (its codes then come from casting inf and NaN)
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                codec(np.ascontiguousarray(part), out[chunk[0] : chunk[1]])

        map_chunks(run, bounds)
        return out.reshape(x.shape[:-1] + (self.row_bytes(n),))

    def _chunks(self, blocks: int, search: str = "none") -> list[tuple[int, int]]:
        """(start, stop) of the encoder's chunks: ``chunk_elements`` worth of blocks each,
        the last one taking the rest when that is less than half a chunk (a small chunk
        would pay the searches' fixed cost for little work: Q3_K's later passes cost about
        as much for 24 super-blocks as for 1000). Equal chunks would often have a power of
        two of sub-blocks, which the K-quant searches run slowly on (see K_CHUNK_ELEMENTS);
        the least-squares searches take SEARCH_CHUNK_ELEMENTS at most, for the same reason."""
        elements = self.chunk_elements
        if search != "none":
            elements = min(elements, SEARCH_CHUNK_ELEMENTS)
        step = max(1, elements // self.block_size)
        starts = list(range(0, blocks, step))
        if len(starts) > 1 and blocks - starts[-1] < step // 2:
            starts.pop()
        return list(zip(starts, starts[1:] + [blocks]))

    def decode(self, raw: np.ndarray, n: int, name: str = "tensor") -> np.ndarray:
        """Restore float32 (..., n) from uint8 rows ``raw`` (..., n // block_size *
        block_bytes).

        Raises BlockSizeError when n is not a multiple of the block size and InputError when
        the byte count does not match n.
        """
        raw = np.asarray(raw)
        self.check_row_size(n, name)
        if raw.dtype != np.uint8 or raw.ndim == 0 or raw.shape[-1] != self.row_bytes(n):
            got = raw.shape[-1] if raw.ndim else 0
            raise InputError(
                f"{self.name} data of tensor {name}: {raw.dtype} rows of {got} bytes, "
                f"expected uint8 rows of {self.row_bytes(n)} bytes for {n} elements; "
                "check the tensor's type and shape"
            )
        blocks = raw.reshape(-1, self.block_bytes)
        out = np.empty((blocks.shape[0], self.block_size), np.float32)
        step = max(1, self.chunk_elements // self.block_size)

        def run(start: int) -> None:
            part = np.ascontiguousarray(blocks[start : start + step])
            # inf and NaN scales in the data decode to inf and NaN, as in llama.cpp
            with np.errstate(over="ignore", invalid="ignore"):
                self.decode_blocks(part, out[start : start + step])

        map_chunks(run, range(0, blocks.shape[0], step))
        return out.reshape(raw.shape[:-1] + (n,))


def _nonfinite_error(x: np.ndarray, name: str) -> NonFiniteError:
    x = np.asarray(x, np.float32)
    bad = int(np.count_nonzero(~np.isfinite(x)))
    nan = int(np.count_nonzero(np.isnan(x)))
    return NonFiniteError(
        f"{bad} non-finite values ({nan} NaN, {bad - nan} inf) in tensor {name}: "
        "they cannot be quantized; fix the weights, or keep this tensor unquantized"
    )


GGML_TYPES: dict[str, GGMLType] = {
    t.name: t
    for t in (
        GGMLType("Q4_0", 2, 32, 18, legacy.encode_q4_0, legacy.decode_q4_0),
        GGMLType("Q4_1", 3, 32, 20, legacy.encode_q4_1, legacy.decode_q4_1),
        GGMLType("Q5_0", 6, 32, 22, legacy.encode_q5_0, legacy.decode_q5_0),
        GGMLType("Q5_1", 7, 32, 24, legacy.encode_q5_1, legacy.decode_q5_1),
        GGMLType("Q8_0", 8, 32, 34, legacy.encode_q8_0, legacy.decode_q8_0),
        GGMLType("Q2_K", 10, 256, 84, q2_k.encode_q2_k, q2_k.decode_q2_k, K_CHUNK_ELEMENTS),
        GGMLType("Q3_K", 11, 256, 110, q3_k.encode_q3_k, q3_k.decode_q3_k, Q3_K_CHUNK_ELEMENTS),
        GGMLType("Q4_K", 12, 256, 144, q4_k.encode_q4_k, q4_k.decode_q4_k, K_CHUNK_ELEMENTS),
        GGMLType("Q5_K", 13, 256, 176, q4_k.encode_q5_k, q4_k.decode_q5_k, K_CHUNK_ELEMENTS),
        GGMLType("Q6_K", 14, 256, 210, q6_k.encode_q6_k, q6_k.decode_q6_k, K_CHUNK_ELEMENTS),
        GGMLType("MXFP4", 39, 32, 17, mxfp4.encode_mxfp4, mxfp4.decode_mxfp4),
    )
}
# every type but MXFP4 (whose scale is a power of two) has a least-squares encoder
GGML_TYPES.update(
    {name: replace(GGML_TYPES[name], search_blocks=f) for name, f in SEARCH_ENCODERS.items()}
)


GGML_TYPES_BY_ID: dict[int, GGMLType] = {t.type_id: t for t in GGML_TYPES.values()}

# llama.cpp's choice (tensor_type_fallback in src/llama-quant.cpp) when a row does not fit a
# K-quant's 256-element super-block; if the fallback's 32-element block does not fit
# either, it stores the tensor as F16, as it does when a 32-element type's own block does
# not fit (llama.cpp 0c1e57098; earlier versions refused those).
FALLBACK_TYPES: dict[str, str] = {
    "Q2_K": "Q4_0",
    "Q3_K": "Q4_0",
    "Q4_K": "Q5_0",
    "Q5_K": "Q5_1",
    "Q6_K": "Q8_0",
}


def fallback_type(name: str, n: int) -> str:
    """The type llama.cpp stores rows of ``n`` elements in when ``name`` is asked for:
    ``name`` itself when its block divides n, else its fallback type when that one's block
    does, else "F16" (the 32-element types have no smaller block to fall back to)."""
    if n % GGML_TYPES[name].block_size == 0:
        return name
    fallback = FALLBACK_TYPES.get(name, name)
    return fallback if n % GGML_TYPES[fallback].block_size == 0 else "F16"


def encode(x: np.ndarray, type_name: str, name: str = "tensor", search: str = "none") -> np.ndarray:
    """``GGML_TYPES[type_name].encode(x, name, search)``."""
    return GGML_TYPES[type_name].encode(x, name, search)


def decode(raw: np.ndarray, type_name: str, n: int, name: str = "tensor") -> np.ndarray:
    """``GGML_TYPES[type_name].decode(raw, n, name)``."""
    return GGML_TYPES[type_name].decode(raw, n, name)


__all__ = [
    "FALLBACK_TYPES",
    "GGML_TYPES",
    "GGML_TYPES_BY_ID",
    "SEARCHES",
    "BlockSizeError",
    "GGMLType",
    "decode",
    "encode",
    "fallback_type",
]
