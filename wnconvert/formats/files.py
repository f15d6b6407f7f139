"""Checks on the files wnconvert is asked to read, made before any of them is opened."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import InputError, InputNotFound

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def require_exists(path: Path | str) -> Path:
    """``path`` as a Path, or :class:`InputNotFound` naming it as the caller wrote it."""
    path = Path(path)
    if not path.exists():
        raise InputNotFound(f"{path}: no such file or directory; check the path")
    return path


def require_regular_file(path: Path | str, *, what: str = "input") -> os.stat_result:
    """Refuse anything but an existing regular file (symlinks to one are fine); return its stat.

    Why before opening: ``open()`` on a FIFO blocks until a writer appears, and a device such as
    ``/dev/zero`` or ``/dev/urandom`` never ends, so reading it runs until memory is gone.
    ``os.stat`` tells them apart without opening anything. ``what`` names the file's role in the
    message ("checkpoint", "ONNX model", "--reference file"...).
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise InputNotFound(f"{path}: no such file or directory; check the path") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InputError(f"{path}: cannot read this {what} ({reason}); check the path") from None
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a regular file")
        raise InputError(
            f"{path}: is {kind}, not a regular file; the {what} must be a regular file "
            "(copy the data into one and pass that)"
        )
    return info
