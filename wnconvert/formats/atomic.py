"""Writing outputs safely: the one place that creates temp files and publishes outputs.

Every writer of wnconvert (checkpoints, sharded checkpoints, ONNX models with their external
data, verification reports) goes through this module:

* :func:`check_output` refuses, before any work, an output that is one of the inputs (however
  it is spelled: ``..``, symlinks, hard links), that exists without ``force``, or that cannot
  be created.
* :class:`Staging` is a private folder next to the outputs. Every file of an output set (shards
  and their index, a model and its external data file) is written there, then published
  together: in order (data before the file that points at it), and without ``force`` never over
  a file that appeared at the output path meanwhile (another run, another program). A refused or
  failed publish removes what it had already published, so no half set is left behind; leaving
  the block any other way (an error, Ctrl-C, SIGTERM unwinding as an exception) deletes the
  folder.
* :func:`atomic_file` and :func:`atomic_files` are the common cases of :class:`Staging`.
* :func:`copy_range` is the one byte-range copier (file to file in the kernel where possible),
  :func:`write_at` the one positional writer.
* :func:`keep_write_errors` keeps the real error (a full disk, Ctrl-C) of a writer whose C++
  layer would replace it with its own (``torch.save``'s "enforce fail").
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import InputError

_COPY_CHUNK = 64 << 20  # bytes per read/write when the kernel cannot copy file to file


def _parent(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def same_file(a: Path | str, b: Path | str) -> bool:
    """Whether two paths name one file: the same inode (hard links, symlinks), or, where one
    does not exist yet, the same path once symlinks and ``..`` are resolved."""
    with contextlib.suppress(OSError):
        if os.path.samefile(a, b):
            return True
    return os.path.realpath(a) == os.path.realpath(b)


def check_not_input(output: Path, inputs: Iterable[Path | str]) -> None:
    """Refuse ``output`` if it is one of ``inputs`` (with or without ``force``)."""
    for source in inputs:
        if same_file(output, source):
            also = "" if str(output) == str(source) else f" ({source})"
            raise InputError.template(
                "{output}: this is an input file{also}; wnconvert never modifies its input, "
                "even with {-force} (choose another output)", output=output, also=also)


def check_output(output: Path, *, force: bool, inputs: Iterable[Path | str] = ()) -> None:
    """Refuse an output that is an input, exists without ``force``, or cannot be created.

    ``inputs`` are all files the command reads (the checkpoint or model and its shards or
    external data, a template, a reference, input arrays, the model's source file): an output
    may never be one of them, even with ``force``. Called before any slow work; the publish at
    the end checks again (see :class:`Staging`), for files that appear in between.
    """
    output = Path(output)
    check_not_input(output, inputs)
    exists = os.path.lexists(output)  # a dangling symlink is in the way too
    if exists and output.is_dir():
        raise InputError.template("{output}: is a directory; give a file name with {-output}",
                                  output=output)
    if exists and not force:
        raise InputError.template(
            "{output}: already exists; use {-force} to overwrite it or choose another output",
            output=output)
    parent = _parent(output)
    if not parent.is_dir():
        raise InputError(f"{output}: folder {parent} does not exist; create it first")


# --------------------------------------------------------------------------------------------
# Publishing


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
# Why a hard link may be refused where a rename works: file systems without hard links (FAT,
# some FUSE and network mounts), link limits, sandboxes.
_NO_LINK = {errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOSYS, errno.EXDEV,
            getattr(errno, "ENOTSUP", errno.EOPNOTSUPP), errno.EOPNOTSUPP}


def _renameat2_noreplace(staged: Path, final: Path) -> bool:
    """``renameat2(RENAME_NOREPLACE)`` (Linux); False where the system or file system lacks it.

    Raises FileExistsError when ``final`` exists.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(staged), _AT_FDCWD, os.fsencode(final),
                 _RENAME_NOREPLACE) == 0:
        return True
    code = ctypes.get_errno()
    if code == errno.EEXIST:
        raise FileExistsError(code, os.strerror(code), str(final))
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False  # the kernel or this file system has no RENAME_NOREPLACE
    raise OSError(code, os.strerror(code), str(final))


