"""quant decompress: restore floats from a quantized file."""

from __future__ import annotations

from typing import Annotated

import typer

from quantcli.cli.app import app
from quantcli.cli.options import Force, Input, Json, OutputDtype
from quantcli.errors import UsageError

RestoredOutput = Annotated[
    str | None,
    typer.Option(
        "-o",
        "--output",
        metavar="OUTPUT",
        help="Where to write; its extension chooses the format: x.safetensors, x.npz, x.npy "
        "(one tensor), x.gguf (from a GGUF input), dir/ (a folder to write into, made if "
        "missing), a folder for a sharded or model-folder input, or - for standard output. "
        "Other names are refused. Default: beside the input, named after it with "
        ".restored, in the format compress read (model.q8.safetensors -> "
        "model.q8.restored.safetensors; a sharded folder ckpt.q8 -> ckpt.q8.restored); "
        "standard output for input -.",
        show_default=False,
    ),
]


@app.command()
def decompress(
    input: Input,
    output: RestoredOutput = None,
    dtype: Annotated[
        OutputDtype,
        typer.Option(
            "--dtype",
            case_sensitive=False,
            help="Dtype of the restored tensors (kept tensors always come back as they were).",
        ),
    ] = OutputDtype.original,
    force: Force = False,
    json: Json = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No summary, no progress bar.")
    ] = False,
) -> None:
    """Restore every tensor of a quantized file under its original name, shape and dtype.

    The output is .npy when OUTPUT ends in .npy (one tensor), .npz when it ends in .npz,
    safetensors when it ends in .safetensors.

    Example: quant decompress model.absmax-int8.safetensors -o model.restored.safetensors
    """
    from quantcli.cli.render import print_json, progress_bar
    from quantcli.cli.tables import decompress_json, decompress_summary
    from quantcli.ops.decompress import decompress as run_decompress

    # stdin input writes to stdout by default
    if json and (output == "-" or (output is None and input == "-")):
        raise UsageError(
            "--json with the output on stdout (-o -, the default for input -) in quant "
            "decompress: both would use standard output; write the restored file to a path "
            "with -o, or drop --json"
        )
    with progress_bar("restoring", enabled=not quiet) as advance:
        result = run_decompress(input, output, dtype.value, force, advance)
    if json:
        print_json(decompress_json(result))
    elif not quiet:
        decompress_summary(result)
