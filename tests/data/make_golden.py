"""Regenerate the golden files that pin the quantized format (docs/FORMAT.md) byte for byte.

    .venv/bin/python tests/data/make_golden.py            # rewrite the golden outputs
    .venv/bin/python tests/data/make_golden.py --input    # also rewrite golden_input.safetensors

tests/test_format.py re-runs ``quant compress`` on golden_input.safetensors with each entry of
CASES and asserts the output equals the committed file, byte for byte. Only regenerate when
the format changes on purpose (bump ``quant.format_version`` in quantcli/io/quantized_format.py
and docs/FORMAT.md if old files can no longer be read), and review the diff of
``quant inspect --json`` on the old and new files before committing.

The producer recorded in the metadata (``quant.producer``) is pinned to ``quant
GOLDEN_VERSION`` here and in the test, so a version bump alone does not change the files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
INPUT = HERE / "golden_input.safetensors"
GOLDEN_VERSION = "0.0.0-golden"

# golden file name -> quant compress options
# round to nearest (--search none): the format's formulas alone fix every byte
CASES = {
    "golden_absmax4_group.safetensors": [
        "--bits", "4", "--granularity", "group", "--group-size", "32", "--search", "none",
    ],
    "golden_zeropoint8_channel.safetensors": ["--scheme", "zeropoint"],
    "golden_zeropoint3_group_f16.safetensors": [
        "--scheme", "zeropoint", "--bits", "3", "--granularity", "group", "--group-size", "32",
        "--scale-dtype", "float16", "--search", "none",
    ],
}  # fmt: skip


def golden_tensors() -> dict[str, np.ndarray]:
    """A few KB of deterministic weights with the edge cases the format must carry.

    proj.weight (16, 69) float32: an odd last axis (the last 4-bit byte of a row is half
    padding), a ragged last group of 32, an all-zero row (scale 1, codes 0), an all-positive
    row (zero point 0) and an all-negative row (zero point at the top). head.weight (33, 32)
    float16. proj.bias (1-D), step (int64) and mask (bool) are kept byte for byte.
    """
    rng = np.random.default_rng(20261126)
    proj = np.round(rng.normal(0, 0.5, (16, 69)), 3).astype(np.float32)
    proj[3] = 0
    proj[5] = np.abs(proj[5]) + 0.25
    proj[6] = -np.abs(proj[6]) - 0.25
    head = rng.uniform(-2, 6, (33, 32)).astype(np.float16)
    return {
        "proj.weight": proj,
        "proj.bias": np.round(rng.normal(0, 0.1, 69), 3).astype(np.float32),
        "head.weight": head,
        "step": np.array([1234], np.int64),
        "mask": np.array([True, False, True]),
    }


def write_input() -> None:
    from safetensors.numpy import save_file

    save_file(golden_tensors(), str(INPUT), metadata={"format": "pt"})


def compress_args(name: str, output: Path) -> list[str]:
    return ["compress", str(INPUT), "-o", str(output), "--force", "--quiet", *CASES[name]]


def main(argv: list[str]) -> None:
    from typer.testing import CliRunner

    import quantcli
    import quantcli.io.quantized_format as quantized_format
    from quantcli.cli import app

    if "--input" in argv:
        write_input()
    quantcli.__version__ = quantized_format.__version__ = GOLDEN_VERSION
    for name in CASES:
        result = CliRunner().invoke(app, compress_args(name, HERE / name))
        if result.exit_code != 0:
            sys.exit(f"quant compress failed for {name}: {result.stderr}")
        print(f"wrote {HERE / name} ({(HERE / name).stat().st_size} bytes)")  # noqa: T201


if __name__ == "__main__":
    main(sys.argv[1:])
