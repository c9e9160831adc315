"""Error metrics between an array and its reconstruction.

``ErrorStats`` keeps sums (in float64) rather than averages, so the statistics of several
tensors, or of chunks of one tensor, combine exactly: ``a.merge(b)`` is the statistics of the
concatenation. SQNR is PyTorch's compute_sqnr: 10 * log10(sum x^2 / sum (x - x_hat)^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from quantcli.core.parallel import scratch

# elements per piece of the float64 statistics: three float64 buffers stay in the L2 cache
STATS_CHUNK = 1 << 16


@dataclass
class ErrorStats:
    count: int = 0
    clipped: int = 0
    sum_sq_error: float = 0.0
    sum_sq_error_unclipped: float = 0.0
    sum_sq_signal: float = 0.0
    sum_sq_reconstruction: float = 0.0
    sum_product: float = 0.0
    max_abs_error: float = 0.0

    @classmethod
    def of(cls, x, x_hat, clipped=None) -> ErrorStats:
        """Statistics of ``x`` against ``x_hat`` (same shape, any float dtype).

        clipped: optional bool mask of the elements calibration clipped. Computed in float64
        (exact differences of float32 values, BLAS dot products) in cache-sized pieces held
        in reusable buffers, so it costs a few passes over cached data and no allocation.
        """
        x = np.asarray(x).reshape(-1)
        x_hat = np.asarray(x_hat).reshape(-1)
        mask = None if clipped is None else np.asarray(clipped, bool).reshape(-1)
        total = cls()
        for start in range(0, x.size, STATS_CHUNK):
            piece = slice(start, start + STATS_CHUNK)
            part = None if mask is None else mask[piece]
            total = total.merge(cls._of_piece(x[piece], x_hat[piece], part))
        return total

    @classmethod
    def _of_piece(cls, x, x_hat, clipped) -> ErrorStats:
        n = x.size
        x64 = scratch("stats-x", (n,), np.float64)
        y64 = scratch("stats-y", (n,), np.float64)
        e64 = scratch("stats-e", (n,), np.float64)
        np.copyto(x64, x)
        np.copyto(y64, x_hat)
        np.subtract(x64, y64, out=e64)
        sum_sq_error = float(np.dot(e64, e64))
        n_clipped, unclipped = 0, sum_sq_error
        if clipped is not None:
            n_clipped = int(np.count_nonzero(clipped))
            if n_clipped:
                kept = e64[~clipped]
                unclipped = float(np.dot(kept, kept))
        return cls(
            count=n,
            clipped=n_clipped,
            sum_sq_error=sum_sq_error,
            sum_sq_error_unclipped=unclipped,
            sum_sq_signal=float(np.dot(x64, x64)),
            sum_sq_reconstruction=float(np.dot(y64, y64)),
            sum_product=float(np.dot(x64, y64)),
            max_abs_error=float(max(e64.max(), -e64.min())) if n else 0.0,
        )

    def merge(self, other: ErrorStats) -> ErrorStats:
        """Statistics of both sets of elements together."""
        sums = {
            f.name: getattr(self, f.name) + getattr(other, f.name)
            for f in fields(self)
            if f.name != "max_abs_error"
        }
        return ErrorStats(**sums, max_abs_error=max(self.max_abs_error, other.max_abs_error))

    # -- the metrics -------------------------------------------------------------------------

    @property
    def mse(self) -> float:
        return self.sum_sq_error / self.count if self.count else 0.0

    @property
    def rmse(self) -> float:
        return math.sqrt(self.mse)

    @property
    def sqnr_db(self) -> float:
        """Signal to quantization noise ratio in dB; inf when the reconstruction is exact."""
        if self.sum_sq_error == 0:
            return math.inf
        if self.sum_sq_signal == 0:
            return -math.inf
        return 10.0 * math.log10(self.sum_sq_signal / self.sum_sq_error)

    @property
    def cosine(self) -> float:
        """Cosine similarity; 1 when both are all zero, 0 when only one is."""
        denom = math.sqrt(self.sum_sq_signal) * math.sqrt(self.sum_sq_reconstruction)
        if denom == 0:
            return 1.0 if self.sum_sq_signal == self.sum_sq_reconstruction else 0.0
        return self.sum_product / denom

    @property
    def clipped_fraction(self) -> float:
        return self.clipped / self.count if self.count else 0.0

    @property
    def mse_unclipped(self) -> float:
        """MSE over the elements calibration did not clip (the seed's "without the outlier")."""
        n = self.count - self.clipped
        return self.sum_sq_error_unclipped / n if n else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "mse": self.mse,
            "rmse": self.rmse,
            "max_abs_error": self.max_abs_error,
            "sqnr_db": self.sqnr_db,
            "cosine": self.cosine,
            "clipped_fraction": self.clipped_fraction,
            "mse_unclipped": self.mse_unclipped,
        }


def uniform_mse(step: float) -> float:
    """Theoretical MSE of a uniform quantizer of step D on uniform data: D^2 / 12."""
    return step * step / 12.0
