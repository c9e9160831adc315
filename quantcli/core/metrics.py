"""Error metrics between an array and its reconstruction.

``ErrorStats`` keeps sums (in float64) rather than averages, so the statistics of several
tensors, or of chunks of one tensor, combine exactly: ``a.merge(b)`` is the statistics of the
concatenation. SQNR is PyTorch's compute_sqnr: 10 * log10(sum x^2 / sum (x - x_hat)^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np


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

        clipped: optional bool mask of the elements calibration clipped.
        """
        x = np.asarray(x, np.float64).ravel()
        x_hat = np.asarray(x_hat, np.float64).ravel()
        err = x - x_hat
        sq = err * err
        n_clipped = 0
        sq_unclipped = float(sq.sum())
        if clipped is not None:
            mask = np.asarray(clipped, bool).ravel()
            n_clipped = int(np.count_nonzero(mask))
            if n_clipped:
                sq_unclipped = float(sq[~mask].sum())
        return cls(
            count=x.size,
            clipped=n_clipped,
            sum_sq_error=float(sq.sum()),
            sum_sq_error_unclipped=sq_unclipped,
            sum_sq_signal=float(np.dot(x, x)),
            sum_sq_reconstruction=float(np.dot(x_hat, x_hat)),
            sum_product=float(np.dot(x, x_hat)),
            max_abs_error=float(np.abs(err).max(initial=0.0)),
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
