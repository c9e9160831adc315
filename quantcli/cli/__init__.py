"""The command-line interface: ``quant`` (also ``python -m quantcli``)."""

from quantcli.cli import compress, decompress, inspect, report  # noqa: F401  (registers commands)
from quantcli.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
