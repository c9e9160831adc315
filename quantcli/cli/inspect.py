"""quant inspect: list what a weight file holds."""

from __future__ import annotations

from quantcli.cli.app import app
from quantcli.cli.options import Input, Json


@app.command()
def inspect(input: Input, json: Json = False) -> None:
    """List the tensors of a weight file (name, dtype, shape, size) and its metadata.

    For a quantized file, each tensor also shows its scheme, bits, granularity and scale dtype
    (and its search, when one chose its scales);
    for a GGUF file, its ggml type (F16, Q4_K, ...) and bits per weight.

    Example: quant inspect model.absmax-int8.safetensors --json
    """
    from quantcli.cli import gguf_tables, tables
    from quantcli.cli.render import print_json
    from quantcli.ops.inspect_file import inspect_file

    result = inspect_file(input)
    if result.ggml:
        to_json, to_table = gguf_tables.gguf_inspect_json, gguf_tables.gguf_inspect_table
    else:
        to_json, to_table = tables.inspect_json, tables.inspect_table
    if json:
        print_json(to_json(result))
    else:
        to_table(result)
