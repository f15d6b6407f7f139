"""The command-line fixtures of ``tests/cli/conftest.py`` (``cli``, ``assert_input_error``,
``snapshot``...), shared with the format tests that run the CLI end to end.

``tests/`` is not a package, so the file is loaded by path, as ``tests/conftest.py`` loads
``fixtures/models.py``; one definition serves both folders.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "wnconvert_cli_test_fixtures", Path(__file__).resolve().parent.parent / "cli" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
_cli_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_cli_fixtures)

app_command = _cli_fixtures.app_command
runner = _cli_fixtures.runner
cli = _cli_fixtures.cli
snapshot = _cli_fixtures.snapshot
assert_ok = _cli_fixtures.assert_ok
assert_input_error = _cli_fixtures.assert_input_error
