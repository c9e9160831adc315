"""Errors raised by quant's library code.

Every failure a user can cause is a ``QuantError`` subclass. Messages follow one shape,
``<what> in <file or tensor>: <why>; <how to fix>``, so the CLI can print
``Error: <message>`` on one line. ``exit_code`` is what the CLI exits with.
"""

from __future__ import annotations


class QuantError(Exception):
    """Base class of every error quant reports to a user (exit code 1)."""

    exit_code = 1


class UsageError(QuantError):
    """A command-line option or argument is invalid (exit code 2)."""

    exit_code = 2


class SpecError(UsageError):
    """A quantization spec is invalid or does not fit a tensor."""


class InputError(QuantError):
    """An input path is missing, unreadable or holds no weights."""


class FormatError(InputError):
    """An input file is malformed: bad header, truncated data, unknown dtype."""


class UnsafeInputError(FormatError):
    """An input asks for something unsafe: a pickle, a path outside its folder."""


class QuantizedFormatError(FormatError):
    """A quantized file's metadata and tensors disagree, or its format version is unknown."""


class NonFiniteError(QuantError):
    """A tensor to be quantized holds NaN or infinite values."""


class OutputError(QuantError):
    """An output cannot be written: it exists, it is the input, or its folder is missing."""


class OutputConflictError(OutputError):
    """The output is the input, or exists and --force was not given (exit code 2)."""

    exit_code = 2


class QualityGateError(QuantError):
    """A quality gate failed, e.g. a tensor's SQNR fell below --fail-below-sqnr (exit code 3)."""

    exit_code = 3
