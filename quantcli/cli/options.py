"""Option types shared by several commands, so every command spells them the same way."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer


class Scheme(str, Enum):
    """The schemes of quantcli/core/schemes (a test keeps the two lists equal), and aliases."""

    absmax = "absmax"
    zeropoint = "zeropoint"
    zeropoint_ct = "zeropoint-ct"
    fullrange = "fullrange"
    fullrange_ct = "fullrange-ct"
    fp8 = "fp8"
    fp8_e5m2 = "fp8-e5m2"
    nf4 = "nf4"
    mxfp4 = "mxfp4"
    mxfp4_ct = "mxfp4-ct"
    nvfp4 = "nvfp4"
    symmetric = "symmetric"
    asymmetric = "asymmetric"


class Granularity(str, Enum):
    tensor = "tensor"
    channel = "channel"
    group = "group"
    block = "block"


class Calibration(str, Enum):
    minmax = "minmax"
    percentile = "percentile"


class Search(str, Enum):
    auto = "auto"
    none = "none"
    mse = "mse"
    wmse = "wmse"
    hqq = "hqq"


class NonFinite(str, Enum):
    error = "error"
    keep = "keep"


class OutputDtype(str, Enum):
    original = "original"
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


class ScaleDtype(str, Enum):
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"
    e8m0 = "e8m0"
    e4m3 = "e4m3"
    k4 = "k4"
    k6 = "k6"
    k8 = "k8"


Input = Annotated[
    str,
    typer.Argument(
        metavar="INPUT",
        help="A .npy, .npz, .safetensors or .gguf file, a sharded checkpoint (its "
        "*.safetensors.index.json, or the folder holding it), or - for standard input.",
        show_default=False,
    ),
]
Output = Annotated[
    str | None,
    typer.Option(
        "-o",
        "--output",
        metavar="OUTPUT",
        help="Where to write; its extension chooses the container: x.safetensors (quant's "
        "format), x.gguf (GGUF, with --type), dir/ (a folder to write into, made if missing; "
        "the output of a sharded or model-folder input is a folder), or - for standard "
        "output. Default: beside the input, named after the scheme.",
        show_default=False,
    ),
]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing output.")]
Json = Annotated[
    bool, typer.Option("--json", help="Print the result as one JSON object on stdout.")
]
Include = Annotated[
    list[str] | None,
    typer.Option(
        "--include",
        help="Quantize only tensors whose name matches this glob (repeatable). "
        "A tensor it names is quantized even when 1-D or small.",
        show_default=False,
    ),
]
Exclude = Annotated[
    list[str] | None,
    typer.Option(
        "--exclude",
        help="Keep tensors whose name matches this glob unquantized (repeatable).",
        show_default=False,
    ),
]
MinElements = Annotated[
    int,
    typer.Option(
        "--min-elements",
        min=0,
        help="Keep tensors with fewer elements unquantized (unless --include names them).",
    ),
]


def check_block_size(value: str | None) -> str | None:
    """--block-size: ROWSxCOLUMNS (or one number, a square), said as a usage error that names
    the option."""
    if value is None:
        return None
    from quantcli.core.spec import parse_block_size
    from quantcli.errors import SpecError

    try:
        rows, cols = parse_block_size(value)
    except SpecError:
        raise typer.BadParameter(
            f"{value!r} is not ROWSxCOLUMNS of positive integers; use e.g. 128x128, or 128 "
            "for a square block"
        ) from None
    return f"{rows}x{cols}"


BlockSize = Annotated[
    str | None,
    typer.Option(
        "--block-size",
        metavar="RxC",
        callback=check_block_size,
        help="Rows x columns of a block for --granularity block (fp8, fp8-e5m2): one scale "
        "per tile of a 2-D weight, the last tile of each direction partial. ROWSxCOLUMNS, "
        "ROWS,COLUMNS, or one number for a square. Default: 128x128 (DeepSeek-V3's).",
        show_default=False,
    ),
]


def check_percentile(value: float | None) -> float | None:
    """--percentile: p in (50, 100], said as a usage error that names the option."""
    if value is not None and not 50 < value <= 100:
        raise typer.BadParameter(f"{value:g} is not in (50, 100]; use e.g. 99.99 or 99.9")
    return value
