"""The Typer application, and the one place where errors become exit codes.

Commands live one per module beside this one; each parses its options, calls one library
function and renders the result. Library errors (``QuantError``) and Click's usage errors are
printed here as one line, ``Error: ...``, on stderr; ``--debug`` (or QUANT_DEBUG=1) shows the
traceback instead, for bug reports. Python warnings (e.g. NumPy's RuntimeWarning on a NaN,
which is then reported as an error anyway) are shown only when debugging, so that a failure
stays one line.
"""

from __future__ import annotations

import codecs
import io
import os
import signal
import sys
import traceback
import warnings
from typing import NoReturn

import typer
from typer._click import exceptions as click_errors  # Typer >= 0.27 vendors Click here
from typer.core import TyperGroup

from quantcli import __version__
from quantcli.errors import QuantError

_debug = False
_command = ""  # the subcommand being run, for the message on Ctrl-C


def debug_enabled() -> bool:
    return _debug or os.environ.get("QUANT_DEBUG", "") not in ("", "0")


def one_line(message: str) -> str:
    """``message`` with control characters escaped (``\\n``, ``\\x1b``, ...), so that a file or
    tensor name from a hostile file cannot split the error line or drive the terminal; the
    bytes of a file name that is not UTF-8 show as ``\\xff`` (see ``printable``)."""
    if message.isprintable():
        return message
    return "".join(c if c.isprintable() else _escaped(c) for c in message)


def printable(text: str) -> str:
    """``text`` made encodable by any UTF-8 writer (a stream, a JSON reader).

    A file name that is not valid UTF-8 (legal on Linux) reaches Python with each bad byte
    as a lone surrogate (U+DC80..U+DCFF, "surrogateescape"); it is shown as ``\\xff``, the
    byte it stands for. Any other lone surrogate (e.g. from a JSON header) as ``\\udXXX``.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join(_escaped(c) if "\ud800" <= c <= "\udfff" else c for c in text)


def _escaped(char: str) -> str:
    if "\udc80" <= char <= "\udcff":  # a byte of a file name that is not UTF-8
        return f"\\x{ord(char) - 0xDC00:02x}"
    return repr(char)[1:-1]


def _escape_unencodable(error: UnicodeError) -> tuple[str, int]:
    """Codec error handler: what a stream cannot encode is written escaped, as ``printable``
    and ``one_line`` would (ASCII, so that any encoding takes it)."""
    if not isinstance(error, UnicodeEncodeError):
        raise error
    bad = error.object[error.start : error.end]
    return "".join(_escaped(c).encode("ascii", "backslashreplace").decode() for c in bad), error.end


def configure_streams() -> None:
    """Make stdout and stderr print any text, file names that are not UTF-8 included.

    In a UTF-8 locale Python's stdout is strict, and a table or line naming ``w\\xff.npy``
    would fail with UnicodeEncodeError (stderr would print ``\\udcff``). For the quant
    process only (its entry point calls this), like the signal handlers.
    """
    codecs.register_error("quant.escape", _escape_unencodable)
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="quant.escape")


def fail(message: str, code: int) -> NoReturn:
    try:
        typer.echo(f"Error: {one_line(message)}", err=True)
    except OSError:
        pass  # stderr's reader is gone too (`2>&1 | head`): the exit code still tells
    _exit(code)


def _exit(code: int) -> NoReturn:
    """``sys.exit(code)``, once stdout and stderr can be flushed: Python flushes both on its
    way out and turns the exit code into 120 if that fails, so a stream whose reader went away
    (a closed pipe) is pointed at the null device first."""
    for stream in (sys.stdout, sys.stderr):
        if stream is None:
            continue
        try:
            stream.flush()
        except OSError:
            try:
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, stream.fileno())
                os.close(null)
            except (OSError, ValueError):
                pass  # not a real file descriptor: nothing is flushed to it at exit
    sys.exit(code)


class _ReaderGone(Exception):
    """The program reading quant's text (a report, a table, JSON) closed the pipe."""


def _interrupted() -> NoReturn:
    where = f"quant {_command}" if _command else "quant"
    fail(
        f"interrupted in {where}: stopped (Ctrl-C) before finishing, so no output was written "
        "and no temp file is left; run the command again",
        130,
    )


