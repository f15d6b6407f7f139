"""NeMo ``.nemo`` archives: a tar (often gzip'd) holding ``model_weights.ckpt`` (a torch.save of
the model's state dict) and ``model_config.yaml``.

Members are read by name, in memory (never extracted to disk), and names from the archive are
never used as paths on this machine. An archive holding a link, a device, a FIFO, an absolute
name or a ``..`` is refused whole: a ``.nemo`` written from it would carry them on. Sizes come
from the tar headers and are checked against the archive's own size before a member is read.
"""

from __future__ import annotations

import copy
import io
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import InputError

WEIGHTS = "model_weights.ckpt"
#: The most a deflate stream expands (1032:1): a gzip'd member that claims more is corrupt.
_DEFLATE_RATIO = 1032
#: What tarfile and gzip raise on a damaged archive (zlib.error is no OSError).
_DAMAGED = (tarfile.TarError, OSError, EOFError, ValueError, zlib.error)


@dataclass
class NemoArchive:
    """A ``.nemo`` file, checked: its members in order and how it is compressed."""

    path: Path
    compression: str  # "" (plain tar) or "gz"
    members: list[tarfile.TarInfo]
    weights: tarfile.TarInfo

    def read(self, member: tarfile.TarInfo) -> bytes:
        """One member's bytes, exactly as many as its header declares."""
        with _open_tar(self.path, self.compression) as tar:
            return _read_member(self.path, tar, member)

    @property
    def label(self) -> Path:
        """How messages name the weights: ``x.nemo:model_weights.ckpt``."""
        return Path(f"{self.path}:{_name(self.weights)}")


def _name(member: tarfile.TarInfo) -> str:
    """The member's name without the ``./`` NeMo's tar.add(arcname='.') puts first."""
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    return name


def is_nemo(path: Path) -> bool:
    """Whether ``path`` is a tar (plain or gzip'd) with a ``model_weights.ckpt`` member."""
    try:
        with tarfile.open(path, "r:*") as tar:
            return any(_name(m) == WEIGHTS for m in tar)
    except _DAMAGED:
        return False


def open_nemo(path: Path) -> NemoArchive:
    """The archive's members, every one checked; raises :class:`InputError` on a bad archive."""
    compression = _compression(path)
    try:
        with _open_tar(path, compression) as tar:
            members = tar.getmembers()
    except _DAMAGED as exc:
        raise InputError(
            f"{path}: not a readable .nemo archive ({exc}); check that the file is complete"
        ) from None
    seen: set[str] = set()
    for member in members:
        _check_member(path, member)
        name = _name(member)
        if name in seen and not member.isdir():
            raise InputError(f"{path}: member {name!r} appears twice in the archive; which one "
                             "holds the model is ambiguous (re-create the .nemo)")
        seen.add(name)
    limit = path.stat().st_size * (_DEFLATE_RATIO if compression else 1)
    for member in members:
        if member.size > limit:
            raise InputError(
                f"{path}: member {_name(member)!r} declares {member.size} bytes, more than the "
                "archive can hold; the file is truncated or corrupt (re-download it)")
    weights = [m for m in members if _name(m) == WEIGHTS and m.isfile()]
    if not weights:
        found = ", ".join(_name(m) for m in members if m.isfile()) or "no files"
        raise InputError(f"{path}: a .nemo archive without {WEIGHTS} at its top level "
                         f"(it holds {found}); wnconvert reads single-model .nemo files")
    return NemoArchive(path, compression, members, weights[0])


def _open_tar(path: Path, compression: str) -> tarfile.TarFile:
    return tarfile.open(path, "r:gz") if compression else tarfile.open(path, "r:")


def _new_tar(handle: Any, compression: str) -> tarfile.TarFile:
    if compression:
        return tarfile.open(fileobj=handle, mode="w:gz", format=tarfile.PAX_FORMAT)
    return tarfile.open(fileobj=handle, mode="w:", format=tarfile.PAX_FORMAT)


def _compression(path: Path) -> str:
    with open(path, "rb") as handle:
        return "gz" if handle.read(2) == b"\x1f\x8b" else ""


def _check_member(path: Path, member: tarfile.TarInfo) -> None:
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith("/") or ".." in parts or "\0" in name or "\\" in name:
        raise InputError(
            f"{path}: archive member {name!r} has an absolute or '..' name; refused (a .nemo "
            "holds its files under its own top level)")
    if member.isfile() or member.isdir():
        return
    kind = ("a symbolic link" if member.issym() else "a hard link" if member.islnk()
            else "a device" if member.isdev() and not member.isfifo()
            else "a FIFO" if member.isfifo() else "not a regular file")
    raise InputError(f"{path}: archive member {name!r} is {kind}; refused (a .nemo holds "
                     "regular files and folders only)")


def _read_member(path: Path, tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    if handle is None:
        raise InputError(f"{path}: archive member {member.name!r} is not a regular file")
    with handle:
        try:
            data = handle.read(member.size)
        except _DAMAGED as exc:
            raise InputError(f"{path}: cannot read archive member {member.name!r} ({exc}); "
                             "the file is truncated or corrupt (re-download it)") from None
    if len(data) != member.size:
        raise InputError(f"{path}: archive member {member.name!r} holds {len(data)} of its "
                         f"{member.size} bytes; the file is truncated (re-download it)")
    return data


def load_weights(archive: NemoArchive) -> Any:
    """The object pickled in ``model_weights.ckpt``, read without running code from it."""
    from .torch_pickle import load_pickle

    return load_pickle(archive.label, data=archive.read(archive.weights))


def write_nemo(archive: NemoArchive, handle: Any, save_weights: Callable[[Any], None]) -> None:
    """Write ``archive`` again to ``handle``, with ``model_weights.ckpt`` replaced by what
    ``save_weights(stream)`` writes and every other member copied byte for byte (same names,
    order, modes and times; same compression)."""
    weights = io.BytesIO()
    save_weights(weights)
    with _open_tar(archive.path, archive.compression) as source, \
            _new_tar(handle, archive.compression) as out:
        for member in source.getmembers():
            info = copy.copy(member)
            if member.offset == archive.weights.offset:
                info.size = weights.tell()
                weights.seek(0)
                out.addfile(info, weights)
            elif member.isfile():
                out.addfile(info, io.BytesIO(_read_member(archive.path, source, member)))
            else:
                out.addfile(info)
