"""The pure-NumPy quantization core: specs, schemes, calibration, packing, metrics.

Nothing here reads files or prints: arrays in, arrays out.
"""

from __future__ import annotations

import importlib

# The names load on first use (PEP 562): a command that needs only QuantSpec, such as
# inspect, starts without importing the quantization code.
_EXPORTS = {
    "ErrorStats": "quantcli.core.metrics",
    "QuantSpec": "quantcli.core.spec",
    "QuantizedTensor": "quantcli.core.quantizer",
    "clipped_mask": "quantcli.core.quantizer",
    "dequantize": "quantcli.core.quantizer",
    "pack": "quantcli.core.packing",
    "packed_length": "quantcli.core.packing",
    "param_shape": "quantcli.core.layout",
    "quantize": "quantcli.core.quantizer",
    "unpack": "quantcli.core.packing",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'quantcli.core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
