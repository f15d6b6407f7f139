"""PyTorch pickles (``.pt .pth .bin .ckpt``), loaded with ``weights_only=True``.

A checkpoint is often a container: the state dict sits under ``state_dict`` (Lightning),
``generator`` (HiFi-GAN), ``model``, ``ema``... This module finds it when unambiguous and
writes every other entry back unchanged.

Objects of other classes (fairseq's ``args`` Namespace, omegaconf configs, a training script's
config class) are read inertly: torch's weights-only unpickler still builds every tensor and
refuses every opcode it refuses, and each global it would not allow is handed a
:class:`Placeholder` class that records the name, arguments and state it is given and runs
nothing else (no import, no ``__reduce__``/``__setstate__``/``__init__`` of the real class).
"""

from __future__ import annotations

import io
import pickle
import re
import struct
import threading
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from .._requires import require_torch
from ..errors import InputError
from .files import require_regular_file

_MAX_DEPTH = 4
_UNSUPPORTED_GLOBAL = re.compile(r"unsupported global:?\s*(?:GLOBAL\s+)?([\w.]+)", re.IGNORECASE)


def load_pickle(path: Path, *, data: bytes | None = None) -> Any:
    """``torch.load`` with ``weights_only=True`` (memory-mapped when that is known to be safe).

    ``weights_only=True`` is passed explicitly, so no environment variable
    (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``) can turn the restricted unpickler off. Globals the
    restricted unpickler does not allow become :class:`Placeholder` objects (see the module
    docstring), except those that only an attack needs (:func:`is_hostile_global`): a file
    naming one is refused. ``data``: the checkpoint's bytes when it is a member of an archive
    (``.nemo``); ``path`` then only names it.
    """
    if data is None:
        require_regular_file(path, what="checkpoint")
    require_torch(f"reading {path}")
    placeholders: dict[str, type[Placeholder]] = {}
    try:
        for _ in range(_MAX_FOREIGN_GLOBALS + 1):
            try:
                return _load_weights_only(path, placeholders, data)
            except pickle.UnpicklingError as exc:
                culprit = _culprit(str(exc))
                if culprit is None:
                    raise
                # Refused again with its placeholder allowed: torch blocks that module outright.
                if culprit in placeholders or "is blocked" in str(exc):
                    raise _refused(path, culprit) from None
                names = ([culprit, *_foreign_globals(path, data)] if not placeholders
                         else [culprit])
                for name in names:
                    if is_hostile_global(name):
                        raise _refused(path, name) from None
                    placeholders.setdefault(name, placeholder_class(name))
        raise InputError(
            f"{path}: refused to load: the file names more than {_MAX_FOREIGN_GLOBALS} classes "
            "or functions that are not plain data; nothing from it was run"
        )
    except InputError:
        raise
    except pickle.UnpicklingError as exc:
        raise _not_a_checkpoint(path, str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: torch's legacy unpickler raises
        # KeyError, IndexError, RuntimeError... on garbage; each means "not a checkpoint".
        raise _not_a_checkpoint(path, f"{type(exc).__name__}: {exc}") from None


# A real checkpoint names a handful (fairseq's cfg: about ten); each one costs a reload.
_MAX_FOREIGN_GLOBALS = 64
# torch's safe_globals list is process-wide: one inert load at a time sets and clears it.
_PLACEHOLDER_LOCK = threading.Lock()


def _load_weights_only(path: Path, placeholders: Mapping[str, type[Placeholder]],
                       data: bytes | None = None) -> Any:
    import torch

    with _PLACEHOLDER_LOCK, torch.serialization.safe_globals(
        [(cls, name) for name, cls in placeholders.items()]
    ):
        # mmap needs the zip format (torch >= 1.6 default), and records checked beforehand:
        # torch's mmap path does not compare a record's size with what the pickle declares.
        source: Path | io.BytesIO = path if data is None else io.BytesIO(data)
        is_zip = zipfile.is_zipfile(source)
        if is_zip:
            _refuse_directory_records(source, name=path)
        mmap = is_zip and data is None and _records_fit(path)  # bytes in memory: no mmap
        if isinstance(source, io.BytesIO):
            source.seek(0)  # the zip checks leave it anywhere; torch reads from where it is
        loaded = torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    _check_tensors(path, loaded)
    return loaded


def _culprit(text: str) -> str | None:
    """The global torch refused, spelled ``module.name``; None when the error is not that.

    torch words it "Unsupported global: GLOBAL x.y" or "Trying to load unsupported GLOBAL
    x.y", and drops the ``builtins.`` of a builtin; any other weights-only failure is garbage,
    not code.
    """
    found = _UNSUPPORTED_GLOBAL.search(text)
    if not found:
        return None
    name = found.group(1)
    return name if "." in name else f"builtins.{name}"


def _foreign_globals(path: Path, data: bytes | None = None) -> list[str]:
    """Every global of a zip checkpoint's pickle that torch would refuse, read without running
    it (saves one reload per name); empty where that cannot be told up front."""
    import torch

    try:
        source = path if data is None else io.BytesIO(data)
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(source))
    except Exception:  # noqa: BLE001 - legacy or damaged files: the reload loop finds them
        return []


