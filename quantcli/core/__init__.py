"""The pure-NumPy quantization core: specs, schemes, calibration, packing, metrics.

Nothing here reads files or prints: arrays in, arrays out.
"""

from quantcli.core.layout import param_shape
from quantcli.core.metrics import ErrorStats
from quantcli.core.packing import pack, packed_length, unpack
from quantcli.core.quantize import QuantizedTensor, clipped_mask, dequantize, quantize
from quantcli.core.spec import QuantSpec

__all__ = [
    "ErrorStats",
    "QuantSpec",
    "QuantizedTensor",
    "clipped_mask",
    "dequantize",
    "pack",
    "packed_length",
    "param_shape",
    "quantize",
    "unpack",
]
