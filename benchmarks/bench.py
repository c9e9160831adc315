"""Speed and memory benchmark: `make bench`.

Every figure is the median of several runs and a ratio to a floor measured in the same run on
the same data, because the machines are shared and noisy: absolute times mean little.

- kernel floor: one min/max reduction pass (min and max of each cache-sized piece as it is
  read) plus one float32 -> int8 cast pass (np.copyto(out_int8, x, casting="unsafe"));
- file floor: a script that reads every tensor with the safetensors library, runs the kernel
  floor on it and writes the int8 results with safetensors.numpy.save_file;
- peers: the seed notebook's NumPy code and gguf's Q8_0 reference quantizer.

A separate section times the ggml block codecs (quantcli.core.ggml) on one thread: every
type's encoder and decoder against the same kernel floor, in M weights/s, the least-squares
encoders (search "mse") against the reference encoders, and the legacy encoders against
gguf-py's NumPy reference.

A formats section times every number format at its natural spec (quantize() with packing, as
compress runs it) on one and on two threads (QUANT_THREADS), in M weights/s and as a ratio to
the kernel floor; the search section times the scale searches on one thread.

A GGUF section times `quant compress --type` end to end on a generated F16 GGUF (llama
layout and vocabulary, 224 MiB) against the file floor on the same tensors and, when the
environment variable LLAMA_QUANTIZE names a llama-quantize executable, against llama-quantize
on the same file and type, run alternately (target: quant within 1.5x).

    python benchmarks/bench.py [--quick] [--repeat N] [--skip-e2e] [--skip-ggml] [--skip-gguf]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from quantcli.core import QuantSpec, quantize
from quantcli.core.percentile import percentile

ROOT = Path(__file__).resolve().parent.parent


def median_time(fn, repeat: int) -> float:
    fn()  # warm-up: page in the data, build caches
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired_times(fn, baseline, repeat: int) -> tuple[float, float]:
    """Medians of ``fn`` and ``baseline``, run alternately so that both see the same moments
    of a noisy machine (a slow stretch slows both, and their ratio holds)."""
    fn(), baseline()  # warm-up
    ours, base = [], []
    for _ in range(repeat):
        for f, times in ((fn, ours), (baseline, base)):
            start = time.perf_counter()
            f()
            times.append(time.perf_counter() - start)
    return statistics.median(ours), statistics.median(base)


def minmax_pass(x: np.ndarray) -> tuple[float, float]:
    """One min/max reduction pass over memory: each cache-sized piece is read from memory once
    and reduced twice while cached (NumPy has no single-call min-and-max)."""
    flat = x.reshape(-1)
    step = 1 << 18
    lo, hi = np.inf, -np.inf
    for i in range(0, flat.size, step):
        piece = flat[i : i + step]
        lo, hi = min(lo, piece.min()), max(hi, piece.max())
    return lo, hi


def kernel_floor(x: np.ndarray, out: np.ndarray) -> None:
    minmax_pass(x)
    np.copyto(out, x, casting="unsafe")


def seed_absmax(x: np.ndarray) -> np.ndarray:
    """The seed notebook's absmax: clip(round(x / scale)) on the whole array."""
    scale = np.max(np.abs(x)) / 127
    return np.clip(np.round(x / scale), -127, 127).astype(np.int8)


def quant_kernel(spec: QuantSpec):
    def run(x):
        quantize(x, spec, packed=True)  # packed when bits < 8, as compress writes it

    return run


