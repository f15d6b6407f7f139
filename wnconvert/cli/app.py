"""The typer application that the ``*_cmds`` modules register their commands on, and the
entry point (:func:`main`: signals, a closed stdout)."""

from __future__ import annotations

from typing import Annotated

import typer

from .._version import __version__
from .usage import OneLineErrorsGroup

app = typer.Typer(
    name="wnconvert",
    cls=OneLineErrorsGroup,
    help=(
        "Fold, decompose, export and verify weight-normalized checkpoints.\n\n"
        "Exit codes: 0 success, 1 a numerical check failed, 2 usage or input error, 3 an "
        "exporter cannot convert the model."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain (click) help and usage errors: typer's rich help needs rich and markdown-it at
    # start-up, which doubles the time of `wnconvert --help` (0.33 s -> 0.15 s here).
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"wnconvert {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Show the version."
        ),
    ] = False,
) -> None:
    """Fold, decompose, export and verify weight-normalized checkpoints."""


def main() -> None:
    """The ``wnconvert`` entry point: :mod:`.lifecycle` handles signals and a closed stdout,
    and ends the process (:func:`.lifecycle.finish`)."""
    from .lifecycle import (
        Terminated,
        exit_code_of,
        finish,
        guard_stdout,
        install_signal_handlers,
        signal_name,
    )

    install_signal_handlers()
    guard_stdout()
    code = 0
    try:
        app()
    except SystemExit as exc:
        code = exit_code_of(exc)
    except Terminated as exc:  # arrived outside a command body (while parsing options)
        from .. import render

        render.error(f"terminated ({signal_name(exc.signum)})")
        code = exc.exit_code
    finish(code)
