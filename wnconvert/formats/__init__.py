"""Reading and writing checkpoints: PyTorch pickles, safetensors (single and sharded), ``.nemo``.

A file is recognized by its content (:func:`detect`); the name only breaks ties and picks the
output format.

:func:`load_checkpoint` returns a :class:`Checkpoint` whose ``state_dict`` is lazy for
safetensors (tensors are read when accessed). Writers take a *plan* (the output tensors' names,
shapes, dtypes and how to make each), so safetensors outputs stream tensor by tensor.
"""

from __future__ import annotations

import json
import re
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Literal

from .._requires import require_torch
from ..dtypes import numpy_to_tensor
from ..errors import InputError, InputNotFound, WeightNormWarning
from . import nemo
from . import safetensors_format as st
from . import torch_pickle as tp
from .atomic import atomic_file, atomic_files, check_output, name_write_errors
from .files import require_regular_file
from .source import DictSource, LazyStateDict, PlannedTensor, TensorInfo, TensorSource, source_of

if TYPE_CHECKING:
    import torch

__all__ = [
    "Checkpoint",
    "LazyStateDict",
    "PlannedTensor",
    "TensorInfo",
    "TensorSource",
    "load_checkpoint",
    "save_checkpoint",
    "write_checkpoint",
    "default_output",
    "output_format",
    "check_output",
    "atomic_file",
    "source_of",
    "DictSource",
    "require_regular_file",
]

Format = Literal["pt", "safetensors", "nemo"]
Kind = Literal["pt", "safetensors", "sharded", "nemo"]
PT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
NEMO_SUFFIX = ".nemo"
INDEX_SUFFIX = ".safetensors.index.json"


@dataclass
class Checkpoint:
    """A loaded checkpoint: where its state dict is, and everything needed to write it back."""

    path: Path
    format: Kind
    state_dict: Mapping[str, torch.Tensor]
    container: Any = None  # pt, nemo: the whole loaded object
    key_path: tuple[str, ...] = ()  # where state_dict sits in container
    metadata: dict[str, str] | None = None  # safetensors __metadata__
    shard_of: dict[str, str] = field(default_factory=dict)  # sharded: key -> shard file name
    index_metadata: dict[str, Any] | None = None
    input_files: list[Path] = field(default_factory=list)
    detected: str = ""  # what recognized the format: the content, or the name
    archive: nemo.NemoArchive | None = None  # nemo: the archive the container came from

    @property
    def is_pickle(self) -> bool:
        """Whether the state dict sits in a pickled container (``.pt`` or a ``.nemo``'s)."""
        return self.format in ("pt", "nemo")

    @property
    def source(self) -> TensorSource:
        return source_of(self.state_dict)

    def info(self, key: str) -> TensorInfo:
        return self.source.info(key)

    def materialize(self) -> dict[str, torch.Tensor]:
        """All tensors in memory as torch tensors, in checkpoint order."""
        return OrderedDict((k, self.state_dict[k]) for k in self.state_dict)

    def layout(self) -> dict[str, Any]:
        """A description of the container, for ``inspect``."""
        return {
            "format": self.format,
            "detected": self.detected,
            "path": str(self.path),
            "state_dict_key": ".".join(self.key_path) if self.key_path else None,
            "entries": tp.describe_layout(self.container, self.key_path),
            "metadata": self.metadata,
            "shards": sorted(set(self.shard_of.values())) if self.shard_of else [],
            "members": [m.name for m in self.archive.members] if self.archive else [],
        }


@dataclass(frozen=True)
class Detection:
    """A checkpoint file's format, and what told it (``how``, shown by ``inspect``)."""

    format: Kind
    how: str


# torch.save's legacy (non-zip) format starts with a pickled magic number.
_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_ONNX_SECOND_FIELDS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42}  # ModelProto fields 2..8


