"""All terminal output lives in this package (the only place that imports rich).

Results go to stdout; progress, warnings and errors go to stderr. Progress bars appear only when
stderr is a terminal.
"""

from __future__ import annotations

import json
import sys
import unicodedata
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


#: What a terminal does not show as itself, by Unicode category: Cc (controls: ESC starts terminal
#: commands, so a tensor named "\x1b[2J" would clear the screen; CR rewrites the line), Cf
#: (format characters: bidi overrides and marks, zero-width, soft hyphen, tags, which make a name
#: look like another one), Zl/Zp (line and paragraph separators break the line), Cs (lone
#: surrogates: a file name that is not UTF-8 reaches Python with surrogate-escaped bytes, which
#: the terminal's encoder cannot even write) and Cn (unassigned in this Python's Unicode: a newer
#: version may have made it a format character; the price is that an emoji newer than this
#: Python is shown as its code point). Private use (Co) stays: a font draws it as a glyph (an
#: icon or a box), and it moves nothing else on the line.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Cn"})
#: Tag characters (U+E0000-U+E007F, invisible copies of ASCII that can spell hidden text) are
#: Cf or Cn already; named so that this does not rest on the Unicode database alone.
_TAGS = range(0xE0000, 0xE0080)
#: PEP 383: an undecodable byte 0xNN of a file name reaches Python as U+DCNN (surrogateescape).
_ESCAPED_BYTES = range(0xDC80, 0xDD00)


def _hidden(char: str) -> bool:
    return unicodedata.category(char) in _HIDDEN_CATEGORIES or ord(char) in _TAGS


def _escape_char(char: str) -> str:
    """``\\xNN`` is a byte (an ASCII control, or a byte of a file name that is not UTF-8);
    ``\\uNNNN``/``\\UNNNNNNNN`` is a code point. So a C1 control U+009B reads ``\\u009b`` and
    the lone byte 0x9B of a file name ``\\x9b``: the two cannot be confused."""
    code = ord(char)
    if code < 0x80:
        return f"\\x{code:02x}"
    if code in _ESCAPED_BYTES:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def visible(text: str) -> str:
    """``text`` with every character that a terminal would not show as itself (see
    :data:`_HIDDEN_CATEGORIES`) written as an escape: ``\\xNN``, ``\\uNNNN``, ``\\UNNNNNNNN``.

    Backslashes are left alone: messages quote names with ``repr()``, which has already
    written a backslash in a name as ``\\\\``, and doing it again here would garble them. So
    a name spelled with the text ``\\x1b`` looks like one holding ESC; both are plainly odd,
    and neither can pass for a clean name (``--json`` gives the exact string).
    """
    if text.isascii() and text.isprintable():  # the common case: nothing to look up
        return text
    return "".join(_escape_char(char) if _hidden(char) else char for char in text)


def escape(text: str) -> str:
    """Safe to embed in rich markup: hidden characters made visible, markup escaped (a name
    holding ``[bold]`` is printed as those six characters)."""
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
        # Both columns are rich markup; the item is a tensor name and the description may
        # hold a file name.
        task = bar.add_task(escape(description), total=None, item="")

        def update(item: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, item=escape(item))

        yield update


def format_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"
