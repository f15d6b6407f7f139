"""The command-line fixtures of ``tests/cli/conftest.py``, for the graph tests that run the CLI
end to end (one definition serves every folder; ``tests/`` is a package)."""

from __future__ import annotations

from tests.cli.conftest import (  # noqa: F401 - re-exported as fixtures of this folder
    app_command,
    assert_ok,
    cli,
    runner,
    strict_cli,
)
