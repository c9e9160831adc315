"""quant: data-free weight quantization with an honest error report."""

__version__ = "0.1.0"
