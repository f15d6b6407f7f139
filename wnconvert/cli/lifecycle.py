"""How the ``wnconvert`` process ends: signals and a closed stdout.

* SIGINT (Ctrl-C), SIGTERM and SIGHUP raise an exception in the main thread, so every writer's
  cleanup runs as the stack unwinds (temp files and staging folders are removed), and the
  command exits ``128 + signal number`` (130, 143, 129). Signals that arrive in the 5 seconds
  after the first are ignored, so a second Ctrl-C cannot cut a cleanup short; one after that
  ends the process at once (something hangs).
* The process ends with :func:`finish` (``os._exit`` once stdout and stderr are flushed), not
  through the interpreter's shutdown: that shutdown joins worker threads (a numerics pool, a
  writer thread still finishing its copy after a signal unwound the main thread), which kept a
  signalled run alive, and a signal arriving during it ran the handler inside shutdown code
  (a traceback, exit 0). A signal after the command finished still ends the run as a signal
  (143/130, one line); its outputs are complete then.
* A stdout closed by its reader (``wnconvert inspect x.pt | head -1``) is not an error: the rest
  of the output is discarded and the command finishes; its exit code is its own (0 for inspect,
  1 for a failed check), never changed by the closed pipe.

Installed by :func:`wnconvert.cli.main` only: the in-process test runner and library callers
keep Python's own behaviour.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from types import FrameType
from typing import Any, NoReturn, TextIO


class Terminated(BaseException):
    """SIGTERM or SIGHUP, raised where the main thread was, like KeyboardInterrupt for SIGINT.

    A BaseException, so ``except Exception`` in library or user code does not swallow it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_received: int | None = None
_received_at = 0.0
# How long later signals are ignored while the first one unwinds: cleanup takes milliseconds;
# a signal after this means something hangs, and the user gets the default action (exit now).
_GRACE_S = 5.0


def received_signal() -> int | None:
    """The number of the signal that is ending this process, if one arrived."""
    return _received


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _received, _received_at
    if _received is not None:
        if time.monotonic() - _received_at < _GRACE_S:
            return  # already unwinding from the first signal: let the cleanup finish
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _received, _received_at = signum, time.monotonic()
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def install_signal_handlers() -> None:
    """SIGINT, SIGTERM (and SIGHUP where it exists) unwind the stack as exceptions."""
    for name in _HANDLED:
        signum = getattr(signal, name, None)
        if signum is None:
            continue
        with contextlib.suppress(ValueError, OSError):  # not the main thread, or not allowed
            signal.signal(signum, _on_signal)


_HANDLED = ("SIGINT", "SIGTERM", "SIGHUP")


def exit_code_of(exc: SystemExit) -> int:
    """The exit status ``sys.exit(code)`` would give (a message is printed, then 1)."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def finish(code: int) -> NoReturn:
    """End the process now with ``code`` (or as the signal that arrived after the command).

    Every file the command wrote was closed by its ``with`` block; stdout and stderr are
    flushed here. Nothing is left to the interpreter's shutdown, which could wait on worker
    threads or run a signal handler in the middle of its own code.
    """
    late: list[int] = []
    for name in _HANDLED:
        signum = getattr(signal, name, None)
        if signum is not None:
            with contextlib.suppress(ValueError, OSError):
                signal.signal(signum, lambda number, frame: late.append(number))
    _flush_std()
    if late and _received is None:
        from .. import render

        what = "interrupted" if late[0] == signal.SIGINT else f"terminated ({signal_name(late[0])})"
        render.error(what)
        code = 128 + late[0]
        _flush_std()
    os._exit(code)


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()


def signal_name(signum: int) -> str:
    with contextlib.suppress(ValueError):
        return signal.Signals(signum).name
    return f"signal {signum}"


class StdoutGuard:
    """``sys.stdout`` that swallows a closed pipe: later output goes to /dev/null.

    Python's documented recipe (``signal`` module, "Note on SIGPIPE"): on BrokenPipeError,
    point the stdout file descriptor at /dev/null so that neither the rest of the command nor
    the interpreter's final flush fails.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.closed_early = False

    def write(self, text: str) -> int:
        if not self.closed_early:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._discard()
        return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._discard()

    def _discard(self) -> None:
        self.closed_early = True
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self._stream.fileno())
            finally:
                os.close(devnull)
            self._stream.flush()  # the bytes the pipe refused now go to /dev/null

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def guard_stdout() -> None:
    """Install :class:`StdoutGuard` (once) as ``sys.stdout``."""
    if sys.stdout is not None and not isinstance(sys.stdout, StdoutGuard):
        sys.stdout = StdoutGuard(sys.stdout)  # type: ignore[assignment]


def discard_stdout() -> None:
    """Send the rest of stdout to /dev/null (a BrokenPipeError got past the guard)."""
    stream = sys.stdout
    guard = stream if isinstance(stream, StdoutGuard) else StdoutGuard(stream)
    guard._discard()
    sys.stdout = guard  # type: ignore[assignment]