def detect_format(path: Path) -> Kind:
    """The format of the checkpoint at ``path`` (see :func:`detect`)."""
    return detect(path).format


def detect(path: Path) -> Detection:
    """Recognize a checkpoint file by its content: a zip archive with ``data.pkl`` or a legacy
    pickle's magic number (PyTorch), a safetensors header, a tar with ``model_weights.ckpt``
    (``.nemo``). The name decides only when the content is none of these (a damaged file is then
    refused by its format's reader, which says what is wrong) and for sharded indexes (JSON).
    Call after :func:`require_regular_file`: this opens the file."""
    name = path.name.lower()
    if name.endswith(INDEX_SUFFIX) or name.endswith(".index.json"):
        return Detection("sharded", "safetensors index (by its name)")
    found = _sniff(path)
    if found is not None:
        return found
    by_name = _kind_of_name(name)
    if by_name is None:
        _refuse_onnx(path)
        raise InputError(
            f"{path}: unknown checkpoint type: the content is not a PyTorch zip archive or "
            "legacy pickle, safetensors, or a .nemo tar (with model_weights.ckpt); check that "
            "the file is complete and is a checkpoint"
        )
    return Detection(by_name, f"by its name ({_suffix_of(name)}; content not recognized)")


def _kind_of_name(name: str) -> Kind | None:
    if name.endswith(".safetensors"):
        return "safetensors"
    if name.endswith(PT_SUFFIXES):
        return "pt"
    if name.endswith(NEMO_SUFFIX):
        return "nemo"
    return None


def _suffix_of(name: str) -> str:
    return next(s for s in (".safetensors", *PT_SUFFIXES, NEMO_SUFFIX) if name.endswith(s))


def _sniff(path: Path) -> Detection | None:
    with open(path, "rb") as handle:
        head = handle.read(512)
    size = path.stat().st_size
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            return None
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return Detection("pt", "PyTorch zip archive (data.pkl)")
        return None
    if head[:1] == b"\x80" and _LEGACY_MAGIC in head[:32]:
        return Detection("pt", "legacy PyTorch pickle (magic number)")
    if len(head) > 8 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
        return Detection("safetensors", "safetensors header")
    if head[:2] == b"\x1f\x8b" or head[257:262] == b"ustar":
        return Detection("nemo", f"tar archive with {nemo.WEIGHTS}") if nemo.is_nemo(path) else None
    return None


def _refuse_onnx(path: Path) -> None:
    """Name an ONNX model given without its ``.onnx``: a protobuf has no magic number, so this
    weak test (``ir_version`` first, then a later field, as onnx.save writes them) only speaks
    for a file that no name claims."""
    with open(path, "rb") as handle:
        head = handle.read(3)
    if len(head) == 3 and head[0] == 0x08 and 0 < head[1] < 0x80 and head[2] in _ONNX_SECOND_FIELDS:
        raise InputError(
            f"{path}: is an ONNX model (recognized by its content), not a checkpoint; name it "
            ".onnx to inspect or fold it"
        )


def _resolve_directory(path: Path) -> Path:
    indexes = sorted(path.glob(f"*{INDEX_SUFFIX}"))
    singles = sorted(path.glob("*.safetensors"))
    if len(indexes) == 1:
        return indexes[0]
    if not indexes and len(singles) == 1:
        return singles[0]
    raise InputError(
        f"{path}: is a folder with {len(indexes)} index files and {len(singles)} .safetensors "
        "files; name the checkpoint file itself"
    )


