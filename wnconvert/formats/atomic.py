"""Writing outputs safely: the one place that creates temp files and publishes outputs.

Every writer of wnconvert (checkpoints, sharded checkpoints, ONNX models with their external
data, verification reports) goes through this module:

* :func:`check_output` refuses, before any work, an output that is one of the inputs (however
  it is spelled: ``..``, symlinks, hard links), that exists without ``force``, or that cannot
  be created.
* :class:`Staging` is a private folder next to the outputs. Every file of an output set (shards
  and their index, a model and its external data file) is written there, then published
  together. The last file of a set is its *entry* (the single file, the index, the model);
  the others are its *payload*, which the entry points at.

  - One writer per output: :class:`OutputLock` (``flock`` on ``.<entry>.lock`` beside it) is
    held from staging to publish; a second run writing the same output fails at once with
    "another wnconvert is writing this output" (two ``force`` runs would otherwise publish a
    model from one and its data file from the other). Under the lock, staging folders a killed
    run left for that entry are removed.
  - Without ``force`` nothing is published over a file that appeared at an output path
    meanwhile (another program); what was already published is taken back.
  - With ``force`` the old set is replaced so that the folder holds the complete old set or
    the complete new set at every instant, for a reader and for a SIGKILL at any point (see
    :func:`_replace_set`): payload files first, under names the old entry does not read (a
    payload name both sets use is first given a hidden backup name, ``.<entry>.old-<random>.
    <name>``, and the old entry atomically replaced by a copy that reads the backups), then the
    entry with ``os.replace``; only then are the backups and the old set's payload files that
    the new set does not use removed (a layout change: 3 shards to 2, a model with a data file
    to one without). Only files the old entry reads *and* that carry a name this writer gives
    payloads are removed, never one outside the folder or an input. A killed run leaves
    recognizable debris only: hidden backups (removed by the next ``force`` run of that
    output), a staging folder and a lock file (removed by the next run of that output).
  - SIGINT/SIGTERM/SIGHUP wait until a publish is complete or rolled back
    (:func:`signals_deferred`); leaving the block any other way (an error, Ctrl-C, SIGTERM
    unwinding as an exception) deletes the folder.
* :func:`atomic_file` and :func:`atomic_files` are the common cases of :class:`Staging`.
* The byte-level writers (:func:`~.byteio.copy_range`, :func:`~.byteio.write_at`,
  :func:`~.byteio.keep_write_errors`) are in :mod:`.byteio`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from ..errors import InputError
from .byteio import REAL_WRITE_ERRORS


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


class SetLayout(Protocol):
    """How the entry file of a multi-file set (an ONNX model, a shard index) names its payload
    files. The writers of such sets give one to :class:`Staging` so that a ``force``
    replacement keeps the old set whole until the new entry is in place, then removes the old
    set's payload files that the new set does not use (see the module docstring)."""

    def payloads(self, entry: Path) -> list[str]:
        """The file names, relative to the entry's folder, that the existing ``entry`` reads
        (InputError, OSError or ValueError where it cannot be read)."""
        ...

    def owns(self, entry: Path, name: str) -> bool:
        """Whether ``name`` is a name the writer gives to payload files of ``entry``: only
        such files are ever deleted (never a file the old entry merely points at)."""
        ...

    def repoint(self, entry: Path, renames: Mapping[str, str], out: Path) -> None:
        """Write to ``out`` a copy of ``entry`` that reads ``renames[name]`` for each ``name``."""
        ...


def publish(moves: Sequence[tuple[Path, Path]], *, force: bool, layout: SetLayout | None = None,
            keep: Iterable[Path] = ()) -> list[Path]:
    """Move each ``(staged, final)`` into place, in order; returns the final paths.

    The last move is the set's entry (the single file, the model, the index); the others are
    its payload. Either the whole new set is in place or the whole old one (a model and its
    data file, shards and their index never mix two runs):

    * without ``force``, a file that appeared at a final path since :func:`check_output` is
      kept and :class:`InputError` is raised; the files of this set already published are
      removed again;
    * with ``force``, see :func:`_replace_set`: the entry is replaced last, after the old
      entry was repointed at backups of any payload file the new set writes over.

    SIGINT/SIGTERM/SIGHUP wait until the publish is complete or rolled back
    (:func:`signals_deferred`). ``keep`` are files never deleted (the command's inputs).
    """
    with signals_deferred():
        if force:
            return _replace_set(moves, layout=layout, keep=list(keep))
        return _publish_new(moves)


