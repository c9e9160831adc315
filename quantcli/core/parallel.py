"""Running work in cache-sized chunks, optionally on several threads.

Chunks small enough to stay in the L2/L3 cache turn a chain of whole-array passes (divide,
round, clip, cast) into one pass over memory. NumPy releases the GIL inside its loops, so
``QUANT_THREADS=N`` spreads the chunks over N threads. The default is one thread: on the
2-vCPU machines this project is measured on, two threads made every kernel 25-55% slower and
`quant compress` 30% slower (docs/PERFORMANCE.md), so more threads are opt-in until a
machine shows they pay.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from quantcli.errors import UsageError

# elements per chunk: 2 MiB of float32, so a chunk and its temporaries stay in cache (on the
# project machine 2-9% faster than 1 MiB, which pays more per-chunk overhead, and than 4 MiB)
CHUNK_ELEMENTS = 1 << 19

T = TypeVar("T")
R = TypeVar("R")

_pool = None  # a concurrent.futures.ThreadPoolExecutor, made on first use
_pool_lock = threading.Lock()
_local = threading.local()


def thread_count() -> int:
    """Threads for chunked work: ``QUANT_THREADS`` (a positive integer), 1 when unset or empty.

    Any other value is refused (UsageError) rather than read as 1: a typo must not silently
    give a run on one thread.
    """
    configured = os.environ.get("QUANT_THREADS", "").strip()
    if not configured:
        return 1
    if configured.isascii() and configured.isdigit() and int(configured) > 0:
        return int(configured)
    raise UsageError(
        f"QUANT_THREADS={configured!r} in the environment: not a positive whole number of "
        "threads; set it to e.g. 2, or unset it for one thread"
    )


def map_chunks(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[fn(item) for item in items]``, run on a shared thread pool when it pays."""
    threads = thread_count()
    if threads == 1 or len(items) < 2:
        return [fn(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers != threads:
            _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="quant")
        pool = _pool
    return list(pool.map(fn, items))


def scratch(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A reusable, uninitialised buffer of this thread: no allocation (and no page faults) per
    chunk. Buffers with the same ``name`` share memory: use each name for one purpose."""
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    key = (shape, dtype)
    raw, views = buffers.get(name, (None, {}))
    view = views.get(key)
    if view is not None:  # the common case: every chunk but the last has the same shape
        return view
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    if raw is None or raw.size < size:
        raw, views = np.empty(max(size, 1), np.uint8), {}  # views of the old buffer are gone
        buffers[name] = (raw, views)
    if len(views) >= 64:  # many tensor shapes: keep the cache small
        views.clear()
    view = views[key] = raw[:size].view(dtype).reshape(shape)
    return view
