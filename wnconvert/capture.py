"""Keep third-party chatter off our stdout (and, for exporters, stderr).

Exporters and ONNX Runtime print from Python (``print``; ORT reports provider fallbacks that
way) and from C++ (``std::cout``, glog): either would corrupt ``--json`` output or bury our
one-line messages. Only capturing at the file-descriptor level catches both. What was captured
is handed back, to be shown as a failure reason or a warning instead of being lost.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field

_FDS = {"stdout": 1, "stderr": 2}


@dataclass
class Captured:
    """What was printed inside :func:`captured_output` (filled in when the block ends)."""

    text: str = ""
    lines: list[str] = field(default_factory=list)  # non-blank, without ORT's *** banners


def _flush_c_stdio() -> None:
    # C/C++ stdio buffers output written to a file; flush it while the fd still points there.
    import ctypes

    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def captured_output(*streams: str) -> Iterator[Captured]:
    """Redirect the Python streams and file descriptors named in ``streams`` (``"stdout"``,
    ``"stderr"``; default both) for the block, and collect what was written."""
    names = streams or ("stdout", "stderr")
    captured = Captured()
    buffer = io.StringIO()
    for name in names:
        with contextlib.suppress(Exception):  # a closed/odd stream must not stop the work
            getattr(sys, name).flush()
    saved: dict[int, int] = {}
    with tempfile.TemporaryFile() as sink, contextlib.ExitStack() as stack:
        try:
            for name in names:
                fd = _FDS[name]
                with contextlib.suppress(OSError):  # no such descriptor (embedded use)
                    saved[fd] = os.dup(fd)
                    os.dup2(sink.fileno(), fd)
            if "stdout" in names:
                stack.enter_context(contextlib.redirect_stdout(buffer))
            if "stderr" in names:
                stack.enter_context(contextlib.redirect_stderr(buffer))
            yield captured
        finally:
            stack.close()
            if saved:
                _flush_c_stdio()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            captured.text = buffer.getvalue() + sink.read().decode("utf-8", errors="replace")
            captured.lines = [line.strip() for line in captured.text.splitlines()
                              if line.strip() and set(line.strip()) != {"*"}]