class Terminated(BaseException):
    """A termination signal arrived (SIGTERM, SIGHUP).

    Raised in the main thread like KeyboardInterrupt and, like it, not an ``Exception``: only
    cleanup code (``finally``, ``except BaseException``) sees it on its way out, so the temp
    files of a half-written output are removed exactly as on Ctrl-C.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# What process managers end a job with: SIGTERM from timeout, Slurm, Kubernetes and
# `docker stop`; SIGHUP when the terminal or ssh session goes away.
_TERMINATING = ("SIGTERM", "SIGHUP")


def install_signal_handlers() -> None:
    """Turn SIGTERM and SIGHUP into ``Terminated``. For the quant process only (its entry
    point calls this); a signal already ignored (``nohup``) stays ignored."""
    for name in _TERMINATING:
        signum = getattr(signal, name, None)  # Windows has no SIGHUP
        if signum is not None and signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _terminate)


def _terminate(signum: int, frame: object) -> None:
    # a second signal (a process manager may repeat it) would cut the cleanup short and
    # leave temp files behind: the first one is obeyed, the others are ignored
    for name in _TERMINATING:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    raise Terminated(signum)


def _terminated(signum: int) -> NoReturn:
    where = f"quant {_command}" if _command else "quant"
    fail(
        f"terminated ({signal.Signals(signum).name}) in {where}: stopped by the signal before "
        "finishing; no output was written and no temp file is left",
        128 + signum,
    )


class QuantGroup(TyperGroup):
    """Runs a command and maps every failure to one line on stderr and an exit code."""

    def get_command(self, ctx, cmd_name):
        from quantcli.cli.aliases import add_aliases

        command = super().get_command(ctx, cmd_name)
        add_aliases(command)
        return command

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        global _debug, _command
        _debug, _command = False, ""
        try:
            with warnings.catch_warnings():
                if not debug_enabled():  # the root callback turns them back on for --debug
                    warnings.simplefilter("ignore")
                rv = super().main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
        except QuantError as exc:
            if debug_enabled():
                traceback.print_exc()
            fail(str(exc), exc.exit_code)
        except click_errors.NoArgsIsHelpError as exc:
            typer.echo(exc.ctx.get_help(), err=True)
            sys.exit(2)
        except click_errors.UsageError as exc:
            where = f"quant {exc.ctx.info_name}" if exc.ctx and exc.ctx.parent else "quant"
            why = exc.format_message().rstrip(".")
            fail(f"usage error in {where}: {why}; see '{where} --help'", 2)
        except click_errors.ClickException as exc:
            fail(exc.format_message(), exc.exit_code)
        except (typer.Abort, KeyboardInterrupt):
            _interrupted()
        except Terminated as exc:
            _terminated(exc.signum)
        except _ReaderGone:
            # `| head` read what it wanted: what is printed comes after the job's outputs
            # were written whole (a binary output on stdout cut short is an OutputError)
            _exit(0)
        except OSError as exc:
            # Outside the library's own checks, e.g. writing `-o -` to a full disk: the
            # environment, not a bug, so one line (the traceback with --debug).
            if debug_enabled():
                traceback.print_exc()
            where = exc.filename or (f"quant {_command}" if _command else "quant")
            fail(
                f"I/O error in {where}: {exc.strerror or exc}; check the disk and the paths, "
                "and run again",
                1,
            )
        except Exception as exc:  # a bug: say so in one line, after the traceback if debugging
            if debug_enabled():
                traceback.print_exc()
            fail(
                f"internal error {type(exc).__name__} in quant: {exc}; please report it with "
                "the output of the same command run with --debug",
                1,
            )
        if rv == 130:  # Typer turns Ctrl-C into exit code 130 after the outputs were cleaned up
            _interrupted()
        _exit(rv if isinstance(rv, int) else 0)

    # Typer exits 1 on a closed pipe, failing a finished job because its report went unread
    # (or `quant --help | head -1`); these two hand it to ``main`` instead

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except BrokenPipeError as exc:
            raise _ReaderGone() from exc

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BrokenPipeError as exc:
            raise _ReaderGone() from exc


app = typer.Typer(
    cls=QuantGroup,
    name="quant",
    help="Quantize neural-network weight files and report the error honestly.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"quant {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(
        False, "--debug", help="Show Python tracebacks on errors (also: QUANT_DEBUG=1)."
    ),
) -> None:
    """Quantize neural-network weight files and report the error honestly."""
    global _debug, _command
    _debug, _command = debug, ctx.invoked_subcommand or ""
    if debug:
        warnings.simplefilter("default")
    from quantcli.core.parallel import thread_count

    thread_count()  # a bad QUANT_THREADS is a usage error before any work, not midway