def _refused(path: Path, name: str) -> InputError:
    return InputError(
        f"{path}: refused to load: the file needs arbitrary code to unpickle "
        f"(it imports {name}); nothing from it was run. Re-save the "
        "checkpoint as a plain state dict (torch.save(model.state_dict())) or as "
        "safetensors, or load it yourself if you trust it"
    )


# Modules whose functions run commands, code or system calls. No checkpoint stores one; a file
# that names one is an attack, refused outright rather than read with a placeholder in its place.
# (The placeholder would be inert too: this list is a clear answer, not the safety boundary.)
_HOSTILE_MODULES = frozenset({
    "builtins", "os", "posix", "nt", "sys", "subprocess", "shutil", "socket", "importlib",
    "runpy", "pty", "ctypes", "marshal", "pickle", "_pickle", "code", "codeop", "io", "_io",
    "webbrowser", "multiprocessing", "tempfile", "pdb", "timeit",
    "torch.hub", "torch.ops", "torch.jit", "torch.package", "torch.utils.cpp_extension",
    # torch.storage._load_from_bytes (how plain pickle stores a tensor) is a full torch.load.
    "torch.storage", "torch.serialization",
})
# Builtins that only make data (pickle names them for empty bytes, slices, classes of objects).
_DATA_BUILTINS = frozenset({
    "bytes", "frozenset", "slice", "range", "tuple", "list", "dict", "int", "float", "str",
    "bool", "object", "type",
})


