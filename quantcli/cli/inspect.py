"""quant inspect: list what a weight file holds."""

from __future__ import annotations

from quantcli.cli.app import app
from quantcli.cli.options import Input, Json


@app.command()
def inspect(input: Input, json: Json = False) -> None:
    """List the tensors of a weight file (name, dtype, shape, size) and its metadata.

    For a quantized file, each tensor also shows its scheme, bits, granularity and scale dtype.

    Example: quant inspect model.absmax-int8.safetensors --json
    """
    from quantcli.cli.render import print_json
    from quantcli.cli.tables import inspect_json, inspect_table
    from quantcli.ops.inspect_file import inspect_file

    result = inspect_file(input)
    if json:
        print_json(inspect_json(result))
    else:
        inspect_table(result)
