"""quant's command line as the tests drive it: the Typer app in process, at a fixed terminal
width and without colour, and the contract every refused input keeps."""

from __future__ import annotations

from typer.testing import CliRunner

from quantcli.cli import app


def cli(columns: int = 100):
    """(run, ok) for quant at ``columns`` columns: ``run(*args, input=None)`` returns the
    Result; ``ok`` also asserts the exit code 0."""
    env = {"COLUMNS": str(columns), "NO_COLOR": "1"}

    def run(*args, input: bytes | None = None):
        return CliRunner().invoke(app, [str(a) for a in args], input=input, env=env)

    def ok(*args, input: bytes | None = None):
        result = run(*args, input=input)
        assert result.exit_code == 0, (result.exit_code, result.stderr, result.exception)
        return result

    return run, ok


def assert_fails(result, code: int, *fragments: str) -> str:
    """The failure contract: the exit code, one ``Error:`` line on stderr naming every
    fragment, nothing on stdout. Returns that line."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip("\n").split("\n")
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]