class Report:
    """Rows of (case, measured, comparison, target and verdict), printed as a table."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []
        self.failed: list[str] = []

    def timed(self, case: str, seconds: float, ratio: float, versus: str, target: str, ok: bool):
        self._add(case, f"{seconds * 1e3:9.1f} ms", f"{ratio:6.2f}x {versus}", target, ok)

    def memory(self, case: str, megabytes: int, limit: int):
        ok = megabytes <= limit
        self._add(case, f"{megabytes:6d} MB", "peak RSS", f"<= {limit} MB", ok)

    def _add(self, case: str, measured: str, comparison: str, target: str, ok: bool):
        if not ok:
            self.failed.append(case.strip())
        self.rows.append((case, measured, comparison, f"{target} {'ok' if ok else 'MISSED'}"))

    def print(self) -> None:
        widths = [max(len(r[i]) for r in self.rows) for i in range(4)]
        for row in self.rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def bench_kernels(report: Report, n: int, repeat: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty(x.shape, np.int8)

    def run_floor():
        kernel_floor(x, out)

    floor = median_time(run_floor, repeat)
    print(f"kernel floor on {n}x{n} float32: {floor * 1e3:.1f} ms (min/max pass + int8 cast pass)")
    seed = median_time(lambda: seed_absmax(x), repeat)

    cases = [
        ("absmax int8 tensor", QuantSpec("absmax", 8, "tensor"), 2.0),
        ("absmax int8 channel", QuantSpec("absmax", 8, "channel"), 2.0),
        ("absmax int8 group32", QuantSpec("absmax", 8, "group", group_size=32), None),
        ("zeropoint int8 channel", QuantSpec("zeropoint", 8, "channel"), None),
        ("absmax int4 group128 +pack", QuantSpec("absmax", 4, "group", group_size=128), 3.0),
        (
            "zeropoint int8 p99.99",
            QuantSpec("zeropoint", 8, "tensor", calibration="percentile"),
            5.0,
        ),
    ]
    for name, spec, target in cases:
        t, base = paired_times(lambda spec=spec: quant_kernel(spec)(x), run_floor, repeat)
        ok = target is None or t / base <= target
        report.timed(name, t, t / base, "floor", f"<= {target}x" if target else "no target", ok)
        if name.startswith("absmax int8 t") or name.startswith("absmax int8 c"):
            report.timed(
                "  vs the seed's NumPy code", t, seed / t, "faster", ">= 3x", seed / t >= 3
            )

    # exactness of the percentile path, on the benchmark array itself
    for p in (99.99, 0.01):
        exact = np.percentile(x, p)
        if percentile(x, p) != exact:
            report.failed.append(f"percentile {p} not exact")
    np_pct = median_time(lambda: np.percentile(x, 99.99), max(1, repeat // 2))
    ours, base = paired_times(lambda: percentile(x, 99.99), run_floor, repeat)
    report.timed(
        "percentile 99.99 alone",
        ours,
        ours / base,
        "floor",
        f"(np.percentile: {np_pct / floor:.1f}x)",
        True,
    )

    try:
        import gguf
    except ImportError:
        print("gguf not installed: skipping the Q8_0 comparison")
        return
    q8 = QuantSpec("absmax", 8, "group", group_size=32, scale_dtype="float16")
    ours, theirs = paired_times(
        lambda: quantize(x, q8),
        lambda: gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0),
        repeat,
    )
    report.timed(
        "Q8_0 numerics (group32 f16)",
        ours,
        theirs / ours,
        "faster than gguf",
        ">= 3x",
        theirs / ours >= 3,
    )


# --- number formats ---

# every scheme at its natural spec, packed as compress writes it (issue targets: 3x the kernel
# floor for FP8 and full-range int8, 4x for the 4-bit formats with their block scales)
FORMAT_CASES = [
    ("fullrange int8 channel", QuantSpec("fullrange", 8, "channel"), 3.0),
    ("fullrange-ct int8 channel", QuantSpec("fullrange-ct", 8, "channel"), 3.0),
    ("fp8 e4m3 channel", QuantSpec("fp8", granularity="channel"), 3.0),
    ("fp8 e5m2 channel", QuantSpec("fp8-e5m2", granularity="channel"), 3.0),
    ("fullrange int4 group32 +pack", QuantSpec("fullrange", 4, "group", group_size=32), 4.0),
    ("fullrange-ct int4 group32 +pack", QuantSpec("fullrange-ct", 4, "group", group_size=32), 4.0),
    ("nf4 group64 +pack", QuantSpec("nf4"), 4.0),
    ("mxfp4 group32 +pack", QuantSpec("mxfp4"), 4.0),
    ("mxfp4-ct group32 +pack", QuantSpec("mxfp4-ct"), 4.0),
    ("nvfp4 group16 +pack", QuantSpec("nvfp4"), 4.0),
]


def bench_formats(report: Report, n: int, repeat: int) -> None:
    """Every number format on an n x n N(0, 1) float32 array, one thread and two, each
    alternating with the kernel floor (on one thread: the floor is single-threaded)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty(x.shape, np.int8)

    def run_floor():
        kernel_floor(x, out)

    floor = median_time(run_floor, repeat)
    print(
        f"formats on {n}x{n} float32; kernel floor {floor * 1e3:.1f} ms "
        f"({x.size / floor / 1e6:.0f} M weights/s)"
    )
    for threads in (1, 2):
        with quant_threads(threads):
            for name, spec, target in FORMAT_CASES:
                t, base = paired_times(lambda spec=spec: quant_kernel(spec)(x), run_floor, repeat)
                rate = x.size / t / 1e6
                report.timed(
                    f"{name}, {threads} thread{'s' if threads > 1 else ''}",
                    t,
                    t / base,
                    f"floor, {rate:6.1f} M weights/s",
                    f"<= {target}x" if threads == 1 else "no target",
                    threads > 1 or t / base <= target,
                )


