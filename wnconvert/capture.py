"""Keep third-party chatter off our stdout and stderr.

Exporters and ONNX Runtime print from Python (``print``) and from C++ (``std::cout``, glog):
only capturing at the file-descriptor level catches both. What was captured is returned so the
caller can turn it into a failure reason or a warning instead of losing it.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class Captured:
    """Text written while :func:`captured_output` was active (filled in when it exits)."""

    text: str = ""


def _flush_c_stdio() -> None:
    # C++ code writes through libc's buffers; flush them before the descriptors move back.
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def captured_output() -> Iterator[Captured]:
    """Capture everything written to fds 1 and 2 and to ``sys.stdout``/``sys.stderr``."""
    captured = Captured()
    python_sink = io.StringIO()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(ValueError, OSError, AttributeError):
            stream.flush()
    saved: dict[int, int] = {}
    with tempfile.TemporaryFile() as sink:
        try:
            for fd in (1, 2):
                with contextlib.suppress(OSError):
                    saved[fd] = os.dup(fd)
                    os.dup2(sink.fileno(), fd)
            with contextlib.redirect_stdout(python_sink), contextlib.redirect_stderr(python_sink):
                yield captured
        finally:
            _flush_c_stdio()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            captured.text = python_sink.getvalue() + sink.read().decode("utf-8", "replace")