def move_no_replace(staged: Path, final: Path) -> None:
    """Move ``staged`` to ``final``; raise FileExistsError if ``final`` exists, atomically.

    ``os.link`` creates the final name only if it is free (the check and the creation are one
    step in the kernel); the staged name is then dropped. Where hard links are not supported,
    ``renameat2(RENAME_NOREPLACE)``; where neither is, a check then a rename (a race window of
    microseconds instead of the whole run; on Windows ``os.rename`` itself never replaces).
    """
    try:
        os.link(staged, final, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
    else:
        os.unlink(staged)
        return
    if _renameat2_noreplace(staged, final):
        return
    if os.path.lexists(final):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(final))
    os.rename(staged, final)


def publish(moves: Sequence[tuple[Path, Path]], *, force: bool) -> list[Path]:
    """Move each ``(staged, final)`` into place, in order; returns the final paths.

    Either the whole set is in place or none of it (a model and its data file, shards and
    their index never mix two runs):

    * without ``force``, a file that appeared at a final path since :func:`check_output` is
      kept and :class:`InputError` is raised; the files of this set already published are
      removed again;
    * with ``force``, an existing file is replaced (``os.replace``), its old version kept
      (hard-linked beside the staged file) until the whole set is in place: a failure or a
      signal part way puts every old file back.
    """
    # Each file stays open until the set is complete: an open file keeps its inode, so a
    # rollback can tell our file from one that replaced it (a freed inode number is reused at
    # once by the next file created). A file is listed before its move, so a signal between
    # the move and the next line cannot leave it out of the rollback.
    done: list[tuple[Path, int, Path | None]] = []
    try:
        for number, (staged, final) in enumerate(moves, start=1):
            fd = os.open(staged, os.O_RDONLY)
            done.append((final, fd, None))
            if force:
                # The last replacement is the end of the set: nothing after it can fail, so
                # its old version need not be kept (no copy where hard links are missing).
                if number < len(moves):
                    done[-1] = (final, fd, _keep_old_version(staged, final))
                os.replace(staged, final)
                continue
            try:
                move_no_replace(staged, final)
            except FileExistsError:
                raise InputError.template(
                    "{final}: appeared while writing (another run or program created it); it "
                    "was kept and nothing was written; use {-force} to replace it", final=final
                ) from None
    except BaseException:
        with signals_deferred():
            for final, fd, old in reversed(done):
                with contextlib.suppress(OSError):
                    ours, there = os.fstat(fd), os.stat(final, follow_symlinks=False)
                    if (ours.st_dev, ours.st_ino) != (there.st_dev, there.st_ino):
                        continue  # not (or no longer) ours: leave it
                    if old is not None:
                        os.replace(old, final)
                    else:
                        os.unlink(final)
        raise
    finally:
        for _, fd, _old in done:
            os.close(fd)
    return [final for final, _, _ in done]