@contextlib.contextmanager
def quant_threads(n: int):
    """QUANT_THREADS=n while the block runs (quantize reads it on every call)."""
    saved = os.environ.get("QUANT_THREADS")
    os.environ["QUANT_THREADS"] = str(n)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("QUANT_THREADS", None)
        else:
            os.environ["QUANT_THREADS"] = saved


# --- ggml block codecs ---

# K-quants: at least llama.cpp's C reference speed for Q4_K on the project machine (15.5 M
# weights/s there; the C code reaches Q8_0 229 and Q4_0 769 M weights/s)
GGML_K_TARGET = 15.0


def bench_ggml(report: Report, quick: bool, repeat: int) -> None:
    from quantcli.core.ggml import GGML_TYPES

    rows = 64 if quick else 256
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, 4096), dtype=np.float32)
    out = np.empty(x.shape, np.int8)

    def run_floor():
        kernel_floor(x, out)

    floor = median_time(run_floor, repeat)
    print(
        f"ggml codecs on {rows}x4096 float32, one thread; kernel floor {floor * 1e3:.1f} ms "
        f"({x.size / floor / 1e6:.0f} M weights/s)"
    )
    try:
        import gguf
    except ImportError:
        gguf = None
    for name, t in GGML_TYPES.items():
        raw = t.encode(x)
        enc, base = paired_times(lambda t=t: t.encode(x), run_floor, repeat)
        rate = x.size / enc / 1e6
        kquant = t.block_size == 256
        report.timed(
            f"ggml {name} encode",
            enc,
            enc / base,
            f"floor, {rate:6.1f} M weights/s",
            f">= {GGML_K_TARGET:.0f} M weights/s" if kquant else "no target",
            rate >= GGML_K_TARGET or not kquant,
        )
        dec, base = paired_times(lambda t=t, raw=raw: t.decode(raw, x.shape[1]), run_floor, repeat)
        report.timed(
            f"ggml {name} decode",
            dec,
            dec / base,
            f"floor, {x.size / dec / 1e6:6.1f} M weights/s",
            "no target",
            True,
        )
        if t.search_blocks is not None:
            # the least-squares encoder (--search mse), against the reference encoder on the
            # same (smaller) slice: no target, the price of its lower error
            part = x[: max(8, rows // 8)]
            mse, ref = paired_times(
                lambda t=t, p=part: t.encode(p, search="mse"),
                lambda t=t, p=part: t.encode(p),
                max(1, repeat // 2),
            )
            report.timed(
                f"  ggml {name} encode, search mse",
                mse,
                mse / ref,
                f"reference encoder, {part.size / mse / 1e6:6.2f} M weights/s",
                "no target",
                True,
            )
        if gguf is not None and not kquant:
            gtype = getattr(gguf.GGMLQuantizationType, name)
            ours, theirs = paired_times(
                lambda t=t: t.encode(x), lambda g=gtype: gguf.quants.quantize(x, g), repeat
            )
            report.timed(
                f"  vs gguf's {name}", ours, theirs / ours, "faster than gguf", "no target", True
            )


def bench_search(report: Report, rows: int, repeat: int) -> None:
    """The scale searches on a rows x 4096 N(0, 1) float32 array, one thread: ``quantize`` with
    the search on, as compress runs it, and the search kernels (quantcli.core.search) alone,
    in weights per second and as a ratio to the kernel floor on the same array. Targets: the
    default search (``--search auto``: mse at 4 bits and below) and the HQQ-style optimizer at
    >= 15 M weights/s (llama.cpp's C Q4_K encoder, with its search: 15.5 M/s on the project
    machine; HQQ's own CPU code: 1.5 M/s)."""
    from quantcli.core import QuantSpec, quantize
    from quantcli.core.search import (
        E2M1,
        NF4,
        affine_search,
        hqq_params,
        int_grid,
        mse_scales,
    )

    rng = np.random.default_rng(0)
    w = rng.standard_normal((rows, 4096), dtype=np.float32)
    groups = w.reshape(-1, 64)
    small = groups * np.float32(0.02)
    out = np.empty(w.shape, np.int8)

    def run_floor():
        kernel_floor(w, out)

    floor = median_time(run_floor, repeat)
    print(
        f"search floor on {rows}x4096 float32: {floor * 1e3:.1f} ms "
        f"({w.size / floor / 1e6:.0f} M weights/s)"
    )
    g32 = w.reshape(-1, 32)

    def plain_mse(x, grid):
        return mse_scales(x, grid, weights="plain")

    def zero_point(x):
        return affine_search(x, 4, "integer", weights="plain")

    def searched(search="mse", **fields):
        # what compress runs with the search on: calibration, the search, the check against
        # round to nearest with the scheme's own encoder, the codes, packing
        spec = QuantSpec(bits=4, granularity="group", search=search, **fields)
        return lambda: quantize(w, spec, packed=True)

    cases = [
        # the default search (``--search auto``: mse at 4 bits and below) as quantize runs it
        ("search: quantize mse, absmax int4 g32", searched(scheme="absmax", group_size=32), 15),
        ("search: quantize mse, absmax int4 g128", searched(scheme="absmax"), 15),
        (
            "search: quantize mse, fullrange int4 g32 f16",
            searched(scheme="fullrange", group_size=32, scale_dtype="float16"),
            15,
        ),
        (
            "search: quantize mse, zeropoint 4-bit g64",
            searched(scheme="zeropoint", group_size=64),
            15,
        ),
        (
            "search: quantize mse, zeropoint 4-bit g32 k6 (not the default)",
            searched(scheme="zeropoint", group_size=32, scale_dtype="k6"),
            0,
        ),
        (
            "search: quantize mse, nf4 g64 (not the default)",
            searched(scheme="nf4", group_size=64),
            0,
        ),
        # the search kernels alone
        ("search: MSE int4 g32 (plain)", lambda: plain_mse(g32, int_grid(4)), 0),
        ("search: affine 4-bit zero point g64 (plain)", lambda: zero_point(groups), 0),
        ("search: MSE nf4 g64 (plain)", lambda: plain_mse(groups, NF4), 0),
        ("search: MSE int4 g64 (rms_abs weights)", lambda: mse_scales(groups, int_grid(4)), 0),
        ("search: MSE nf4 g64 (rms_abs weights)", lambda: mse_scales(groups, NF4), 0),
        ("search: MSE e2m1 g64", lambda: mse_scales(groups, E2M1), 0),
        ("search: affine 4-bit float offset g64", lambda: affine_search(groups, 4), 0),
        ("search: affine 4-bit zero point g64", lambda: affine_search(groups, 4, "integer"), 0),
        (
            "search: quantize hqq, zeropoint 4-bit g64",
            searched(scheme="zeropoint", group_size=64, search="hqq"),
            15,
        ),
        ("search: HQQ 4-bit g64", lambda: hqq_params(groups, 4), 0),
        ("search: HQQ 4-bit g64, |W| ~ 0.02", lambda: hqq_params(small, 4), 0),
    ]
    for name, run, target in cases:
        t, base = paired_times(run, run_floor, max(1, repeat // 2))
        rate = w.size / t / 1e6
        # CPU time (best of a few runs): what other work on a shared machine disturbs least
        cpu = min(cpu_time(run) for _ in range(max(1, repeat // 2)))
        ok = rate >= target
        verdict = f">= {target} M/s {'ok' if ok else 'MISSED'}" if target else "no target"
        if not ok:
            report.failed.append(name)
        report.rows.append(
            (
                name,
                f"{rate:6.1f} M/s",
                f"{t / base:6.0f}x floor, {w.size / cpu / 1e6:5.1f} M/s of CPU time",
                verdict,
            )
        )
    # what a second thread adds to the searched quantize (QUANT_THREADS; against one core's
    # floor): no target, the machines differ in what their cores are
    with quant_threads(2):
        for name, run, _ in cases:
            if name.startswith("search: quantize"):
                t, base = paired_times(run, run_floor, max(1, repeat // 2))
                rate = w.size / t / 1e6
                report.rows.append(
                    (f"{name}, 2 threads", f"{rate:6.1f} M/s", f"{t / base:6.0f}x floor", "")
                )


def cpu_time(fn) -> float:
    """CPU seconds of one call of ``fn`` (this process)."""
    start = time.process_time()
    fn()
    return time.process_time() - start


FLOOR_SCRIPT = """
import sys
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file
import ml_dtypes  # noqa: F401  (bf16 support)
src, dst = sys.argv[1], sys.argv[2]
out = {}
with safe_open(src, "numpy") as f:
    for name in f.keys():
        x = f.get_tensor(name)
        flat = x.reshape(-1)
        for i in range(0, flat.size, 1 << 18):  # one min/max pass, as the kernel floor
            flat[i : i + (1 << 18)].min(), flat[i : i + (1 << 18)].max()
        q = np.empty(x.shape, np.int8)
        np.copyto(q, x, casting="unsafe")
        out[name] = q
save_file(out, dst)
"""


def timed_run(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS in MB of a command, via /usr/bin/time -v when available."""
    time_bin = shutil.which("time") or "/usr/bin/time"
    use_time = os.path.exists(time_bin)
    full = [time_bin, "-v", *cmd] if use_time else cmd
    start = time.perf_counter()
    proc = subprocess.run(full, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    rss = 0
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    if match:
        rss = int(match.group(1)) // 1024
    return wall, rss


def make_checkpoint(path: Path, rows: int, cols: int, dtype) -> None:
    from quantcli.io.safetensors_writer import SafetensorsWriter

    rng = np.random.default_rng(1)
    plan = [(f"layers.{i}.weight", np.dtype(dtype), (rows, cols)) for i in range(4)]
    plan.append(("layers.0.bias", np.dtype(dtype), (rows,)))
    with open(path, "wb") as f:
        writer = SafetensorsWriter(f, plan, {"format": "pt"})
        for name, dt, shape in plan:
            writer.write(name, (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(dt))
        writer.close()


def make_model_folder(path: Path, rows: int, cols: int, dtype) -> Path:
    """A Llama-style model folder: config.json and one safetensors file whose four 2-D
    weights are the Linear layers compressed-tensors quantizes."""
    from quantcli.io.safetensors_writer import SafetensorsWriter

    path.mkdir()
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    (path / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(2)
    names = ["q_proj", "k_proj", "v_proj", "o_proj"]
    plan = [(f"model.layers.0.self_attn.{n}.weight", np.dtype(dtype), (rows, cols)) for n in names]
    plan.append(("model.layers.0.input_layernorm.weight", np.dtype(dtype), (cols,)))
    with open(path / "model.safetensors", "wb") as f:
        writer = SafetensorsWriter(f, plan, {"format": "pt"})
        for name, dt, shape in plan:
            writer.write(name, (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(dt))
        writer.close()
    return path


def bench_end_to_end(report: Report, rows: int, cols: int, repeat: int) -> None:
    import ml_dtypes

    quant = str(Path(sys.executable).with_name("quant"))
    with tempfile.TemporaryDirectory(prefix="quant-bench-") as tmp:
        tmp = Path(tmp)
        floor_py = tmp / "floor.py"
        floor_py.write_text(FLOOR_SCRIPT)
        for label, dtype in (("fp32", np.float32), ("bf16", ml_dtypes.bfloat16)):
            src = tmp / f"model.{label}.safetensors"
            make_checkpoint(src, rows, cols, dtype)
            size = src.stat().st_size / 2**20
            floors, ours = [], []
            for _ in range(repeat):
                floors.append(
                    timed_run([sys.executable, str(floor_py), str(src), str(tmp / "f.st")])
                )
                ours.append(
                    timed_run(
                        [
                            quant,
                            "compress",
                            str(src),
                            "-o",
                            str(tmp / "q.safetensors"),
                            "--force",
                            "-q",
                        ]
                    )
                )
            f_wall = statistics.median(w for w, _ in floors)
            f_rss = max(r for _, r in floors)
            q_wall = statistics.median(w for w, _ in ours)
            q_rss = max(r for _, r in ours)
            print(f"file floor on {size:.0f} MiB {label}: {f_wall:.2f} s, peak RSS {f_rss} MB")
            ratio = q_wall / f_wall
            report.timed(
                f"compress {size:.0f} MiB {label}",
                q_wall,
                ratio,
                "file floor",
                "<= 2.0x",
                ratio <= 2.0,
            )
            report.memory(f"  compress {size:.0f} MiB {label}", q_rss, 400)
            restores = []
            for _ in range(repeat):
                restored = tmp / "r.safetensors"
                restores.append(
                    timed_run(
                        [quant, "decompress", str(tmp / "q.safetensors"), "-o", str(restored)]
                    )
                )
                restored.unlink()
            r_wall = statistics.median(w for w, _ in restores)
            report.timed(
                f"decompress to {size:.0f} MiB {label}",
                r_wall,
                r_wall / f_wall,
                "file floor",
                "no target",
                True,
            )
            report.memory(f"  decompress {size:.0f} MiB {label}", max(r for _, r in restores), 400)

        # a model folder to compressed-tensors (what transformers and vLLM load), against the
        # file floor on the same weights
        folder = make_model_folder(tmp / "model", rows, cols, ml_dtypes.bfloat16)
        size = (folder / "model.safetensors").stat().st_size / 2**20
        src = str(folder / "model.safetensors")
        for label, spec in (
            ("W4A16 g128", ["--scheme", "fullrange-ct", "--bits", "4", "--group-size", "128"]),
            ("NVFP4", ["--scheme", "nvfp4"]),
        ):
            floors, ours = [], []
            for _ in range(repeat):
                floors.append(timed_run([sys.executable, str(floor_py), src, str(tmp / "f.st")]))
                out = tmp / "ct"
                ours.append(timed_run([quant, "compress", str(folder), "-o", str(out), *spec]))
                shutil.rmtree(out)
            f_wall = statistics.median(w for w, _ in floors)
            q_wall = statistics.median(w for w, _ in ours)
            report.timed(
                f"model folder {size:.0f} MiB bf16 -> compressed-tensors {label}",
                q_wall,
                q_wall / f_wall,
                "file floor",
                "<= 2.0x",
                q_wall / f_wall <= 2.0,
            )
            report.memory(f"  compressed-tensors {label}", max(r for _, r in ours), 400)

        small = ROOT / "sample_weights" / "transformer.safetensors"
        for args in (["--help"], ["inspect", str(small)]):
            wall = statistics.median(timed_run([quant, *args])[0] for _ in range(5))
            report.timed(
                f"quant {args[0]} start-up", wall, wall / 0.3, "of 0.3 s", "< 1x", wall < 0.3
            )


def spm_vocab(size: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A llama (SentencePiece) vocabulary of ``size`` tokens as llama.cpp loads it: <unk>,
    <s>, </s>, the 256 byte tokens <0x00>..<0xFF>, then pieces of 1-3 lower-case letters with
    and without the word-start mark. Returns the tokens, their scores (float32, (size,)) and
    their types (int32, (size,): 1 normal, 2 unknown, 3 control, 6 byte)."""
    from itertools import product
    from string import ascii_lowercase

    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    kinds = [2, 3, 3, *([6] * 256)]
    for length in (1, 2, 3):
        for letters in product(ascii_lowercase, repeat=length):
            for piece in ("\u2581" + "".join(letters), "".join(letters)):
                if len(tokens) < size:
                    tokens.append(piece)
                    kinds.append(1)
    if len(tokens) < size:
        raise ValueError(f"spm_vocab makes at most {len(tokens)} tokens, not {size}")
    tokens, kinds = tokens[:size], kinds[:size]
    scores = -np.arange(size, dtype=np.float32)
    return tokens, scores, np.asarray(kinds, np.int32)


def make_gguf(
    path: Path,
    st_path: Path,
    dim: int,
    ffn: int,
    layers: int,
    vocab: int,
    kv_heads: int | None = None,
    tied: bool = False,
) -> None:
    """An F16 GGUF with a llama layout and the metadata llama.cpp needs to load it and generate
    (hyperparameters and an SPM vocabulary; random weights), and the same tensors as
    safetensors, for the floor. Heads of 64; ``kv_heads`` (default: as many as the heads)
    gives grouped-query attention; ``tied``: no output.weight (the embedding is the output)."""
    from quantcli.io.gguf_file import GGUFValue, GGUFValueType
    from quantcli.io.gguf_writer import GGUFWriter
    from quantcli.io.safetensors_writer import SafetensorsWriter

    heads = dim // 64
    kv_heads = heads if kv_heads is None else kv_heads
    rng = np.random.default_rng(2)
    shapes = {"token_embd.weight": (vocab, dim)}
    for i in range(layers):
        p = f"blk.{i}."
        shapes[p + "attn_norm.weight"] = (dim,)
        shapes[p + "attn_q.weight"] = (dim, dim)
        shapes[p + "attn_k.weight"] = (kv_heads * 64, dim)
        shapes[p + "attn_v.weight"] = (kv_heads * 64, dim)
        shapes[p + "attn_output.weight"] = (dim, dim)
        shapes[p + "ffn_gate.weight"] = (ffn, dim)
        shapes[p + "ffn_up.weight"] = (ffn, dim)
        shapes[p + "ffn_down.weight"] = (dim, ffn)
        shapes[p + "ffn_norm.weight"] = (dim,)
    shapes["output_norm.weight"] = (dim,)
    if not tied:
        shapes["output.weight"] = (vocab, dim)
    s, u, f32 = GGUFValueType.STRING, GGUFValueType.UINT32, GGUFValueType.FLOAT32
    tokens, scores, kinds = spm_vocab(vocab)
    fields = {
        "general.architecture": GGUFValue(s, "llama"),
        "general.name": GGUFValue(s, "quant-bench"),
        "llama.context_length": GGUFValue(u, 2048),
        "llama.embedding_length": GGUFValue(u, dim),
        "llama.block_count": GGUFValue(u, layers),
        "llama.feed_forward_length": GGUFValue(u, ffn),
        "llama.rope.dimension_count": GGUFValue(u, 64),
        "llama.attention.head_count": GGUFValue(u, heads),
        "llama.attention.head_count_kv": GGUFValue(u, kv_heads),
        "llama.attention.layer_norm_rms_epsilon": GGUFValue(f32, np.float32(1e-5)),
        "tokenizer.ggml.model": GGUFValue(s, "llama"),
        "tokenizer.ggml.tokens": GGUFValue(GGUFValueType.ARRAY, tokens, s),
        "tokenizer.ggml.scores": GGUFValue(GGUFValueType.ARRAY, scores, f32),
        "tokenizer.ggml.token_type": GGUFValue(GGUFValueType.ARRAY, kinds, GGUFValueType.INT32),
        "tokenizer.ggml.bos_token_id": GGUFValue(u, 1),
        "tokenizer.ggml.eos_token_id": GGUFValue(u, 2),
        "tokenizer.ggml.unknown_token_id": GGUFValue(u, 0),
    }
    dtypes = {n: np.float32 if len(shape) == 1 else np.float16 for n, shape in shapes.items()}
    plan = [(n, "F32" if dtypes[n] == np.float32 else "F16", shape) for n, shape in shapes.items()]
    with open(path, "wb") as f, open(st_path, "wb") as g:
        writer = GGUFWriter(f, fields, plan)
        st = SafetensorsWriter(g, [(n, np.dtype(dtypes[n]), sh) for n, sh in shapes.items()], {})
        for name, shape in shapes.items():
            x = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(dtypes[name])
            writer.write(name, x)
            st.write(name, x)
        writer.close()
        st.close()


def llama_quantize_path() -> str | None:
    """The llama-quantize that ``LLAMA_QUANTIZE`` names, or None (with a line saying why)."""
    named = os.environ.get("LLAMA_QUANTIZE", "").strip()
    found = shutil.which(named) if named else None
    if found is None:
        why = f"LLAMA_QUANTIZE={named!r} is not an executable" if named else "LLAMA_QUANTIZE unset"
        print(
            f"GGUF compress vs llama-quantize: skipped ({why}); set LLAMA_QUANTIZE to a "
            "llama-quantize executable (llama.cpp's tools/quantize) to time it on the same "
            "file and types, alternating with quant"
        )
    return found


def bench_gguf(report: Report, quick: bool, repeat: int) -> None:
    """End-to-end GGUF compress (report computed, table printed) of an F16 GGUF, against the
    file floor run on the same tensors as safetensors and, when ``LLAMA_QUANTIZE`` names an
    executable, against llama-quantize on the same file and type with as many threads as
    quant uses (QUANT_THREADS, default 1), the two run alternately (issue target: quant within
    1.5x of llama-quantize)."""
    from quantcli.core.parallel import thread_count

    quant = str(Path(sys.executable).with_name("quant"))
    llama_quantize = llama_quantize_path()
    threads = thread_count()
    dims = (512, 1408, 2, 8000) if quick else (1024, 2816, 4, 32000)
    with tempfile.TemporaryDirectory(prefix="quant-bench-gguf-") as tmp:
        tmp = Path(tmp)
        src, st = tmp / "model-f16.gguf", tmp / "model-f16.safetensors"
        make_gguf(src, st, *dims)
        floor_py = tmp / "floor.py"
        floor_py.write_text(FLOOR_SCRIPT)
        size = src.stat().st_size / 2**20
        floor = statistics.median(
            timed_run([sys.executable, str(floor_py), str(st), str(tmp / "f.st")])[0]
            for _ in range(repeat)
        )
        print(f"file floor on the same {size:.0f} MiB of F16 tensors: {floor:.2f} s")
        for kind in ("Q8_0", "Q4_0", "Q4_K_M", "Q6_K"):
            ours = [str(src), "-o", str(tmp / "q.gguf"), "--type", kind, "--force"]
            theirs = [llama_quantize, str(src), str(tmp / "l.gguf"), kind, str(threads)]
            runs, peer = [], []
            for _ in range(repeat):
                runs.append(timed_run([quant, "compress", *ours]))
                if llama_quantize:
                    peer.append(timed_run(theirs))
            wall = statistics.median(w for w, _ in runs)
            case = f"GGUF compress {size:.0f} MiB F16 -> {kind}"
            report.timed(case, wall, wall / floor, "file floor", "no target", True)
            if llama_quantize:
                peer_wall = statistics.median(w for w, _ in peer)
                report.timed(
                    f"  vs llama-quantize ({peer_wall:.2f} s, {max(r for _, r in peer)} MB), "
                    f"{threads} thread{'s' if threads > 1 else ''} each",
                    wall,
                    wall / peer_wall,
                    "llama-quantize",
                    "<= 1.5x",
                    wall / peer_wall <= 1.5,
                )
            report.memory(f"  GGUF compress -> {kind}", max(r for _, r in runs), 1024)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller arrays (a smoke test)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--skip-ggml", action="store_true")
    parser.add_argument("--skip-gguf", action="store_true")
    args = parser.parse_args()
    n = 2048 if args.quick else 8192
    # byte-compile quant's modules, as installing a wheel does: with PYTHONDONTWRITEBYTECODE
    # set (as on the project machines) an editable install recompiles every module each
    # time `quant` starts, which the start-up and end-to-end cases would time
    import compileall

    import quantcli

    compileall.compile_dir(Path(quantcli.__file__).parent, quiet=1)
    report = Report()
    bench_kernels(report, n, args.repeat)
    bench_formats(report, n, args.repeat)
    if not args.skip_ggml:
        bench_ggml(report, args.quick, args.repeat)
    bench_search(report, 256 if args.quick else 1024, args.repeat)
    if not args.skip_e2e:
        rows, cols = (1024, 1024) if args.quick else (8192, 4096)
        bench_end_to_end(report, rows, cols, max(1, args.repeat // 2 + 1))
    if not args.skip_gguf:
        bench_gguf(report, args.quick, max(1, args.repeat // 2))
    print()
    report.print()
    if report.failed:
        print(f"\nmissed: {', '.join(report.failed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
