"""Fixtures for the command-line tests (in-process through typer's CliRunner).

``fixture_models``, ``fixtures_dir``, ``save_sharded``... come from ``tests/conftest.py``.

Helpers are fixtures that return callables, so test modules need not import this file.

``result.stdout`` and ``result.stderr`` are separate with the installed typer (its vendored
click keeps both streams apart; ``result.output`` is the two interleaved).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
import typer.main
import typer.testing
from typer.testing import CliRunner, Result

from wnconvert.cli import app


@pytest.fixture(scope="session")
def app_command() -> typer.main.TyperGroup:
    """The click command behind ``app``, built once per session."""
    return typer.main.get_command(app)


@pytest.fixture
def runner(app_command, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A CliRunner whose ``invoke(app, ...)`` reuses :func:`app_command`.

    typer rebuilds the click command from the app on every ``invoke`` (tens of ms with this
    many options), which would be most of this suite's run time. Where typer's testing module
    does not look the builder up by that name, nothing is patched (the suite is only slower).
    """
    build = getattr(typer.testing, "_get_command", None)
    if build is not None:
        monkeypatch.setattr(typer.testing, "_get_command",
                            lambda a: app_command if a is app else build(a))
    return CliRunner()


@pytest.fixture
def cli(runner: CliRunner) -> Callable[..., Result]:
    """``cli("fold", path, "-o", out)``: run the app in-process; paths may be Path objects."""

    def invoke(*args: object) -> Result:
        return runner.invoke(app, [str(a) for a in args])

    return invoke


@pytest.fixture
def strict_cli(cli: Callable[..., Result],
               capfd: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """``cli``, also failing if anything reached the process's own stdout or stderr: C++ code
    and logging handlers bound to the original streams (torch's) bypass CliRunner's capture,
    so a stray traceback would go unseen by ``result.stderr``."""

    def invoke(*args: object) -> Result:
        capfd.readouterr()
        result = cli(*args)
        leaked = capfd.readouterr()
        assert leaked.out == "" and leaked.err == "", (
            f"printed outside the command's streams: {leaked.out!r} {leaked.err!r}")
        return result

    return invoke


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def snapshot() -> Callable[[Path], dict[str, str]]:
    """``snapshot(folder)``: {relative name: sha256} of every file below ``folder``
    (hidden temp files included, so leftovers show up in a comparison)."""

    def take(folder: Path) -> dict[str, str]:
        return {
            str(p.relative_to(folder)): _digest(p) for p in sorted(folder.rglob("*")) if p.is_file()
        }

    return take


@pytest.fixture
def no_temp_files() -> Callable[[Path], None]:
    """Assert that no temp file (``.<name>.*.tmp``) is left in a folder."""

    def check(folder: Path) -> None:
        leftovers = [p.name for p in folder.iterdir() if p.name.endswith(".tmp")
                     or p.name.startswith(".")]
        assert leftovers == [], f"temp files left behind: {leftovers}"

    return check


@pytest.fixture
def assert_ok() -> Callable[[Result], Result]:
    """Exit 0, no exception, no traceback anywhere."""

    def check(result: Result) -> Result:
        assert result.exit_code == 0, (
            f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}\n"
            f"exception: {result.exception!r}"
        )
        assert "Traceback" not in result.output
        return result

    return check


@pytest.fixture
def assert_input_error() -> Callable[..., str]:
    """The input-error contract: exit 2, nothing on stdout, exactly one line on stderr that
    starts with ``error:`` and names ``mentions`` (a file, an option...), no traceback, and the
    exit came from the CLI (SystemExit), not from an exception escaping it. Returns the line."""

    def check(result: Result, *mentions: object) -> str:
        assert result.exit_code == 2, (
            f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}\n"
            f"exception: {result.exception!r}"
        )
        assert isinstance(result.exception, SystemExit), repr(result.exception)
        assert result.stdout == "", f"stdout should be empty on error: {result.stdout!r}"
        assert "Traceback" not in result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, f"want one line on stderr, got {len(lines)}:\n{result.stderr}"
        line = lines[0]
        assert line.startswith("error:"), line
        for mention in mentions:
            text = mention.name if isinstance(mention, Path) else str(mention)
            assert text in line, f"{text!r} not named in: {line}"
        return line

    return check

