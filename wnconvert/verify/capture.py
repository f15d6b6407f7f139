"""Keep what ONNX Runtime prints off our stdout.

ORT's Python layer reports provider fallbacks with ``print()`` and its C++ code may write to
file descriptor 1; either would corrupt ``--json`` output. Both are captured here (the Python
stream and the descriptor) and handed back as text, to be shown as a failure reason or a
warning on stderr.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class Captured:
    """What was printed inside :func:`captured_stdout` (filled in when the block ends)."""

    text: str = ""
    lines: list[str] = field(default_factory=list)


def _flush_c_stdio() -> None:
    # C/C++ stdio buffers output written to a file; flush it while fd 1 still points there.
    import ctypes

    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def captured_stdout() -> Iterator[Captured]:
    """Redirect ``sys.stdout`` and file descriptor 1 for the block; collect what was written."""
    captured = Captured()
    buffer = io.StringIO()
    with contextlib.suppress(Exception):  # a closed/odd stdout must not stop verification
        sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:
        saved = -1  # no descriptor 1 (embedded use): the Python stream is still captured
    with tempfile.TemporaryFile() as sink:
        if saved >= 0:
            os.dup2(sink.fileno(), 1)
        try:
            with contextlib.redirect_stdout(buffer):
                yield captured
        finally:
            if saved >= 0:
                _flush_c_stdio()
                os.dup2(saved, 1)
                os.close(saved)
            sink.seek(0)
            raw = sink.read().decode("utf-8", errors="replace")
            captured.text = buffer.getvalue() + raw
            captured.lines = [line.strip() for line in captured.text.splitlines()
                              if line.strip() and set(line.strip()) != {"*"}]
