"""The options of mixed specs (``--rule``) shared by compress and report (docs/MIX.md).

The decisions themselves live in ``quantcli.ops.plan``.
"""

from __future__ import annotations

from typing import Annotated

import typer

Rules = Annotated[
    list[str] | None,
    typer.Option(
        "--rule",
        metavar="PATTERN=SPEC",
        help="Quantize the tensors PATTERN names with SPEC (repeatable; the first matching "
        "rule wins). PATTERN: a glob, or re:REGEX matched whole, on the tensor name or its "
        "module name (lm_head names lm_head.weight). SPEC: keep; a preset (int8, int4, "
        "uint4, w4a16, nf4, fp8, any scheme name); key=value,... over the spec options "
        "(bits, scheme, granularity, group_size, axis, calibration, percentile, "
        "scale_dtype), applied on top of this command's; or a preset then options "
        "(int4,group_size=32). See docs/MIX.md.",
        show_default=False,
    ),
]