def _publish_new(moves: Sequence[tuple[Path, Path]]) -> list[Path]:
    # Each file stays open until the set is complete: an open file keeps its inode, so a
    # rollback can tell our file from one that replaced it (a freed inode number is reused at
    # once by the next file created). A file is listed before its move, so a failure between
    # the move and the next line cannot leave it out of the rollback.
    done: list[tuple[Path, int]] = []
    try:
        for staged, final in moves:
            done.append((final, os.open(staged, os.O_RDONLY)))
            try:
                move_no_replace(staged, final)
            except FileExistsError:
                raise InputError.template(
                    "{final}: appeared while writing (another run or program created it); it "
                    "was kept and nothing was written; use {-force} to replace it", final=final
                ) from None
    except BaseException:
        for final, fd in reversed(done):
            if _is_ours(fd, final):
                with contextlib.suppress(OSError):
                    os.unlink(final)
        raise
    finally:
        for _, fd in done:
            os.close(fd)
    return [final for final, _ in done]


def _is_ours(fd: int, final: Path) -> bool:
    """Whether ``final`` is the file open as ``fd`` (not one that replaced it meanwhile)."""
    try:
        ours, there = os.fstat(fd), os.stat(final, follow_symlinks=False)
    except OSError:
        return False
    return (ours.st_dev, ours.st_ino) == (there.st_dev, there.st_ino)


def backup_name(entry: Path, token: str, name: str) -> str:
    """The name a payload file of the old set of ``entry`` has while the new set is published:
    hidden, and recognizable as this entry's (:func:`_is_backup_of`) after a SIGKILL."""
    return f".{entry.name}.old-{token}.{name}"


def _is_backup_of(entry: Path, name: str) -> bool:
    return re.fullmatch(rf"\.{re.escape(entry.name)}\.old-[a-z0-9_]+\..+", name) is not None


def _plain_name(name: str) -> bool:
    """A file name in the entry's own folder: no separator, not ``.``/``..``, no NUL."""
    seps = {"/", os.sep, os.altsep or "/"}
    return name not in ("", ".", "..") and "\0" not in name and not any(s in name for s in seps)


def _old_payloads(entry: Path, layout: SetLayout | None) -> list[str]:
    """The payload files of the set at ``entry`` now: names in its folder that exist."""
    if layout is None or os.path.islink(entry) or not os.path.isfile(entry):
        return []
    try:
        names = layout.payloads(entry)
    except (InputError, OSError, ValueError):
        return []  # not a set this writer can read: only the entry itself is replaced
    folder = _parent(entry)
    return [n for n in dict.fromkeys(names)
            if _plain_name(n) and n != entry.name and os.path.isfile(folder / n)
            and not os.path.islink(folder / n)]


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
        shutil.copy2(source, target, follow_symlinks=False)  # no hard links here: a real copy


def _replace_set(moves: Sequence[tuple[Path, Path]], *, layout: SetLayout | None,
                 keep: list[Path]) -> list[Path]:
    """Replace the set at ``moves[-1]`` (its entry) by the staged one: complete old set or
    complete new set at every instant, for readers and for a SIGKILL at any point.

    1. Each payload file of the old set that the new set writes over gets a hidden second name
       (:func:`backup_name`), and the old entry is replaced (atomically) by a copy that reads
       those names (:meth:`SetLayout.repoint`): still the complete old set.
    2. The new payload files are moved to their names: the old entry reads none of them.
    3. The new entry replaces the old one (``os.replace``, atomic): the complete new set.
    4. The backups and the old set's payload files the new set does not use are removed (only
       names the layout owns, never one of ``keep``).

    A failure before step 3 undoes what was done, in the reverse order, so the old set stays
    complete at every instant. A SIGKILL leaves the complete old set (its entry reading the
    backups, which the next ``force`` run removes with that set) or the complete new set with
    unused backups or old payload files beside it (removed by the next run of that output).
    Where the old entry cannot be repointed, step 1 keeps plain copies instead, and the old
    set is complete again after a rollback, though not for a reader during the publish.
    """
    staged_entry, entry = moves[-1]
    folder, spare = _parent(entry), staged_entry.parent
    token = spare.name.removesuffix(".tmp").rpartition(".")[2] or "x"
    new_names = {final.name for _, final in moves}
    old = _old_payloads(entry, layout)
    backups: dict[str, str] = {}
    original_entry: Path | None = None
    done: list[tuple[Path, int, Path | None]] = []
    try:
        colliding = [n for n in old if n in new_names]
        if colliding and layout is not None:
            try:
                for name in colliding:
                    backups[name] = backup_name(entry, token, name)
                    _link_or_copy(folder / name, folder / backups[name])
                repointed = spare / f"{entry.name}.repointed"
                layout.repoint(entry, backups, repointed)
            except (InputError, OSError, ValueError):
                for backup in backups.values():  # the old entry cannot be rewritten
                    with contextlib.suppress(OSError):
                        os.unlink(folder / backup)
                backups = {}
            else:
                original_entry = _keep_old_version(staged_entry, entry)
                os.replace(repointed, entry)
        for staged, final in moves[:-1]:
            fd = os.open(staged, os.O_RDONLY)
            done.append((final, fd, None))
            if final.name not in backups:
                done[-1] = (final, fd, _keep_old_version(staged, final))
            os.replace(staged, final)
        os.replace(staged_entry, entry)  # the switch: from here on the new set is complete
    except BaseException:
        for final, fd, kept in reversed(done):
            if not _is_ours(fd, final):
                continue  # not (or no longer) ours: leave it
            with contextlib.suppress(OSError):
                if kept is not None:
                    os.replace(kept, final)
                elif final.name in backups:
                    restore = spare / f"{final.name}.restore"
                    _link_or_copy(folder / backups[final.name], restore)
                    os.replace(restore, final)
                else:
                    os.unlink(final)
        if original_entry is not None:
            with contextlib.suppress(OSError):
                os.replace(original_entry, entry)  # reads the original names again
        for backup in backups.values():
            with contextlib.suppress(OSError):
                os.unlink(folder / backup)
        raise
    finally:
        for _, fd, _kept in done:
            os.close(fd)
    _remove_old_payloads(entry, layout, old, new_names, keep)
    return [final for _, final in moves]


