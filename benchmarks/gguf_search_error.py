"""Relative MSE of the ggml types written by llama.cpp's reference encoder (search "none")
and by quant's least-squares encoder (search "mse"), on the same weights: the table of
docs/GGUF.md ("Less error in the same types").

    python benchmarks/gguf_search_error.py [--rows 4096] [--types Q4_K,Q6_K]

Data: seeded N(0, 1) and Student-t(5) (rows x 4096, float32), and the bundled
sample_weights/ (every float array's values, flattened into rows of 256). Also prints each
encoder's speed on one thread (CPU time, M weights/s).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from quantcli.core.ggml import GGML_TYPES
from quantcli.core.ggml.search import SEARCH_ENCODERS

SAMPLES = Path(__file__).resolve().parent.parent / "sample_weights"


def datasets(rows: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    out = {
        "N(0,1)": rng.standard_normal((rows, 4096), dtype=np.float32),
        "Student-t(5)": np.random.default_rng(2).standard_t(5, (rows, 4096)).astype(np.float32),
    }
    parts = [a.reshape(-1) for a in load_file(SAMPLES / "transformer.safetensors").values()]
    parts = [p for p in parts if p.dtype == np.float32 and p.size >= 1024]
    parts += [np.load(SAMPLES / "uniform_4x128x256.npy").reshape(-1)]
    parts += [np.load(SAMPLES / "seed_outlier.npy").reshape(-1)]
    flat = np.concatenate([p[: p.size // 256 * 256] for p in parts]).astype(np.float32)
    out["sample_weights"] = flat.reshape(-1, 256)
    return out


def relative_mse(x: np.ndarray, x_hat: np.ndarray) -> float:
    x64 = x.astype(np.float64)
    return float(((x64 - x_hat) ** 2).sum() / (x64**2).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--types", default=",".join(SEARCH_ENCODERS))
    args = parser.parse_args()
    data = datasets(args.rows)
    names = list(data)
    print("| type | bits/w | " + " | ".join(f"{n} reference | {n} mse" for n in names) + " |")
    print("|---|---|" + "---|---|" * len(names))
    speeds = []
    for kind in args.types.split(","):
        t = GGML_TYPES[kind]
        cells = []
        for name in names:
            x = data[name]
            n = x.shape[1]
            ref = relative_mse(x, t.decode(t.encode(x), n))
            start = time.process_time()
            raw = t.encode(x, search="mse")
            spent = time.process_time() - start
            ours = relative_mse(x, t.decode(raw, n))
            if name == "N(0,1)":
                speeds.append((kind, x.size / spent / 1e6))
            cells.append(f"{ref:.4g} | {ours:.4g} ({100 * (ours / ref - 1):+.1f} %)")
        print(f"| {kind} | {t.bits_per_weight:.4g} | " + " | ".join(cells) + " |", flush=True)
    print()
    print("search mse encoder speed on N(0,1), CPU time, one thread:")
    for kind, rate in speeds:
        print(f"  {kind}: {rate:.2f} M weights/s")


if __name__ == "__main__":
    main()
