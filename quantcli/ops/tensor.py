"""One tensor through the pipeline: quantize (or keep), measure, and list what gets stored.

compress writes what ``process`` returns; report only measures it. Both call this one
function, so the report shows exactly what compress would write.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from quantcli.core.metrics import ErrorStats
from quantcli.core.quantizer import quantize
from quantcli.io.quantized_format import QuantizedEntry, entry_of, stored_arrays
from quantcli.select import Selection


@dataclass
class TensorResult:
    """The outcome for one tensor.

    stored: the (name, array) pairs to write for it, until ``release``; bytes_out: their
    size; stats: error statistics when quantized.
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    selection: Selection
    stored: list[tuple[str, np.ndarray]]
    stats: ErrorStats | None = None
    entry: QuantizedEntry | None = None
    bytes_out: int = field(init=False)

    def __post_init__(self) -> None:
        self.bytes_out = sum(int(a.nbytes) for _, a in self.stored)

    def release(self) -> None:
        """Drop the arrays once written, so memory follows one tensor, not the file."""
        self.stored = []

    @property
    def quantized(self) -> bool:
        return self.stats is not None

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def bytes_in(self) -> int:
        return self.elements * np.dtype(self.dtype).itemsize

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.bytes_out / self.elements if self.elements else 0.0


def process(
    name: str, array: np.ndarray, selection: Selection, tensor_scale: np.ndarray | None = None
) -> TensorResult:
    """Quantize ``array`` when ``selection`` says so and measure the error, else keep it.
    tensor_scale: a scale per tensor to use instead of the array's own (``quantize``)."""
    shape, dtype = tuple(array.shape), np.dtype(array.dtype)
    if not selection.quantized:
        return TensorResult(name, shape, dtype, selection, stored=[(name, array)])
    qt = quantize(array, selection.spec, name, measure=True, packed=True, tensor_scale=tensor_scale)
    return TensorResult(
        name,
        shape,
        dtype,
        Selection(name, qt.spec),
        stored=stored_arrays(name, qt),
        stats=qt.stats,
        entry=entry_of(name, qt),
    )


def count_nonfinite(array: np.ndarray) -> int:
    """NaN and inf values in ``array`` (any float dtype), counted in float32 pieces so a large
    tensor needs no second full-size copy."""
    flat = array.reshape(-1)
    step = 1 << 20
    return sum(
        int(np.count_nonzero(~np.isfinite(flat[i : i + step].astype(np.float32))))
        for i in range(0, flat.size, step)
    )