def _remove_old_payloads(entry: Path, layout: SetLayout | None, old: list[str],
                         new_names: set[str], keep: list[Path]) -> None:
    """After the switch: remove the old set's payload files the new set does not use, and any
    backup of this entry (this run's, or one a killed run left). Best effort."""
    folder = _parent(entry)
    stale: list[str] = []
    with contextlib.suppress(OSError), os.scandir(folder) as found:
        stale = [item.name for item in found if _is_backup_of(entry, item.name)]
    owned = [n for n in old if layout is not None and layout.owns(entry, n)]
    for name in dict.fromkeys([*stale, *owned]):
        path = folder / name
        if name in new_names or any(same_file(path, k) for k in keep):
            continue
        with contextlib.suppress(OSError):
            if not path.is_symlink() and path.is_file():
                os.unlink(path)


def _keep_old_version(staged: Path, final: Path) -> Path | None:
    """A second name for the file now at ``final`` (in the staging folder, which is deleted
    with it), so a rollback can put it back; None if there is nothing there."""
    if not os.path.lexists(final):
        return None
    old = staged.with_name(f"{staged.name}.replaced")
    _link_or_copy(final, old)
    return old


_LOCK_BUSY = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES}


class OutputLock:
    """An exclusive lock on one output (``fcntl.flock`` on ``.<name>.lock`` beside it), held
    from staging to publish, so two runs writing the same output never interleave their sets.

    A second writer fails at once (:class:`InputError`) instead of waiting behind a run that
    may take an hour. The lock file is removed on release; a writer that opened it just before
    checks that the file it locked is still the one at the path. A killed run leaves the file,
    harmless: the kernel released its lock, and the next writer removes it. Where ``flock``
    does not exist (Windows) or the file system refuses it, there is no lock.
    """

    def __init__(self, output: Path) -> None:
        self.output = Path(output)
        self.path = _parent(self.output) / f".{self.output.name}.lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in _LOCK_BUSY:
                    raise InputError(
                        f"{self.output}: another wnconvert is writing this output now; wait "
                        "for it to finish or choose another output"
                    ) from None
                with contextlib.suppress(OSError):  # no locks on this file system
                    os.unlink(self.path)
                return
            try:
                mine = os.fstat(fd)
                there = os.stat(self.path, follow_symlinks=False)
                if (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino):
                    self.fd = fd
                    return
            except FileNotFoundError:
                pass
            os.close(fd)  # the holder removed it between our open and our lock: again

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # before the close: nobody can lock this file after us
        os.close(fd)


_STAGING_RANDOM = re.compile(r"[a-z0-9_]{8}")


def _remove_stale_staging(entry: Path) -> None:
    """Remove the staging folders a killed run left for ``entry`` (called under its lock, so
    no other run is using them)."""
    prefix = f".{entry.name}."
    with contextlib.suppress(OSError), os.scandir(_parent(entry)) as found:
        stale = [item.path for item in found
                 if item.name.startswith(prefix) and item.name.endswith(".tmp")
                 and _STAGING_RANDOM.fullmatch(item.name[len(prefix):-4])
                 and item.is_dir(follow_symlinks=False)]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)


