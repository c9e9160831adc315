"""Shared fixtures. Core: a strict-numerics context for the edge-value tests."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest


@contextlib.contextmanager
def _strict_numerics():
    # any warning and any floating-point exception (overflow, invalid, divide by zero) becomes
    # an error inside the block. Underflow is exempt: a subnormal result (e.g. the scale of
    # 1e-40 weights) is correct IEEE arithmetic, and NumPy ignores it by default.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise", under="ignore"):
            yield


@pytest.fixture
def strict_numerics():
    """A context manager factory: ``with strict_numerics(): ...`` fails on any warning or
    floating-point exception but underflow."""
    return _strict_numerics
