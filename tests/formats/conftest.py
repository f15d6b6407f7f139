"""The command-line fixtures of ``tests/cli/conftest.py`` (``cli``, ``assert_input_error``,
``snapshot``...), shared with the format tests that run the CLI end to end: one definition
serves both folders (``tests/`` is a package, so the module imports like any other)."""

from __future__ import annotations

from tests.cli.conftest import (  # noqa: F401 - re-exported as fixtures of this folder
    app_command,
    assert_input_error,
    assert_ok,
    cli,
    runner,
    snapshot,
    strict_cli,
)
