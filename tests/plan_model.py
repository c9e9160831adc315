"""A small Llama checkpoint with weights shaped and scaled like a real one, for the budget's
numbers (tests/test_plan_numbers.py, docs/MIX.md).

    python tests/plan_model.py OUT.safetensors
    python tests/plan_model.py OUT.gguf        # the same weights as an F16 GGUF

The tensor layout (names, shapes, dtype) is LlamaForCausalLM's for ``CONFIG``
(test_plan_numbers.py checks it against transformers). The values are seeded NumPy draws,
not a trained model: Student-t tails (heavier in q/k and down_proj, as trained checkpoints
have), a standard deviation per role that varies with depth (0.008 to 0.05), and a
log-normal scale per output row and per input column, so tensors differ in scale and shape
the way trained ones do. What the numbers show is how the allocation uses such differences,
not how a trained model would score.
"""

from __future__ import annotations

import sys

import ml_dtypes
import numpy as np

# LlamaConfig(**CONFIG) gives the same names and shapes
CONFIG = {
    "vocab_size": 2048,
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "tie_word_embeddings": False,
}
SEED = 20261127

# role -> (standard deviation at the first layer, at the last layer, Student-t degrees of freedom)
ROLES = {
    "self_attn.q_proj": (0.045, 0.025, 3.5),
    "self_attn.k_proj": (0.050, 0.028, 3.5),
    "self_attn.v_proj": (0.010, 0.018, 6.0),
    "self_attn.o_proj": (0.008, 0.016, 5.0),
    "mlp.gate_proj": (0.022, 0.020, 6.0),
    "mlp.up_proj": (0.018, 0.018, 8.0),
    "mlp.down_proj": (0.016, 0.020, 3.0),
}


def _weight(rng: np.random.Generator, shape, std: float, df: float) -> np.ndarray:
    t = rng.standard_t(df, size=shape) / np.sqrt(df / (df - 2))  # unit variance
    rows = rng.lognormal(0.0, 0.25, size=(shape[0], 1))
    cols = rng.lognormal(0.0, 0.35, size=(1, shape[1]))
    return (t * rows * cols * std).astype(np.float32)


def llama_tensors(seed: int = SEED) -> dict[str, np.ndarray]:
    """name -> bfloat16 array, in LlamaForCausalLM's state_dict layout for CONFIG."""
    rng = np.random.default_rng(seed)
    hidden, inter = CONFIG["hidden_size"], CONFIG["intermediate_size"]
    vocab, layers = CONFIG["vocab_size"], CONFIG["num_hidden_layers"]
    head = hidden // CONFIG["num_attention_heads"]
    kv = CONFIG["num_key_value_heads"] * head
    shapes = {
        "self_attn.q_proj": (hidden, hidden),
        "self_attn.k_proj": (kv, hidden),
        "self_attn.v_proj": (kv, hidden),
        "self_attn.o_proj": (hidden, hidden),
        "mlp.gate_proj": (inter, hidden),
        "mlp.up_proj": (inter, hidden),
        "mlp.down_proj": (hidden, inter),
    }
    out = {"model.embed_tokens.weight": _weight(rng, (vocab, hidden), 0.018, 8.0)}
    for i in range(layers):
        depth = i / max(layers - 1, 1)
        p = f"model.layers.{i}."
        for role, (first, last, df) in ROLES.items():
            std = first + (last - first) * depth
            out[p + role + ".weight"] = _weight(rng, shapes[role], std, df)
        out[p + "input_layernorm.weight"] = (1 + rng.normal(0, 0.1, hidden)).astype(np.float32)
        out[p + "post_attention_layernorm.weight"] = (1 + rng.normal(0, 0.1, hidden)).astype(
            np.float32
        )
    out["model.norm.weight"] = (1 + rng.normal(0, 0.1, hidden)).astype(np.float32)
    out["lm_head.weight"] = _weight(rng, (vocab, hidden), 0.025, 6.0)
    return {k: v.astype(ml_dtypes.bfloat16) for k, v in out.items()}


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's rule (src/llama-quant.cpp) for the layers whose attn_v and ffn_down
    Q4_K_M stores as Q6_K: the first and last eighth, and every third layer in between."""
    return (
        i_layer < n_layers // 8
        or i_layer >= 7 * n_layers // 8
        or (i_layer - n_layers // 8) % 3 == 2
    )


def q4_k_m_layers(n_layers: int = CONFIG["num_hidden_layers"]) -> list[int]:
    return [i for i in range(n_layers) if use_more_bits(i, n_layers)]


def save(path: str) -> None:
    from safetensors.numpy import save_file

    save_file(llama_tensors(), path, metadata={"format": "pt"})


# Hugging Face module names -> llama.cpp's tensor names (convert_hf_to_gguf.py)
GGUF_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def gguf_tensors() -> dict[str, np.ndarray]:
    """The same weights under llama.cpp's names, as its converter writes them with
    --outtype f16: 2-D weights in F16, norms in F32."""
    out = {}
    for name, array in llama_tensors().items():
        if name.startswith("model.layers."):
            _, _, layer, rest = name.split(".", 3)
            gguf_name = f"blk.{layer}.{GGUF_NAMES[rest.removesuffix('.weight')]}.weight"
        else:
            gguf_name = {
                "model.embed_tokens.weight": "token_embd.weight",
                "model.norm.weight": "output_norm.weight",
                "lm_head.weight": "output.weight",
            }[name]
        x = array.astype(np.float32)
        out[gguf_name] = x.astype(np.float16) if x.ndim == 2 else x
    return out


def save_gguf(path: str) -> None:
    """An F16 GGUF of the checkpoint (llama metadata, no tokenizer: enough for quant)."""
    import gguf

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(CONFIG["num_hidden_layers"])
    writer.add_embedding_length(CONFIG["hidden_size"])
    writer.add_feed_forward_length(CONFIG["intermediate_size"])
    writer.add_head_count(CONFIG["num_attention_heads"])
    writer.add_head_count_kv(CONFIG["num_key_value_heads"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for name, array in gguf_tensors().items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    (save_gguf if sys.argv[1].endswith(".gguf") else save)(sys.argv[1])