def is_hostile_global(name: str) -> bool:
    """Whether ``name`` (``module.qualname``) lies in a module whose functions run code.

    Python 2 spellings count as what pickle maps them to (``commands.call`` is
    ``subprocess.call``), whether or not the reader applies that mapping.
    """
    import _compat_pickle

    module, _, attr = name.rpartition(".")
    mapped = _compat_pickle.NAME_MAPPING.get((module, attr))
    spellings = [name, ".".join(mapped) if mapped else
                 f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{attr}"]
    if f"builtins.{attr}" in spellings and attr in _DATA_BUILTINS:
        return False
    return any(
        ".".join(parts[:i]) in _HOSTILE_MODULES
        for parts in (spelled.split(".") for spelled in spellings)
        for i in range(1, len(parts))
    )


class Placeholder:
    """An object of a class wnconvert does not load: its global name and what the pickle gave.

    Made only by the weights-only unpickler, through the per-name subclasses of
    :func:`placeholder_class`: ``REDUCE`` calls the class (``args``), ``NEWOBJ`` calls
    ``__new__`` (``args``), ``BUILD`` calls ``__setstate__`` (``state``). Nothing else runs. It
    refuses to be pickled, so it can never be written back as if it were the real object.
    """

    __slots__ = ("args", "kwargs", "state")
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: Any
    global_name: ClassVar[str] = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        inst = object.__new__(cls)
        inst.args, inst.kwargs, inst.state = args, kwargs, None
        return inst

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # __new__ recorded the arguments; the real class's __init__ never runs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(f"{self.global_name} was not loaded; it cannot be written back")

    def __repr__(self) -> str:
        return f"{self.global_name} (not loaded)"


def placeholder_class(name: str) -> type[Placeholder]:
    """A fresh :class:`Placeholder` subclass standing for the global ``name``."""
    return type(
        f"{name} (not loaded)",
        (Placeholder,),
        {"__slots__": (), "global_name": name, "__module__": __name__},
    )


def is_placeholder_class(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, Placeholder)


def placeholder_names(obj: Any) -> list[str]:
    """The global names of every placeholder (object or bare class) inside ``obj``, sorted."""
    return sorted({p.global_name for p in _walk(obj) if isinstance(p, Placeholder)
                   or is_placeholder_class(p)})


def _walk(root: Any) -> Iterator[Any]:
    """Every object reachable from ``root`` through containers and placeholders' records."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        yield obj
        if isinstance(obj, Mapping):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif isinstance(obj, Placeholder):
            stack.extend((obj.args, obj.kwargs, obj.state))


def drop_placeholders(container: Any, path: tuple[str, ...]) -> tuple[Any, list[str]]:
    """``container`` without the entries that hold placeholders, and their dotted names.

    Entries beside the state dict are looked at on every level of ``path``; one that holds a
    placeholder anywhere inside is left out whole (the input is untouched).
    """
    if not path or not isinstance(container, Mapping):
        return container, []
    head, rest = path[0], path[1:]
    kept = type(container)() if isinstance(container, dict) else {}
    dropped: list[str] = []
    for key, value in container.items():
        if key == head:
            kept[key], inner = drop_placeholders(value, rest)
            dropped.extend(f"{key}.{name}" for name in inner)
        elif placeholder_names(key) or placeholder_names(value):
            dropped.append(str(key))
        else:
            kept[key] = value
    if hasattr(container, "_metadata"):
        kept._metadata = container._metadata  # type: ignore[attr-defined]
    return kept, dropped


def _check_tensors(path: Path, loaded: Any) -> None:
    """Refuse tensors that torch.save never writes but its loader takes as they come.

    ``_rebuild_tensor_v2`` stores whatever the pickle gives as the tensor's backward hooks;
    torch.save writes an empty OrderedDict there. Anything else is corruption, and would only
    fail later, when the tensor is saved again.
    """
    import torch

    for obj in _walk(loaded):
        if isinstance(obj, torch.Tensor):
            hooks = getattr(obj, "_backward_hooks", None)
            if hooks is not None and not (isinstance(hooks, Mapping) and len(hooks) == 0):
                raise InputError(
                    f"{path}: not a readable PyTorch checkpoint: a tensor carries backward hooks "
                    f"({type(hooks).__name__}), which torch.save never writes; the file is "
                    "corrupt (re-save it)"
                )


def _refuse_directory_records(path: Path | io.BytesIO, *, name: Path | None = None) -> None:
    """Refuse records marked as folders (a name ending in ``/`` or the DOS folder attribute).

    torch.save never writes one. torch's zip reader (miniz) extracts nothing from a record it
    takes for a folder, and torch then parses the buffer it allocated for the record's bytes
    without filling it: whether such a file loads depends on leftover memory.
    ``name`` names the file in messages when ``path`` is bytes in memory.
    """
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.is_dir() or info.external_attr & _DOS_FOLDER:
                raise InputError(
                    f"{name or path}: not a readable PyTorch checkpoint: record {info.filename} is "
                    "marked as a folder, which torch.save never writes; the file is corrupt "
                    "(re-save it)"
                )


_DOS_FOLDER = 0x10  # the "directory" bit of a zip record's external attributes


def _records_fit(path: Path) -> bool:
    """Whether every tensor storage's zip record has exactly the size the pickle declares.

    ``torch.load(weights_only=True)`` without ``mmap`` refuses a record of the wrong size; with
    ``mmap`` it maps the declared size from the record's offset, so a short record would lend
    its tensor the bytes that follow it (the next record, the zip directory). This reads the
    pickle alone, through torch's weights-only unpickler, with storages on the meta device (no
    tensor data is read, nothing is allocated), and compares each storage with its record.
    Raises :class:`InputError` on a mismatch; returns False where it cannot tell (the caller
    then loads without mmap, and torch checks every record itself), True when all fit.
    """
    size = path.stat().st_size
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        infos = archive.infolist()
        if not infos or "/" not in infos[0].filename:
            return False
        # torch's reader takes the archive's folder from its first record, as done here.
        prefix = infos[0].filename.split("/", 1)[0]
        records = {info.filename: info for info in infos}
        if f"{prefix}/data.pkl" not in records:
            return False
        storages = _declared_storages(archive.read(f"{prefix}/data.pkl"))
        if storages is None:
            return False
        for key, (declared, reach) in storages.items():
            info = records.get(f"{prefix}/data/{key}")
            if info is None:
                return False  # torch refuses a missing record itself
            problem = _record_problem(archive, raw, info, declared, reach, size)
            if problem:
                raise InputError(
                    f"{path}: not a readable PyTorch checkpoint: storage record "
                    f"{info.filename} {problem}; the file is truncated or corrupt (re-save it)"
                )
    return True


def _record_problem(
    archive: zipfile.ZipFile,
    raw: Any,
    info: zipfile.ZipInfo,
    declared: int,
    reach: int,
    file_size: int,
) -> str | None:
    """Why torch's reader without mmap would refuse this storage record, if it would."""
    # Opening checks the record's local header (signature, name), as miniz does before it
    # extracts a record; the mmap path goes straight to the offset without looking.
    with archive.open(info):
        pass
    raw.seek(info.header_offset + 26)
    name_len, extra_len = struct.unpack("<HH", raw.read(4))
    end = info.header_offset + 30 + name_len + extra_len + info.compress_size
    if info.compress_type != zipfile.ZIP_STORED:
        return "is compressed (torch.save stores tensor data as it is)"
    if end > file_size:
        return "runs past the end of the file"
    if info.file_size != declared:
        return f"holds {info.file_size} bytes but the pickle declares {declared}"
    if reach > declared:
        return f"holds {declared} bytes but the pickle's tensors reach byte {reach}"
    return None


