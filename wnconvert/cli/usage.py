"""Usage errors in one line, like every other input error.

Click prints a usage error as four lines (usage, hint, blank, error); the contract is one line
that says what is wrong and where to look, exit 2. Help (``wnconvert`` with no arguments) is
still shown in full.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from typer._click import exceptions as click_errors
from typer._click.utils import echo
from typer.core import TyperGroup
from typer.exceptions import Abort


class OneLineErrorsGroup(TyperGroup):
    """The root command group: click's error output rewritten to one line on stderr."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             windows_expand_args: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args,
                                **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args,
                                **extra)
        except click_errors.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click_errors.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "wnconvert"
            echo(f"error: {_one_line(exc.format_message())} (see '{where} -h')", err=True)
            sys.exit(exc.exit_code)
        except click_errors.ClickException as exc:
            echo(f"error: {_one_line(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        except Abort:
            echo("error: interrupted; no output was written", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


def _one_line(message: str) -> str:
    """Click lists choices one per line ("Choose from:\n\tparametrize,\n\tlegacy")."""
    return " ".join(message.split())
