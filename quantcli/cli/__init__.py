"""The command-line interface: ``quant`` (also ``python -m quantcli``)."""

import os

# Before NumPy loads: quant's only BLAS calls are the error statistics' dot products over
# pieces of 64K elements, too small for OpenBLAS's thread pool to pay; with one BLAS thread
# compress ran 15-20% faster on the project machine, and twice as fast in the worst case seen
# (docs/PERFORMANCE.md). QUANT_THREADS spreads quant's own work; a user's setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from quantcli.cli import (  # noqa: F401  (registers commands)
    compress,
    decompress,
    formats,
    inspect,
    report,
)
from quantcli.cli.app import app, configure_streams, install_signal_handlers


def main() -> None:
    install_signal_handlers()
    configure_streams()
    app()


__all__ = ["app", "main"]
