"""The error tables of docs/SEARCH.md: relative MSE of round-to-nearest and of the scale
searches (quantcli.core.search) on seeded N(0, 1) and Student-t(5) weights.

    python benchmarks/search_table.py [--rows 1024] [--seed 0] > table.md

Relative MSE = ||W - W_hat||^2 / ||W||^2 over the whole rows x 4096 matrix, W_hat decoded
from the parameters as an encoder would (codes nearest to x / scale, in float32).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from quantcli.core.search import (
    E2M1,
    NF4,
    affine_error,
    affine_rtn,
    affine_search,
    hqq_params,
    int_grid,
    mse_scales,
    superblock_params,
    symmetric_error,
    symmetric_rtn_scales,
)

GROUPS = (32, 64, 128)


def matrices(rows: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "N(0,1)": rng.standard_normal((rows, 4096)).astype(np.float32),
        "t(5)": rng.standard_t(5, (rows, 4096)).astype(np.float32),
    }


def relative(errors: np.ndarray, w: np.ndarray) -> float:
    return float(errors.sum() / np.sum(w.astype(np.float64) ** 2))


def symmetric_rows(data: dict[str, np.ndarray]) -> list[list[str]]:
    grids = []
    for bits in (2, 3, 4):
        grids.append(
            (f"int{bits} -{2 ** (bits - 1) - 1}..{2 ** (bits - 1) - 1}", int_grid(bits), False)
        )
        grids.append((f"int{bits} full range, signed scale", int_grid(bits, True), True))
    grids += [("NF4", NF4, False), ("E2M1", E2M1, False)]
    rows = []
    for label, grid, mirror in grids:
        for g in GROUPS:
            cells = [label, str(g)]
            for w in data.values():
                x = w.reshape(-1, g)
                rtn = symmetric_rtn_scales(x, grid, mirror=mirror)
                plain = mse_scales(x, grid, mirror=mirror, weights="plain")
                default = mse_scales(x, grid, mirror=mirror)
                for s in (rtn, plain, default):
                    cells.append(f"{relative(symmetric_error(x, s, grid), w):.5f}")
            rows.append(cells)
    return rows


def affine_rows(data: dict[str, np.ndarray]) -> list[list[str]]:
    rows = []
    for offset in ("float", "integer"):
        for bits in (2, 3, 4):
            for g in GROUPS:
                cells = [f"{bits}-bit, {offset}", str(g)]
                for w in data.values():
                    x = w.reshape(-1, g)
                    # round-to-nearest as each container does it: Q4_1's raw min-max for a
                    # float offset, quant's zero-including range for a zero point
                    rtn = affine_rtn(x, bits, offset, nonpositive_offset=False)
                    plain = affine_search(x, bits, offset, weights="plain")
                    default = affine_search(x, bits, offset)
                    hqq = hqq_params(x, bits, offset)
                    for p in (rtn, plain, default, hqq):
                        cells.append(f"{relative(affine_error(x, p, bits), w):.5f}")
                rows.append(cells)
    return rows


def four_and_a_half_bits(data: dict[str, np.ndarray]) -> list[list[str]]:
    rows = []
    try:
        import gguf
    except ImportError:
        gguf = None
    labels = []
    if gguf is not None:
        for name in ("Q4_0", "Q4_1"):
            kind = getattr(gguf.GGMLQuantizationType, name)
            cells = [f"llama.cpp {name} (gguf-py reference encoder)"]
            for w in data.values():
                restored = gguf.quants.dequantize(gguf.quants.quantize(w, kind), kind)
                cells.append(f"{relative(np.sum((w - restored) ** 2.0, axis=1), w):.5f}")
            rows.append(cells + ["4.5" if name == "Q4_0" else "5.0"])
    for weights in ("plain", "rms_abs"):
        cells = [f"g32 search ({weights}) + 6-bit super-block scales and mins"]
        for w in data.values():
            x = w.reshape(-1, 32)
            sb = superblock_params(x, affine_search(x, 4, weights=weights), 4)
            cells.append(f"{relative(affine_error(x, sb.affine(), 4), w):.5f}")
        rows.append(cells + ["4.5"])
        labels.append(weights)
    for weights in ("plain", "rms_abs"):
        cells = [f"g64 search ({weights}), float16 scale and offset"]
        for w in data.values():
            x = w.reshape(-1, 64)
            p = affine_search(x, 4, weights=weights, scale_dtype=np.float16)
            cells.append(f"{relative(affine_error(x, p, 4), w):.5f}")
        rows.append(cells + ["4.5"])
    return rows


def _measures(x: np.ndarray, x_hat: np.ndarray) -> tuple[float, float, float]:
    """Relative MSE, the error weighted by x^2, the mean of the groups' largest error."""
    x = x.astype(np.float64)
    e = x - x_hat
    mse = np.sum(e * e) / np.sum(x * x)
    return mse, np.sum(x * x * e * e), np.abs(e).max(axis=1).mean()