def load_checkpoint(
    path: Path | str, *, key: str | None = None, has_pairs: Callable[[Any], bool] | None = None
) -> Checkpoint:
    """Open a checkpoint without running code from it.

    ``key`` selects the state dict inside a nested ``.pt`` container (``state_dict``,
    ``generator``, ``model.ema``...); by default it is found when unambiguous, preferring the one
    that holds weight-norm pairs (``has_pairs``). Raises :class:`InputError` on bad input.
    """
    path = Path(path)
    if not path.exists():
        raise InputNotFound(f"{path}: no such file or directory; check the path")
    if path.is_dir():
        path = _resolve_directory(path)
    # Before anything is opened: a FIFO would block open(), a device would never end.
    require_regular_file(path, what="checkpoint")
    detection = detect(path)
    checkpoint = _load(path, detection.format, key=key, has_pairs=has_pairs)
    checkpoint.detected = detection.how
    return checkpoint


def _load(path: Path, fmt: Kind, *, key: str | None,
          has_pairs: Callable[[Any], bool] | None) -> Checkpoint:
    if fmt == "safetensors":
        if key is not None:
            raise InputError.template(
                "{path}: {-key} applies to .pt containers; safetensors holds one state dict",
                path=path)
        source = st.open_safetensors(path)
        file = next(iter(source.files.values()), None) or st.SafetensorsFile(path)
        return Checkpoint(
            path, "safetensors", LazyStateDict(source), metadata=file.metadata, input_files=[path]
        )
    if fmt == "sharded":
        return _load_sharded(path)
    archive = nemo.open_nemo(path) if fmt == "nemo" else None
    container = nemo.load_weights(archive) if archive else tp.load_pickle(path)
    if has_pairs is None:
        from ..keys import find_pair_keys

        def has_pairs(mapping: Any) -> bool:
            return bool(find_pair_keys(mapping.keys()))

    key_path = tp.choose_state_dict(container, path, key=key, has_pairs=has_pairs)
    state_dict = tp.get_path(container, key_path)
    return Checkpoint(
        path, fmt, state_dict, container=container, key_path=key_path, input_files=[path],
        archive=archive,
    )