def _keep_old_version(staged: Path, final: Path) -> Path | None:
    """A second name for the file now at ``final`` (in the staging folder, which is deleted
    with it), so a rollback can put it back; None if there is nothing there."""
    if not os.path.lexists(final):
        return None
    old = staged.with_name(f"{staged.name}.replaced")
    try:
        os.link(final, old, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
        shutil.copy2(final, old, follow_symlinks=False)  # no hard links here: a real copy
    return old


class Staging:
    """A private folder next to ``outputs`` where they are written, then published together.

    ::

        with Staging([data, model], force=False) as staging:
            write(staging.path(data)); write(staging.path(model))
            staging.publish()            # data first, then model; nothing on any failure

    ``outputs`` share one folder (the rename into place must not cross file systems) and are
    published in the given order. Leaving the block without :meth:`publish` (an error, Ctrl-C,
    SIGTERM) deletes everything written. The folder is named ``.<name>.<random>.tmp``.
    """

    def __init__(self, outputs: Sequence[Path], *, force: bool) -> None:
        self.outputs = [Path(o) for o in outputs]
        if not self.outputs:
            raise ValueError("Staging needs at least one output")
        parents = {os.path.realpath(_parent(o)) for o in self.outputs}
        if len(parents) != 1:
            raise ValueError(f"outputs of one set must share a folder: {self.outputs}")
        self.force = force
        self.folder: Path | None = None
        self.published: list[Path] = []

    def __enter__(self) -> Staging:
        parent = _parent(self.outputs[-1])
        try:
            self.folder = Path(tempfile.mkdtemp(
                prefix=f".{self.outputs[-1].name}.", suffix=".tmp", dir=parent))
        except OSError as exc:
            raise InputError(
                f"{self.outputs[-1]}: cannot write in {parent} ({exc.strerror}); choose "
                "another -o"
            ) from None
        return self

    def path(self, output: Path) -> Path:
        """Where to write ``output`` until it is published."""
        assert self.folder is not None, "use Staging in a with block"
        output = Path(output)
        if output not in self.outputs:
            raise ValueError(f"{output} is not one of this staging's outputs")
        return self.folder / output.name

    def publish(self, outputs: Sequence[Path] | None = None) -> list[Path]:
        """Publish ``outputs`` (default: all) that were written; returns their final paths."""
        chosen = self.outputs if outputs is None else [Path(o) for o in outputs]
        # Files are created with open() (mode 0666 less the umask), as a plain write would.
        moves = [(self.path(o), o) for o in chosen]
        self.published = publish(moves, force=self.force)
        return self.published

    def __exit__(self, *exc_info: object) -> None:
        folder, self.folder = self.folder, None
        if folder is None:
            return
        with signals_deferred():  # a signal now would cut the cleanup short
            shutil.rmtree(folder, ignore_errors=True)
        error = exc_info[1] if len(exc_info) > 1 else None
        if isinstance(error, OSError) and error.filename is not None:
            # "out.onnx: No space left on device", not the staged name in a hidden folder.
            staged = Path(os.fsdecode(error.filename))
            if staged.parent == folder:
                final = next((o for o in self.outputs if o.name == staged.name), self.outputs[-1])
                raise OSError(error.errno, error.strerror, str(final)) from error


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP until the block ends (cleanup that must not be cut short).

    The handlers are swapped for one that only notes the signal; when the block ends the
    previous handlers are back and each noted signal is raised again, so it has its usual
    effect (an exception, the default action) right after the cleanup. A signal mask would not
    do: the kernel delivers a signal to any thread that does not block it (torch keeps a pool),
    and Python then runs the handler in the main thread all the same. Only the main thread can
    set handlers; elsewhere the block runs as it is.
    """
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []
    previous: dict[int, Any] = {}
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is None or signal.getsignal(signum) is None:  # not set from Python
            continue
        with contextlib.suppress(ValueError, OSError):
            previous[signum] = signal.signal(signum, lambda number, frame: noted.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(noted):
            signal.raise_signal(signum)


def _with_output_name(exc: OSError, output: Path) -> OSError:
    """The same OSError naming ``output`` when it names no file (a write to a handle)."""
    if exc.filename is None and exc.errno is not None:
        return type(exc)(exc.errno, exc.strerror or os.strerror(exc.errno), str(output))
    return exc


@contextlib.contextmanager
def atomic_file(output: Path, *, force: bool = False) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes ``output`` only if the block finishes without error.

    Without ``force``, a file that appeared at ``output`` meanwhile is kept and
    :class:`InputError` raised (call :func:`check_output` first for the early check).
    """
    output = Path(output)
    with Staging([output], force=force) as staging:
        try:
            with open(staging.path(output), "xb") as handle:
                yield handle
                # No fsync: the rename already protects against interrupted runs; forcing a GB
                # to disk would triple the run time. Like torch.save.
                handle.flush()
        except OSError as exc:
            raise _with_output_name(exc, output) from exc
        staging.publish()


@contextlib.contextmanager
def atomic_files(outputs: Sequence[Path], *, force: bool = False) -> Iterator[list[Path]]:
    """Yield paths to write ``outputs`` at; all are published, in order, only on success.

    Used for sharded checkpoints (shards + index): the index comes last, so a reader never sees
    an index that points at missing shards.
    """
    outputs = [Path(o) for o in outputs]
    with Staging(outputs, force=force) as staging:
        yield [staging.path(o) for o in outputs]
        staging.publish()


# --------------------------------------------------------------------------------------------
# Bytes


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
_REAL_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG, errno.EROFS}


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
                    if exc.errno in _REAL_WRITE_ERRORS:
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
