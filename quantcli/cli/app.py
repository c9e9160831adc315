"""The Typer application, and the one place where errors become exit codes.

Commands live one per module beside this one; each parses its options, calls one library
function and renders the result. Library errors (``QuantError``) and Click's usage errors are
printed here as one line, ``Error: ...``, on stderr; ``--debug`` (or QUANT_DEBUG=1) shows the
traceback instead, for bug reports. Python warnings (e.g. NumPy's RuntimeWarning on a NaN,
which is then reported as an error anyway) are shown only when debugging, so that a failure
stays one line.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings

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
    tensor name from a hostile file cannot split the error line or drive the terminal."""
    if message.isprintable():
        return message
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def fail(message: str, code: int) -> None:
    try:
        typer.echo(f"Error: {one_line(message)}", err=True)
    except BrokenPipeError:  # nobody reads stderr any more: the exit code still says it
        from quantcli.cli.render import silence_stderr

        silence_stderr()
    sys.exit(code)


def _interrupted() -> None:
    where = f"quant {_command}" if _command else "quant"
    fail(
        f"interrupted in {where}: stopped (Ctrl-C) before finishing, so no output was written "
        "and no temp file is left; run the command again",
        130,
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
        except BrokenPipeError:
            # the reader of our stdout (the command's data) went away, e.g. `| head`: not an
            # error of ours, but the data was not all delivered. (A reader of stderr going
            # away is no error at all: quantcli.cli.render.StderrGuard.)
            sys.stderr.close()
            sys.exit(1)
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
        sys.exit(rv if isinstance(rv, int) else 0)


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
