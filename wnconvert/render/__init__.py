"""All terminal output lives in this package (the only place that imports rich).

Results go to stdout; progress, warnings and errors go to stderr. Progress bars appear only when
stderr is a terminal.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

# rich is imported on first use: a quiet run never pays for it (about 60 ms of start-up).
# Consoles are created per call so that typer's CliRunner (which swaps sys.stdout/sys.stderr)
# captures them.


_PIPE_WIDTH = 160  # when writing to a pipe or file, do not squeeze tables into 80 columns


def _console(stream: Any) -> Console:
    from rich.console import Console

    console = Console(file=stream, soft_wrap=True, highlight=False)
    if not console.is_terminal:
        console = Console(file=stream, soft_wrap=True, highlight=False, width=_PIPE_WIDTH)
    return console


def stdout() -> Console:
    return _console(sys.stdout)


def stderr() -> Console:
    return _console(sys.stderr)


def print_json(data: Any) -> None:
    """Machine-readable result on stdout (plain ``json.dumps``, no colour codes)."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def error(message: str) -> None:
    stderr().print(f"[bold red]error:[/] {_escape(message)}")


def warning(message: str) -> None:
    stderr().print(f"[yellow]warning:[/] {_escape(message)}")


def info(message: str, *, quiet: bool = False) -> None:
    """A status line on stderr (not a result)."""
    if not quiet:
        stderr().print(_escape(message))


# Control characters (ESC starts terminal commands: a tensor named "\x1b[2J" would clear the
# screen), C1 controls and the invisible format characters (bidi overrides, zero-width) that can
# make a name look like another one.
_INVISIBLE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


def visible(text: str) -> str:
    """``text`` with control and invisible characters written as ``\\xNN``/``\\uNNNN``."""
    return _INVISIBLE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                          else f"\\u{ord(m.group()):04x}", text)


def escape(text: str) -> str:
    """Safe to embed in rich markup: control characters made visible, markup escaped."""
    from rich.markup import escape as escape_markup

    return escape_markup(visible(text))


_escape = escape


ProgressCallback = Callable[[str, int, int], None]


@contextmanager
def progress(description: str, *, quiet: bool = False) -> Iterator[ProgressCallback | None]:
    """Yield a ``callback(item_name, done, total)`` that drives a bar on stderr.

    Yields ``None`` (no bar) when quiet or when stderr is not a terminal.
    """
    console = None if quiet else stderr()  # quiet: not even a Console (no rich import)
    if console is None or not console.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[item]}"),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=None, item="")

        def update(item: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, item=item)

        yield update


def format_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"