def _declared_storages(pickled: bytes) -> dict[str, tuple[int, int]] | None:
    """Storage key -> (bytes the pickle declares, bytes its tensors' views reach), or None
    where this torch has no weights-only unpickler to read the pickle with."""
    import io

    import torch

    try:
        from torch._weights_only_unpickler import Unpickler
    except ImportError:
        return None
    storages: dict[str, tuple[int, Any]] = {}

    def persistent_load(saved_id: Any) -> Any:
        # The same reading of a storage id as torch.serialization._load's persistent_load.
        if not (isinstance(saved_id, tuple) and len(saved_id) == 5):
            raise pickle.UnpicklingError(f"unexpected persistent id {saved_id!r:.60}")
        _, storage_type, key, _, numel = saved_id
        key = key.decode("ascii") if isinstance(key, bytes) else str(key)
        if key not in storages:
            dtype = torch.uint8 if storage_type is torch.UntypedStorage else storage_type.dtype
            nbytes = numel * torch._utils._element_size(dtype)
            storage = torch.storage.TypedStorage(
                wrap_storage=torch.UntypedStorage(nbytes, device="meta"),
                dtype=dtype,
                _internal=True,
            )
            storages[key] = (nbytes, storage)
        return storages[key][1]

    unpickler = Unpickler(io.BytesIO(pickled), encoding="utf-8")
    unpickler.persistent_load = persistent_load  # type: ignore[method-assign]
    unpickler.load()
    # A meta storage grows to fit the views set on it: its size now is what they reach.
    return {
        key: (nbytes, storage._untyped_storage.nbytes())
        for key, (nbytes, storage) in storages.items()
    }


def _not_a_checkpoint(path: Path, detail: str) -> InputError:
    detail = detail.strip().splitlines()[0][:120] if detail.strip() else "unreadable"
    return InputError(
        f"{path}: not a readable PyTorch checkpoint ({detail}); check that the file is complete "
        "and really a torch.save file"
    )