class Staging:
    """A private folder next to ``outputs`` where they are written, then published together.

    ::

        with Staging([data, model], force=False) as staging:
            write(staging.path(data)); write(staging.path(model))
            staging.publish()            # data first, then model; nothing on any failure

    ``outputs`` share one folder (the rename into place must not cross file systems) and are
    published in the given order, the last one being the set's entry. Leaving the block
    without :meth:`publish` (an error, Ctrl-C, SIGTERM) deletes everything written. The folder
    is named ``.<name>.<random>.tmp``; :class:`OutputLock` on the entry is held for the
    block. ``layout`` describes a multi-file set (see :func:`_replace_set`); ``keep`` are files
    a replacement never deletes (the command's inputs).
    """

    def __init__(self, outputs: Sequence[Path], *, force: bool,
                 layout: SetLayout | None = None, keep: Iterable[Path] = ()) -> None:
        self.outputs = [Path(o) for o in outputs]
        if not self.outputs:
            raise ValueError("Staging needs at least one output")
        parents = {os.path.realpath(_parent(o)) for o in self.outputs}
        if len(parents) != 1:
            raise ValueError(f"outputs of one set must share a folder: {self.outputs}")
        self.force = force
        self.layout = layout
        self.keep = [Path(k) for k in keep]
        self.folder: Path | None = None
        self.published: list[Path] = []
        self._lock = OutputLock(self.outputs[-1])

    def __enter__(self) -> Staging:
        parent = _parent(self.outputs[-1])
        try:
            self._lock.acquire()
            _remove_stale_staging(self.outputs[-1])
            self.folder = Path(tempfile.mkdtemp(
                prefix=f".{self.outputs[-1].name}.", suffix=".tmp", dir=parent))
        except OSError as exc:
            self._lock.release()
            raise InputError(
                f"{self.outputs[-1]}: cannot write in {parent} ({exc.strerror}); choose "
                "another -o"
            ) from None
        except BaseException:
            self._lock.release()
            raise
        return self

    def path(self, output: Path) -> Path:
        """Where to write ``output`` until it is published."""
        assert self.folder is not None, "use Staging in a with block"
        output = Path(output)
        if output not in self.outputs:
            raise ValueError(f"{output} is not one of this staging's outputs")
        return self.folder / output.name

    def publish(self, outputs: Sequence[Path] | None = None) -> list[Path]:
        """Publish ``outputs`` (default: all) that were written; returns their final paths.

        The last output (the entry) is always published last, even when ``outputs`` leaves
        some payload files out (an ONNX model without external data)."""
        chosen = self.outputs if outputs is None else [Path(o) for o in outputs]
        # Files are created with open() (mode 0666 less the umask), as a plain write would.
        moves = [(self.path(o), o) for o in chosen]
        self.published = publish(moves, force=self.force, layout=self.layout, keep=self.keep)
        return self.published

    def __exit__(self, *exc_info: object) -> None:
        folder, self.folder = self.folder, None
        if folder is None:
            return
        with signals_deferred():  # a signal now would cut the cleanup short
            shutil.rmtree(folder, ignore_errors=True)
            self._lock.release()
        error = exc_info[1] if len(exc_info) > 1 else None
        if isinstance(error, OSError) and error.errno is not None:
            # "out.onnx: No space left on device", not the staged name in a hidden folder,
            # nor no name at all (a write to a handle).
            final = self.outputs[-1]
            if error.filename is not None:
                staged = Path(os.fsdecode(error.filename))
                if staged.parent != folder:
                    return
                final = next((o for o in self.outputs if o.name == staged.name), final)
            elif error.errno not in REAL_WRITE_ERRORS:
                return
            raise OSError(error.errno, error.strerror or os.strerror(error.errno),
                          str(final)) from error


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
def name_write_errors(path: Path) -> Iterator[None]:
    """Give an OSError raised in the block without a file name (a write to a handle, a
    ``copy_file_range``) the name ``path``: "out-00002-of-00003.safetensors: No space left on
    device". A staged path is turned into the final one by :class:`Staging`."""
    try:
        yield
    except OSError as exc:
        named = _with_output_name(exc, Path(path))
        if named is exc:
            raise
        raise named from exc


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
def atomic_files(outputs: Sequence[Path], *, force: bool = False,
                 layout: SetLayout | None = None,
                 keep: Iterable[Path] = ()) -> Iterator[list[Path]]:
    """Yield paths to write ``outputs`` at; all are published, in order, only on success.

    Used for sharded checkpoints (shards + index): the index comes last, so a reader never sees
    an index that points at missing shards. ``layout`` and ``keep``: see :class:`Staging`.
    """
    outputs = [Path(o) for o in outputs]
    with Staging(outputs, force=force, layout=layout, keep=keep) as staging:
        yield [staging.path(o) for o in outputs]
        staging.publish()