def _symmetric_int4(x: np.ndarray, s: np.ndarray) -> np.ndarray:
    return s[:, None] * np.clip(np.rint(x / s[:, None]), -7, 7)


def _affine_4(x: np.ndarray, p) -> np.ndarray:
    q = np.clip(np.rint((x - p.offset[:, None]) / p.scale[:, None]), 0, 15)
    return q * p.scale[:, None] + p.offset[:, None]


def weighting_rows(data: dict[str, np.ndarray]) -> list[list[str]]:
    """What each weighting trades: relative MSE, and against round-to-nearest the error
    weighted by x^2 (the large weights) and the mean of the groups' largest error."""
    rows = []
    grid = int_grid(4)
    for label, w in data.items():
        x = w.reshape(-1, 64)
        for kind in ("int4 -7..7", "4-bit, float offset"):
            if kind.startswith("int4"):
                rtn = _symmetric_int4(x, symmetric_rtn_scales(x, grid))
            else:
                rtn = _affine_4(x, affine_rtn(x, 4, "float"))
            _, rtn_sq, rtn_max = _measures(x, rtn)
            for weights in ("plain", "rms_abs", "square"):
                if kind.startswith("int4"):
                    x_hat = _symmetric_int4(x, mse_scales(x, grid, weights=weights))
                else:
                    x_hat = _affine_4(x, affine_search(x, 4, weights=weights))
                mse, sq, largest = _measures(x, x_hat)
                cells = [f"{mse:.5f}", f"{sq / rtn_sq:.2f}", f"{largest / rtn_max:.2f}"]
                rows.append([label, kind, weights, *cells])
    return rows


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = matrices(args.rows, args.seed)
    start = time.perf_counter()
    names = list(data)
    sym_header = ["grid", "group"] + [
        f"{d} {m}" for d in names for m in ("RTN", "search plain", "search default")
    ]
    print(f"Symmetric, float32 scales ({args.rows} x 4096, seed {args.seed})\n")
    print(table(sym_header, symmetric_rows(data)))
    aff_header = ["format", "group"] + [
        f"{d} {m}" for d in names for m in ("RTN", "search plain", "search default", "HQQ")
    ]
    print(f"\nAffine, float32 scales and offsets ({args.rows} x 4096, seed {args.seed})\n")
    print(table(aff_header, affine_rows(data)))
    print(f"\nAbout 4.5 bits a weight, 4-bit codes ({args.rows} x 4096, seed {args.seed})\n")
    print(table(["encoding"] + names + ["bits/weight"], four_and_a_half_bits(data)))
    print(f"\nWeightings, groups of 64 ({args.rows} x 4096, seed {args.seed})\n")
    header = ["weights", "format", "search weights", "relative MSE", "x^2-weighted error / RTN's"]
    print(table(header + ["largest error / RTN's"], weighting_rows(data)))
    print(f"\n({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