def is_tensor_mapping(obj: Any) -> bool:
    """A state dict: a non-empty mapping of string keys to tensors."""
    import torch

    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def candidate_paths(
    obj: Any, prefix: tuple[str, ...] = (), depth: int = 0
) -> list[tuple[str, ...]]:
    """Key paths of every state dict inside ``obj`` (a tensor mapping stops the descent)."""
    if is_tensor_mapping(obj):
        return [prefix]
    if not isinstance(obj, Mapping) or depth >= _MAX_DEPTH:
        return []
    found: list[tuple[str, ...]] = []
    for key, value in obj.items():
        if isinstance(key, str):
            found.extend(candidate_paths(value, (*prefix, key), depth + 1))
    return found


def get_path(obj: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        obj = obj[part]
    return obj


def resolve_key(container: Any, key: str, source: Path) -> tuple[str, ...]:
    """Turn ``--key`` (an entry name, or a dotted path such as ``model.ema``) into a key path."""
    if isinstance(container, Mapping) and key in container:
        path: tuple[str, ...] = (key,)
    else:
        path = tuple(key.split("."))
    try:
        target = get_path(container, path)
    except (KeyError, TypeError):
        options = ", ".join(".".join(p) or "(top level)" for p in candidate_paths(container))
        raise InputError(
            f"{source}: no entry {key!r}; state dicts found at: {options or 'none'}"
        ) from None
    if not is_tensor_mapping(target):
        raise InputError(f"{source}: entry {key!r} is not a state dict (a mapping of tensors)")
    return path


def choose_state_dict(
    container: Any, source: Path, *, key: str | None, has_pairs: Any
) -> tuple[str, ...]:
    """Pick the key path of the state dict to work on.

    ``has_pairs(mapping) -> bool`` breaks ties: if several state dicts exist and exactly one
    holds weight-norm pairs, that one is chosen. Otherwise the user must say ``--key``.
    """
    if key is not None:
        return resolve_key(container, key, source)
    candidates = candidate_paths(container)
    if not candidates:
        raise InputError(
            f"{source}: no state dict (mapping of names to tensors) found in this checkpoint; "
            "it may hold a whole pickled model, which wnconvert does not load"
        )
    if len(candidates) == 1:
        return candidates[0]
    with_pairs = [p for p in candidates if has_pairs(get_path(container, p))]
    if len(with_pairs) == 1:
        return with_pairs[0]
    names = ", ".join(".".join(p) for p in (with_pairs or candidates))
    raise InputError.template("{source}: several state dicts found ({names}); choose one with "
                              "{-key}", source=source, names=names)


def replace_at(container: Any, path: tuple[str, ...], value: Any) -> Any:
    """A shallow copy of ``container`` with the entry at ``path`` replaced (input untouched)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    copied = type(container)(container) if isinstance(container, dict) else dict(container)
    copied[head] = replace_at(container[head], rest, value)
    return copied


def describe_layout(container: Any, path: tuple[str, ...]) -> list[dict[str, Any]]:
    """The top-level entries of a container, for ``inspect``.

    ``not_loaded`` lists the classes and functions read as placeholders inside each entry.
    """
    if not isinstance(container, Mapping) or not path:
        return []  # safetensors (no container): nothing here needs torch
    import torch

    rows = []
    for key, value in container.items():
        if isinstance(value, Placeholder) or is_placeholder_class(value):
            kind = f"{value.global_name} (not loaded)"
        elif isinstance(value, torch.Tensor):
            kind = f"tensor {list(value.shape)}"
        elif is_tensor_mapping(value):
            kind = f"state dict ({len(value)} tensors)"
        elif isinstance(value, Mapping):
            kind = f"dict ({len(value)} entries)"
        elif isinstance(value, (list, tuple)):
            kind = f"{type(value).__name__} ({len(value)} items)"
        else:
            kind = f"{type(value).__name__} = {str(value)[:40]}"
        rows.append({"key": str(key), "kind": kind, "selected": str(key) == path[0],
                     "not_loaded": placeholder_names(value)})
    return rows


def save_pickle(obj: Any, handle: Any) -> None:
    import torch

    from .byteio import keep_write_errors

    # torch's C++ writer turns a failed write (full disk, Ctrl-C) into an "enforce fail".
    with keep_write_errors(handle) as out:
        torch.save(obj, out)
