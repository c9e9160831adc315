"""Restoring into a narrower float dtype never produces inf: values a rounding step past the
dtype's largest value saturate; scales that do not fit the dtype are refused."""

from __future__ import annotations

import numpy as np
import pytest

from quantcli.core import QuantSpec, quantize
from quantcli.errors import QuantizedFormatError
from quantcli.io.quantized_format import entry_of, restore, stored_arrays


def stored(x: np.ndarray, spec: QuantSpec):
    qt = quantize(x, spec, "w")
    return entry_of("w", qt), dict(stored_arrays("w", qt))


def test_top_of_float16_range_saturates():
    # zeropoint puts the zero point half a step off, so the top code lands just past 65504
    x = np.array([[-60000.0, -1.0, 65504.0, 1000.0]], np.float16)
    entry, arrays = stored(x, QuantSpec("zeropoint", 2, "tensor"))
    as_float32 = restore(entry, arrays, "w.safetensors", dtype=np.float32)
    assert as_float32.max() > 65504  # the reconstruction does pass float16's largest value
    restored = restore(entry, arrays, "w.safetensors")  # original dtype: float16
    assert restored.dtype == np.float16
    assert np.isfinite(restored).all()
    assert restored.max() == np.float16(65504)


def test_scales_too_large_for_float16_are_refused():
    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(4, 16)
    entry, arrays = stored(x, QuantSpec("absmax", 8, "channel"))
    arrays["w.scale"] = arrays["w.scale"] * np.float32(1e6)  # a damaged file
    assert np.isfinite(restore(entry, arrays, "w.safetensors", dtype=np.float32)).all()
    with pytest.raises(QuantizedFormatError, match=r"beyond float16 in tensor w of w\.safetensors"):
        restore(entry, arrays, "w.safetensors", dtype=np.float16)