def _read_index(index_path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The index JSON and its ``weight_map`` (tensor name -> shard name), both checked."""
    require_regular_file(index_path, what="safetensors index")

    def bad(what: str) -> InputError:
        return InputError(f"{index_path}: not a valid safetensors index: {what}; re-download it")

    try:
        index = json.loads(
            index_path.read_text(encoding="utf-8"), object_pairs_hook=st.unique_object
        )
    except st.DuplicateKey as exc:
        raise bad(f"the key {exc.key!r} appears twice") from None
    except RecursionError:
        raise bad("the JSON is nested too deeply") from None
    except (UnicodeDecodeError, ValueError):  # JSONDecodeError is a ValueError
        raise bad("not JSON (needs a JSON object with a 'weight_map')") from None
    if not isinstance(index, dict) or "weight_map" not in index:
        raise bad("needs a JSON object with a 'weight_map'")
    weight_map = index["weight_map"]
    if not isinstance(weight_map, dict):
        raise bad(f"'weight_map' is a {_json_type(weight_map)}, not an object")
    for key, shard_name in weight_map.items():
        if not isinstance(shard_name, str) or not shard_name:
            raise bad(f"'weight_map' gives {key!r} the shard {shard_name!r}, not a file name")
    return index, weight_map


def _json_type(value: object) -> str:
    names = {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _shard_path(index_path: Path, folder: Path, name: str) -> Path:
    """The shard file ``name`` names, refused unless it lies inside the index's folder.

    The index is data from the file, not the user: like ONNX external data, it may only name
    files next to it (a subfolder is fine). Absolute paths, ``..`` and symlinks that lead out
    are refused before anything is opened.
    """
    if "\0" in name:
        raise InputError(f"{index_path}: shard name {name!r} holds a NUL byte; not a file name")
    relative = PurePath(name)
    if relative.is_absolute() or ".." in relative.parts or relative.anchor:
        raise InputError(
            f"{index_path}: shard {name!r} is outside the index's folder; an index may only "
            "name files in its own folder (move the shards next to it)"
        )
    path = index_path.parent / relative
    if not path.exists():
        raise InputNotFound(f"{index_path}: shard {name!r} is missing next to the index")
    if not path.resolve().is_relative_to(folder):
        raise InputError(
            f"{index_path}: shard {name!r} is a link to {path.resolve()}, outside the index's "
            "folder; an index may only name files in its own folder (copy the shard there)"
        )
    return path


def _load_sharded(index_path: Path) -> Checkpoint:
    index, weight_map = _read_index(index_path)
    folder = index_path.parent.resolve()
    files: dict[str, st.SafetensorsFile] = {}
    spelled: dict[Path, str] = {}  # real file -> the name the index uses for it
    for shard_name in dict.fromkeys(weight_map.values()):
        shard_path = _shard_path(index_path, folder, shard_name)
        real = shard_path.resolve()
        if real in spelled:
            raise InputError(
                f"{index_path}: shards {spelled[real]!r} and {shard_name!r} are the same file; "
                "name each shard one way only"
            )
        spelled[real] = shard_name
        files[shard_name] = st.SafetensorsFile(shard_path)
    by_key: dict[str, st.SafetensorsFile] = {}
    for key, shard_name in weight_map.items():
        if key not in files[shard_name].entries:
            raise InputError(f"{index_path}: index puts {key!r} in {shard_name!r}, which lacks it")
        by_key[key] = files[shard_name]
    # Every tensor of every shard must be the one the map names: a tensor the map lacks, or the
    # same name in two shards, would make the result depend on which reader one asks.
    for shard_name, file in files.items():
        for key in file.entries:
            if weight_map.get(key) != shard_name:
                where = (
                    f"the index puts it in {weight_map[key]!r}"
                    if key in weight_map
                    else "the index does not list it"
                )
                raise InputError(
                    f"{index_path}: shard {shard_name!r} holds {key!r} but {where}; the index and "
                    "its shards disagree (re-download them together)"
                )
    metadata = next((f.metadata for f in files.values() if f.metadata), None)
    index_meta = index.get("metadata") if isinstance(index.get("metadata"), dict) else None
    return Checkpoint(
        index_path,
        "sharded",
        LazyStateDict(st.SafetensorsSource(by_key)),
        metadata=metadata,
        shard_of=dict(weight_map),
        index_metadata=index_meta,
        input_files=[index_path, *(f.path for f in files.values())],
    )


def output_format(output: Path | None, to: str | None, checkpoint: Checkpoint) -> Format:
    """The output format: ``--to`` wins, then ``-o``'s suffix, then the input's format."""
    if to is not None:
        if to not in ("pt", "safetensors"):
            raise InputError.template("{-to=to}: use pt or safetensors (or onnx with {-model})",
                                      to=to)
        return to  # type: ignore[return-value]
    if output is not None:
        name = output.name.lower()
        if name.endswith((".safetensors", INDEX_SUFFIX)):
            return "safetensors"
        if name.endswith(PT_SUFFIXES):
            return "pt"
        if name.endswith(NEMO_SUFFIX):
            if checkpoint.archive is None:
                raise InputError.template(
                    "{output}: a .nemo output copies the other members of a .nemo input, and "
                    "{path} is not one; end the name in .pt or .safetensors",
                    output=output, path=checkpoint.path)
            return "nemo"
        raise InputError.template(
            "{output}: cannot tell the output format from this name; end it in .pt or "
            ".safetensors, or pass {-to}", output=output)
    # A .nemo input gives a plain .pt (its model_weights.ckpt, converted) unless -o says .nemo.
    return "pt" if checkpoint.is_pickle else "safetensors"


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (INDEX_SUFFIX, ".index.json", ".safetensors", *PT_SUFFIXES, NEMO_SUFFIX):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def default_output(checkpoint: Checkpoint, action: str, fmt: Format) -> Path:
    """``<stem>.<action>.<ext>`` next to the input (sharded in, sharded out)."""
    stem = f"{_stem(checkpoint.path)}.{action}"
    if fmt == "nemo":
        return checkpoint.path.with_name(stem + NEMO_SUFFIX)
    if fmt == "pt":
        # An extension-less input (HiFi-GAN's g_02500000) gets .pt, like a .nemo's weights.
        suffix = checkpoint.path.suffix if checkpoint.format == "pt" else ""
        suffix = suffix if suffix.lower() in PT_SUFFIXES else ".pt"
        return checkpoint.path.with_name(stem + suffix)
    if checkpoint.format == "sharded":
        return checkpoint.path.with_name(stem + INDEX_SUFFIX)
    return checkpoint.path.with_name(stem + ".safetensors")


def write_checkpoint(
    checkpoint: Checkpoint,
    plan: list[PlannedTensor],
    output: Path,
    *,
    fmt: Format,
    force: bool = False,
    on_tensor: Callable[[str], None] | None = None,
    inputs: Sequence[Path] = (),
) -> int:
    """Write ``plan`` as a checkpoint like ``checkpoint`` (container, metadata, shards kept).

    Returns the number of bytes written. Never touches the input files: neither the
    checkpoint's own nor ``inputs`` (other files the caller read, e.g. a template), even with
    ``force``.
    """
    output = Path(output)
    inputs = [*checkpoint.input_files, *inputs]
    check_output(output, force=force, inputs=inputs)
    source = checkpoint.source
    if fmt in ("pt", "nemo"):
        require_torch(f"writing {output}")
        state = OrderedDict()
        for item in plan:
            if item.produce is not None:
                state[item.key] = numpy_to_tensor(item.produce())
            elif isinstance(source, DictSource):
                state[item.key] = source.load_original(item.source_key)  # same object, any dtype
            else:
                state[item.key] = numpy_to_tensor(source.load(item.source_key))
            if on_tensor:
                on_tensor(item.key)
        original = checkpoint.state_dict
        if hasattr(original, "_metadata"):
            state._metadata = original._metadata  # type: ignore[attr-defined]  # module versions
        container = (
            tp.replace_at(checkpoint.container, checkpoint.key_path, state)
            if checkpoint.is_pickle
            else state
        )
        # Objects read as placeholders are not the real objects: writing them back would
        # need their classes (running the file's code) or a byte-for-byte copy of their
        # pickle, which torch.save cannot splice in. They are left out and named.
        container, not_loaded = tp.drop_placeholders(container, checkpoint.key_path)
        if not_loaded:
            warnings.warn(
                f"{output}: container entries {', '.join(not_loaded)} are not written: they "
                "hold objects that were not loaded (only the file's own code could rebuild them)",
                WeightNormWarning,
                stacklevel=2,
            )
        with atomic_file(output, force=force) as handle:
            if fmt == "nemo" and checkpoint.archive is not None:
                nemo.write_nemo(checkpoint.archive, handle,
                                lambda stream: tp.save_pickle(container, stream))
            else:
                tp.save_pickle(container, handle)
            size = handle.tell()
        return size
    metadata = checkpoint.metadata
    if checkpoint.is_pickle:
        dropped = [
            e["key"]
            for e in tp.describe_layout(checkpoint.container, checkpoint.key_path)
            if not e["selected"]
        ]
        if dropped:
            warnings.warn(
                f"{output}: safetensors holds tensors only; container entries "
                f"{', '.join(dropped)} are not written (use a .pt output to keep them)",
                WeightNormWarning,
                stacklevel=2,
            )
        metadata = {"format": "pt"}
    if output.name.lower().endswith(INDEX_SUFFIX):
        return _write_sharded(checkpoint, plan, output, metadata, on_tensor, force=force,
                              inputs=inputs)
    with atomic_file(output, force=force) as handle:
        return st.write_safetensors(handle, plan, source, metadata=metadata, on_tensor=on_tensor)


def _write_sharded(
    checkpoint: Checkpoint,
    plan: list[PlannedTensor],
    index_path: Path,
    metadata: dict[str, str] | None,
    on_tensor: Callable[[str], None] | None,
    *,
    force: bool,
    inputs: Sequence[Path],
) -> int:
    shard_names = list(dict.fromkeys(checkpoint.shard_of.values())) or ["model.safetensors"]
    stem = _stem(index_path)
    count = len(shard_names)
    new_names = {
        old: f"{stem}-{i + 1:05d}-of-{count:05d}.safetensors" for i, old in enumerate(shard_names)
    }
    groups: dict[str, list[PlannedTensor]] = {n: [] for n in new_names.values()}
    for item in plan:
        old = checkpoint.shard_of.get(item.source_key, shard_names[0])
        groups[new_names[old]].append(item)
    outputs = [index_path.with_name(n) for n in groups]
    for path in outputs:
        check_output(path, force=force, inputs=inputs)
    total = 0
    tensor_bytes = 0
    with atomic_files([*outputs, index_path], force=force, layout=ShardIndexLayout(),
                      keep=inputs) as temps:
        for tmp, items in zip(temps[:-1], groups.values(), strict=True):  # last: index
            with open(tmp, "wb") as handle, name_write_errors(tmp):
                total += st.write_safetensors(
                    handle, items, checkpoint.source, metadata=metadata, on_tensor=on_tensor
                )
            tensor_bytes += sum(i.info.nbytes for i in items)
        index = {
            "metadata": _index_metadata(checkpoint.index_metadata, plan, tensor_bytes),
            "weight_map": {item.key: name for name, items in groups.items() for item in items},
        }
        temps[-1].write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return total


class ShardIndexLayout:
    """A sharded safetensors checkpoint as an output set (:class:`~.atomic.SetLayout`): the
    index is the entry, the files its ``weight_map`` names are the payload."""

    def payloads(self, entry: Path) -> list[str]:
        with open(entry, encoding="utf-8") as handle:
            weight_map = json.load(handle).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{entry}: no weight_map")
        return [name for name in weight_map.values() if isinstance(name, str)]

    def owns(self, entry: Path, name: str) -> bool:
        # The names _write_sharded gives: <stem>-00001-of-00003.safetensors
        return re.fullmatch(rf"{re.escape(_stem(entry))}-\d{{5}}-of-\d{{5}}\.safetensors",
                            name) is not None

    def repoint(self, entry: Path, renames: Mapping[str, str], out: Path) -> None:
        with open(entry, encoding="utf-8") as handle:
            index = json.load(handle)
        index["weight_map"] = {key: renames.get(name, name)
                               for key, name in index["weight_map"].items()}
        out.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def _index_metadata(original: Mapping[str, Any] | None, plan: list[PlannedTensor],
                    tensor_bytes: int) -> dict[str, Any]:
    """The input index's metadata with its totals made true for the output: ``total_size``
    always, ``total_parameters`` (newer transformers write it) when the input had it."""
    metadata = {**(original or {}), "total_size": tensor_bytes}
    if "total_parameters" in metadata:
        metadata["total_parameters"] = sum(item.info.numel for item in plan)
    return metadata


def save_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
    output: Path | str,
    *,
    fmt: Format | None = None,
    metadata: dict[str, str] | None = None,
    force: bool = False,
) -> int:
    """Write a plain state dict to ``output`` (format from ``fmt`` or the suffix), atomically."""
    output = Path(output)
    source = source_of(state_dict)
    plan = [PlannedTensor(k, source.info(k), k) for k in source.keys()]
    if fmt is None:
        fmt = "safetensors" if output.name.lower().endswith(".safetensors") else "pt"
    # The state dict is its own container (key path ()); metadata only applies to safetensors.
    holder = Checkpoint(output, fmt, state_dict, container=state_dict, metadata=metadata)
    return write_checkpoint(holder, plan, output, fmt=fmt, force=force)
