"""quant formats: list every number format, ggml type and llama-quantize mix."""

from __future__ import annotations

from quantcli.cli.app import app
from quantcli.cli.options import Json


@app.command()
def formats(json: Json = False) -> None:
    """List quant's number formats (--scheme), ggml types and llama-quantize mixes (--type):
    bits per weight as stored, block or group size, and what loads the result.

    Schemes are shown at their default bits, per group of their default size, with their
    default scale storage. A mix's bits per weight are those of the whole file it makes of
    Llama-3-8B (they depend on the model's shapes).

    Example: quant formats --json
    """
    from rich.text import Text

    from quantcli.cli.render import out_console, print_json
    from quantcli.cli.table import Column, render
    from quantcli.ops.formats import list_formats

    entries = list_formats()
    if json:
        print_json({"formats": [e.as_dict() for e in entries]})
        return
    console = out_console()
    titles = {
        "scheme": "quant schemes (quant compress --scheme NAME)",
        "ggml type": "ggml types (quant compress model-f16.gguf --type NAME: every tensor "
        "llama-quantize quantizes)",
        "mix": "llama-quantize mixes (quant compress model-f16.gguf --type NAME; bits/w of "
        "Llama-3-8B)",
    }
    for kind, title in titles.items():
        columns = [
            Column("name"),
            Column("bits/w", "right"),
            Column("ftype" if kind == "mix" else "block", "right", drop=1),
            Column("loads in", drop=2),
            Column("what it is", clip=True),
        ]
        rows = [
            [
                e.name,
                f"{e.bits_per_weight:.4g}",
                str(e.file_type if kind == "mix" else e.block),
                e.loads,
                e.summary,
            ]
            for e in entries
            if e.kind == kind
        ]
        console.print(Text(title))
        render(console, columns, rows, hint="use --json")
        console.print()
