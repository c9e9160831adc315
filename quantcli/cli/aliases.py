"""Other spellings that choice options accept: ``--scale-dtype fp16``, ``--sort sqnr``.

Each option keeps one canonical set of choices (shown by --help, recorded in files and JSON);
the spellings below are what people type from other tools' habits (PyTorch's ``fp16``,
``bf16``) or from the table's own headers (``SQNR``, ``max err``), and mean exactly the choice
they map to. They are matched without regard to case, like the choices themselves.
"""

from __future__ import annotations

from typer._types import TyperChoice

FLOAT_DTYPES = {
    "f32": "float32",
    "fp32": "float32",
    "f16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
}
SORT_METRICS = {
    "sqnr": "sqnr_db",
    "max_err": "max_abs_error",
    "max-err": "max_abs_error",
    "clip": "clipped_fraction",
    "clipped": "clipped_fraction",
    "cos": "cosine",
    "bpw": "bits_per_weight",
    "bits": "bits_per_weight",
    "mse_unclip": "mse_unclipped",
}
# parameter name (as in the command functions) -> alias -> canonical choice
ALIASES: dict[str, dict[str, str]] = {
    "scale_dtype": FLOAT_DTYPES,
    "dtype": FLOAT_DTYPES,
    "sort": SORT_METRICS,
    "format": {"md": "markdown"},
}


class AliasChoice(TyperChoice):
    """A choice that also takes the spellings in ``aliases`` (alias -> canonical choice)."""

    def __init__(self, choices, case_sensitive: bool, aliases: dict[str, str]) -> None:
        super().__init__(choices, case_sensitive)
        self.aliases = aliases

    def convert(self, value, param, ctx):
        if isinstance(value, str):
            value = self.aliases.get(value.casefold(), value)
        return super().convert(value, param, ctx)


def add_aliases(command) -> None:
    """Let the choice options of ``command`` (a Click command) take their aliases."""
    for param in getattr(command, "params", ()):
        aliases = ALIASES.get(param.name or "")
        if aliases and type(param.type) is TyperChoice:
            param.type = AliasChoice(param.type.choices, param.type.case_sensitive, aliases)
