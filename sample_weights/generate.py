"""Regenerate the bundled sample weights (seeded, so the files are reproducible).

    python sample_weights/generate.py

- seed_outlier.npy: the seed notebook's case, 10,000 draws of U(-50, 150) rounded to 2
  decimals with the last value set to 1000 (float32).
- uniform_4x128x256.npy: a (4, 128, 256) U(-50, 150) tensor whose first three values are
  max + 1, min - 1 and 0 (float32).
- transformer.safetensors: a small transformer-like checkpoint: 2-D weights N(0, 0.02), 1-D
  norms and biases, an int64 buffer (float32); transformer.bf16.safetensors: the same in bf16.
"""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

HERE = Path(__file__).resolve().parent
HIDDEN, FFN, VOCAB, LAYERS = 64, 172, 256, 2


def seed_outlier(rng: np.random.Generator) -> np.ndarray:
    x = np.round(rng.uniform(-50, 150, 10_000), 2)
    x[-1] = 1000
    return x.astype(np.float32)


def uniform_block(rng: np.random.Generator) -> np.ndarray:
    x = rng.uniform(-50, 150, (4, 128, 256)).astype(np.float32)
    flat = x.reshape(-1)
    flat[0], flat[1], flat[2] = flat.max() + 1, flat.min() - 1, 0
    return x


def transformer(rng: np.random.Generator) -> dict[str, np.ndarray]:
    def weight(*shape):
        return rng.normal(0, 0.02, shape).astype(np.float32)

    tensors = {"model.embed_tokens.weight": weight(VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            tensors[p + f"self_attn.{name}.weight"] = weight(HIDDEN, HIDDEN)
        tensors[p + "self_attn.q_proj.bias"] = weight(HIDDEN)
        tensors[p + "mlp.up_proj.weight"] = weight(FFN, HIDDEN)
        tensors[p + "mlp.down_proj.weight"] = weight(HIDDEN, FFN)
        tensors[p + "input_layernorm.weight"] = (1 + rng.normal(0, 0.05, HIDDEN)).astype(np.float32)
    tensors["model.norm.weight"] = np.ones(HIDDEN, np.float32)
    tensors["lm_head.weight"] = weight(VOCAB, HIDDEN)
    tensors["model.position_ids"] = np.arange(128, dtype=np.int64)[None, :]
    return tensors


def main() -> None:
    rng = np.random.default_rng(20261126)
    np.save(HERE / "seed_outlier.npy", seed_outlier(rng))
    np.save(HERE / "uniform_4x128x256.npy", uniform_block(rng))
    tensors = transformer(rng)
    meta = {"format": "pt", "source": "quant sample_weights/generate.py"}
    save_file(tensors, str(HERE / "transformer.safetensors"), metadata=meta)
    bf16 = {
        k: v.astype(ml_dtypes.bfloat16) if v.dtype == np.float32 else v for k, v in tensors.items()
    }
    save_file(bf16, str(HERE / "transformer.bf16.safetensors"), metadata=meta)


if __name__ == "__main__":
    main()
