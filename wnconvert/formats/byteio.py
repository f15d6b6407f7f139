"""Bytes into files: the one positional writer (:func:`write_at`), the one byte-range copier
(:func:`copy_range`, file to file in the kernel where possible), and :func:`keep_write_errors`,
which keeps the real error (a full disk, Ctrl-C) of a writer whose C++ layer would replace it with
its own (``torch.save``'s "enforce fail"). Publishing whole outputs is :mod:`.atomic`'s job.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import InputError

_COPY_CHUNK = 64 << 20  # bytes per read/write when the kernel cannot copy file to file

_seek_lock = threading.Lock()


def write_at(fd: int, data: memoryview | bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (thread-safe; does not move the file position)."""
    view = memoryview(data).cast("B")
    pwrite = getattr(os, "pwrite", None)
    while view.nbytes:
        if pwrite is not None:
            done = pwrite(fd, view, offset)
        else:  # Windows: no pwrite
            with _seek_lock:
                os.lseek(fd, offset, os.SEEK_SET)
                done = os.write(fd, view)
        if done <= 0:
            raise OSError(errno.EIO, "short write while writing output")
        view = view[done:]
        offset += done


# Errors copy_file_range shares with a plain write: falling back would only fail again.
REAL_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG, errno.EROFS}


def copy_range(source: Path, offset: int, count: int, dst_fd: int, dst_offset: int) -> None:
    """Copy ``count`` bytes at ``offset`` of ``source`` to ``dst_fd`` at ``dst_offset``.

    In the kernel (``os.copy_file_range``: no copy through Python memory, reflinks where the
    file system has them); by chunks of 64 MB where that is unavailable (other systems, older
    kernels, across file systems). Does not move ``dst_fd``'s file position. Raises
    :class:`InputError` if ``source`` ends early (it was truncated while being read).
    """
    copy = getattr(os, "copy_file_range", None)
    with open(source, "rb") as src:
        src_fd = src.fileno()
        while count > 0:
            if copy is not None:
                try:
                    done = copy(src_fd, dst_fd, count, offset, dst_offset)
                except OSError as exc:
                    if exc.errno in REAL_WRITE_ERRORS:
                        raise
                    copy = None  # e.g. across file systems on older kernels
                    continue
            else:
                chunk = os.pread(src_fd, min(count, _COPY_CHUNK), offset)
                if chunk:
                    write_at(dst_fd, chunk, dst_offset)
                done = len(chunk)
            if done <= 0:
                raise InputError(
                    f"{source}: ended before byte {offset + count} while copying tensor data; "
                    "the file changed or was truncated while being read"
                )
            offset += done
            dst_offset += done
            count -= done


class _ErrorKeeper:
    """A binary file proxy that remembers the first exception its ``write`` raised."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.error: BaseException | None = None

    def write(self, data: Any) -> int:
        try:
            return self._handle.write(data)
        except BaseException as exc:
            if self.error is None:
                self.error = exc
            raise

    def flush(self) -> None:
        try:
            self._handle.flush()
        except BaseException as exc:
            if self.error is None:
                self.error = exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


@contextlib.contextmanager
def keep_write_errors(handle: BinaryIO) -> Iterator[BinaryIO]:
    """Yield ``handle`` for a writer (``torch.save``) that replaces write errors with its own.

    torch's zip writer calls ``handle.write`` from C++ and turns any exception there (a full
    disk, Ctrl-C) into ``RuntimeError: [enforce fail at inline_container.cc] ...``. The first
    such exception is raised instead, so a full disk reads "No space left on device" and Ctrl-C
    stays a KeyboardInterrupt.
    """
    keeper = _ErrorKeeper(handle)
    try:
        yield keeper  # type: ignore[misc]
    except RuntimeError as exc:
        if keeper.error is not None:
            raise keeper.error from None
        if "No space left on device" in str(exc):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from exc
        raise
    if keeper.error is not None:  # swallowed by the writer: the output is not complete
        raise keeper.error
