"""The two-level scale table of docs/SEARCH.md: relative MSE of quant's zeropoint codes with
two-level (super-block) scales against llama.cpp's K-quants at equal bits per weight, on
seeded N(0, 1) and Student-t(5) weights.

    python benchmarks/two_level_table.py [--rows 4096] [--cols 4096] [--seed 0]
        [--scheme zeropoint|absmax]

quant's figures come from ``quantize`` and ``dequantize`` (what compress writes and
decompress restores), bits per weight from the arrays compress stores; the K-quants' from
``quantcli.core.ggml`` (byte-identical to llama.cpp's reference encoders).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from quantcli.core.ggml import GGML_TYPES
from quantcli.core.quantizer import quantize
from quantcli.core.spec import QuantSpec
from quantcli.io.quantized_format import stored_arrays

# (K-quant compared with, label, spec fields) for quant
CASES = [
    ("Q4_K", "zp 4-bit g32 k6x8", dict(bits=4, group_size=32, scale_dtype="k6", super_block=8)),
    ("Q3_K", "zp 3-bit g32 k6x16", dict(bits=3, group_size=32, scale_dtype="k6", super_block=16)),
    ("Q3_K", "zp 3-bit g32 k4x8", dict(bits=3, group_size=32, scale_dtype="k4", super_block=8)),
    ("Q2_K", "zp 2-bit g16 k4x16", dict(bits=2, group_size=16, scale_dtype="k4", super_block=16)),
    ("Q2_K", "zp 2-bit g32 k8x8", dict(bits=2, group_size=32, scale_dtype="k8", super_block=8)),
    (
        "Q3_K",
        "absmax 3-bit g16 k6x16",
        dict(scheme="absmax", bits=3, group_size=16, scale_dtype="k6", super_block=16),
    ),
    (
        "Q6_K",
        "absmax 6-bit g16 k8x16",
        dict(scheme="absmax", bits=6, group_size=16, scale_dtype="k8", super_block=16),
    ),
]
SEARCHES = ("none", "mse", "wmse")


def matrices(rows: int, cols: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "N(0,1)": rng.standard_normal((rows, cols)).astype(np.float32),
        "t(5)": rng.standard_t(5, (rows, cols)).astype(np.float32),
    }


def relative(w: np.ndarray, w_hat: np.ndarray) -> float:
    w64 = w.astype(np.float64)
    return float(np.sum((w64 - w_hat) ** 2) / np.sum(w64**2))


def quant_figure(w: np.ndarray, spec: QuantSpec) -> tuple[float, float]:
    """(relative MSE, bits per weight) of ``w`` through quant with ``spec``."""
    qt = quantize(w, spec, packed=True)
    nbytes = sum(a.nbytes for _, a in stored_arrays("w", qt))
    return relative(w, qt.dequantize()), 8 * nbytes / w.size


def kquant_figure(w: np.ndarray, name: str) -> tuple[float, float]:
    t = GGML_TYPES[name]
    return relative(w, t.decode(t.encode(w), w.shape[-1])), t.bits_per_weight


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scheme", choices=("zeropoint", "absmax"), default=None)
    args = parser.parse_args(argv)
    data = matrices(args.rows, args.cols, args.seed)
    names = list(data)
    head = ["encoding", "bits/weight"] + names
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    done = set()
    for kquant, label, fields in CASES:
        if args.scheme is not None and fields.get("scheme", "zeropoint") != args.scheme:
            continue
        if kquant not in done:
            done.add(kquant)
            cells = [kquant_figure(w, kquant) for w in data.values()]
            row = [f"llama.cpp {kquant}", f"{cells[0][1]:.4g}"] + [f"{e:.5f}" for e, _ in cells]
            out.append("| " + " | ".join(row) + " |")
        for search in SEARCHES:
            start = time.perf_counter()
            spec = QuantSpec(
                **{"scheme": "zeropoint", **fields}, granularity="group", search=search
            )
            cells = [quant_figure(w, spec) for w in data.values()]
            row = [f"quant {label}, search {search}", f"{cells[0][1]:.4g}"]
            out.append("| " + " | ".join(row + [f"{e:.5f}" for e, _ in cells]) + " |")
            print(f"{label} {search}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
