"""Reading ONNX files (and the sources writers copy from) without holding their tensor data
in memory.

:func:`load_model` scans the protobuf wire format of the ``.onnx`` file itself and parses
everything *except* the bytes of initializers into an ``onnx.ModelProto`` (the "skeleton"). Each
initializer's bytes stay where they are, in the ``.onnx`` file (inline ``raw_data``) or in an
external data file, and are recorded as a :class:`FileRange`. Folding then reads only the tensors
it changes, one at a time, and :func:`write_model` streams every other tensor from its source file
to the output with ``copy_file_range`` (never through Python memory). Peak memory is the skeleton
plus the working set of one fold, whatever the model's size, and the output's serialization is the
one ``onnx.save`` would produce (fields in field-number order).

Writing is in :mod:`.protowrite`; atomic publishing in :mod:`wnconvert.formats.atomic`.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError

if TYPE_CHECKING:
    import numpy as np
    import onnx


# Protobuf field numbers (onnx.proto) of the fields the scanner and writer treat specially.
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_RAW_DATA = 9
_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32 = 0, 1, 2, 5

# A serialized ModelProto must stay below protobuf's 2 GiB limit; keep a margin for the graph.
PROTOBUF_LIMIT = 2**31 - 1
_INLINE_MARGIN = 64 * 2**20
# Tensors smaller than this stay inline when a too-large model is moved to external data
# (onnx.save uses the same default threshold).
_EXTERNAL_THRESHOLD = 1024
_MAX_ALIGNMENT = 4096


@dataclass(frozen=True)
class FileRange:
    """Where an initializer's bytes are: ``length`` bytes at ``offset`` of ``path``."""

    path: Path
    offset: int
    length: int
    external: bool  # stored in an external data file (not inline in the .onnx file)

    @property
    def nbytes(self) -> int:
        return self.length

    def read(self) -> np.ndarray:
        """The bytes as a read-only uint8 array mapped from the file (no copy).

        Mapping instead of reading saves a copy of every folded tensor, and its pages are
        the page cache's: they are dropped, not swapped, under memory pressure.
        """
        import numpy as np

        if self.length == 0:
            return np.zeros(0, dtype=np.uint8)
        if self.offset + self.length > self.path.stat().st_size:
            raise InputError(
                f"{self.path}: ends before byte {self.offset + self.length}; the file is "
                "truncated (copy it again)"
            )
        return np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.offset,
                         shape=(self.length,))


@dataclass
class Computed:
    """An initializer whose bytes are computed when the output is written (a folded weight)."""

    nbytes: int
    external: bool
    compute: Callable[[], np.ndarray]  # returns a C-contiguous array of exactly nbytes bytes


Source = FileRange | Computed


@dataclass
class LazyModel:
    """An ONNX model whose initializer bytes are read on demand.

    ``proto`` is the whole model except the bytes of the initializers listed in ``sources``
    (their TensorProtos have no ``raw_data`` and keep their original external-data fields, which
    :func:`write_model` replaces). Initializers stored in typed fields (``float_data``, ...) are
    complete in ``proto`` and have no entry in ``sources``.
    """

    path: Path
    proto: onnx.ModelProto
    sources: dict[str, Source]
    alignment: int  # offset alignment to use for an external data file
    data_files: tuple[Path, ...] = field(default=())  # the external data files the model uses
    # Model-local functions inlined into ``proto`` because they compute weight norm
    # (``domain.name``; see :mod:`.hidden`).
    inlined_functions: tuple[str, ...] = field(default=())

    @property
    def has_external_data(self) -> bool:
        return bool(self.data_files)

    def tensor_nbytes(self) -> int:
        return sum(source.nbytes for source in self.sources.values())


def snapshot(model: LazyModel) -> LazyModel:
    """A copy of ``model`` that edits of ``model`` (a fold) leave alone: its own skeleton and
    source map. Tensor bytes are not copied; both still read them from the files."""
    import onnx

    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    return LazyModel(path=model.path, proto=proto, sources=dict(model.sources),
                     alignment=model.alignment, data_files=model.data_files,
                     inlined_functions=model.inlined_functions)


# --------------------------------------------------------------------------------------------
# Reading


class _Malformed(Exception):
    """The bytes are not a well-formed protobuf message."""


def _varint(buf: mmap.mmap | bytes, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _skip(buf: mmap.mmap | bytes, pos: int, end: int, wire_type: int) -> tuple[int, int]:
    """Skip one field's payload; return (payload start, position after it)."""
    if wire_type == _WIRE_VARINT:
        return pos, _varint(buf, pos, end)[1]
    if wire_type == _WIRE_I64:
        after = pos + 8
    elif wire_type == _WIRE_I32:
        after = pos + 4
    elif wire_type == _WIRE_LEN:
        length, pos = _varint(buf, pos, end)
        after = pos + length
    else:  # groups (3, 4) are not used by onnx.proto
        raise _Malformed
    if after > end:
        raise _Malformed
    return pos, after


def _scan_tensor(
    buf: mmap.mmap, start: int, end: int
) -> tuple[bytes, tuple[int, int] | None]:
    """TensorProto bytes without ``raw_data``, and (offset, length) of raw_data if present."""
    kept = bytearray()
    raw: tuple[int, int] | None = None
    pos = start
    while pos < end:
        field_start = pos
        tag, pos = _varint(buf, pos, end)
        payload, pos = _skip(buf, pos, end, tag & 7)
        if tag >> 3 == _TENSOR_RAW_DATA and tag & 7 == _WIRE_LEN:
            # The last occurrence wins for a bytes field (protobuf merge rules).
            raw = (payload, pos - payload)
        else:
            kept += buf[field_start:pos]
    return bytes(kept), raw


def load_model(path: Path) -> LazyModel:
    """Read ``path`` without loading initializer data; raise :class:`InputError` if unreadable."""
    import onnx
    from google.protobuf.message import DecodeError

    from ..formats.files import require_regular_file

    path = Path(path)
    size = require_regular_file(path, what="ONNX model").st_size  # a FIFO would block
    if size == 0:
        raise InputError(f"{path}: the file is empty; export the model again")
    model_bytes = bytearray()
    graph_bytes = bytearray()
    tensors: list[tuple[bytes, tuple[int, int] | None]] = []
    try:
        with open(path, "rb") as handle, mmap.mmap(
            handle.fileno(), 0, access=mmap.ACCESS_READ
        ) as buf:
            pos = 0
            has_graph = False
            while pos < size:
                field_start = pos
                tag, pos = _varint(buf, pos, size)
                payload, pos = _skip(buf, pos, size, tag & 7)
                if tag >> 3 == _MODEL_GRAPH and tag & 7 == _WIRE_LEN:
                    has_graph = True
                    _scan_graph(buf, payload, pos, graph_bytes, tensors)
                else:
                    model_bytes += buf[field_start:pos]
            proto = onnx.ModelProto.FromString(bytes(model_bytes))
            if has_graph:
                proto.graph.MergeFromString(bytes(graph_bytes))
            skeletons = [onnx.TensorProto.FromString(blob) for blob, _ in tensors]
    except (_Malformed, DecodeError, RecursionError):
        raise InputError(
            f"{path}: not a valid ONNX model (the protobuf data is malformed or truncated); "
            "check that the file is an .onnx model and was copied completely"
        ) from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror}); check permissions") from None
    if proto.ir_version <= 0 or not proto.HasField("graph"):
        raise InputError(
            f"{path}: not an ONNX model (no IR version or graph); give an .onnx file"
        )
    proto.graph.initializer.extend(skeletons)
    _require_utf8(path, proto)
    sources, data_files = _tensor_sources(path, proto, [raw for _, raw in tensors])
    _inline_nested_external_data(path, proto)
    return LazyModel(
        path=path,
        proto=proto,
        sources=sources,
        alignment=_alignment(sources),
        data_files=data_files,
    )


def _require_utf8(path: Path, proto: onnx.ModelProto) -> None:
    """Refuse a model with a string field that is not UTF-8.

    ONNX strings (names, op types, domains, metadata) are UTF-8, but ``string`` fields of the
    proto2 schema are not validated when parsed: protobuf hands the raw bytes over instead of a
    ``str``, and ``onnx.checker`` lets them through. Any name could be one, so every string
    field is looked at once, here (the skeleton holds no tensor data; that is ``bytes``).
    """
    from google.protobuf.descriptor import FieldDescriptor

    string, message = FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE
    pending: list[tuple[str, Any]] = [("model", proto)]
    while pending:
        where, node = pending.pop()
        for descriptor, value in node.ListFields():
            if descriptor.type not in (string, message):
                continue
            items = list(enumerate(value)) if _is_repeated(descriptor) else [(None, value)]
            for index, item in items:
                here = f"{where}.{descriptor.name}" + ("" if index is None else f"[{index}]")
                if descriptor.type == message:
                    pending.append((here, item))
                elif not isinstance(item, str):
                    raise InputError(
                        f"{path}: {here} is not valid UTF-8 ({bytes(item)[:40]!r}); ONNX "
                        "stores every name and string as UTF-8: export the model again or fix "
                        "the tool that wrote it"
                    )


def _is_repeated(descriptor: Any) -> bool:
    # protobuf 6 added ``is_repeated`` and protobuf 7 removed ``label``.
    if hasattr(descriptor, "is_repeated"):
        return bool(descriptor.is_repeated)
    return bool(descriptor.label == descriptor.LABEL_REPEATED)


def _scan_graph(
    buf: mmap.mmap,
    start: int,
    end: int,
    graph_bytes: bytearray,
    tensors: list[tuple[bytes, tuple[int, int] | None]],
) -> None:
    pos = start
    while pos < end:
        field_start = pos
        tag, pos = _varint(buf, pos, end)
        payload, pos = _skip(buf, pos, end, tag & 7)
        if tag >> 3 == _GRAPH_INITIALIZER and tag & 7 == _WIRE_LEN:
            tensors.append(_scan_tensor(buf, payload, pos))
        else:
            graph_bytes += buf[field_start:pos]


def _tensor_sources(
    path: Path, proto: onnx.ModelProto, raws: list[tuple[int, int] | None]
) -> tuple[dict[str, Source], tuple[Path, ...]]:
    import onnx

    sources: dict[str, Source] = {}
    data_files: dict[Path, None] = {}
    for tensor, raw in zip(proto.graph.initializer, raws, strict=True):
        if tensor.name in sources:
            raise InputError(
                f"{path}: two initializers are named {tensor.name!r}; the model is invalid "
                "(export it again)"
            )
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            source = _external_range(path, tensor)
            data_files[source.path] = None
        elif raw is not None:
            source = FileRange(path, raw[0], raw[1], external=False)
        else:
            continue  # typed fields (float_data, ...): complete in the skeleton
        sources[tensor.name] = source
    return sources, tuple(data_files)


def _external_range(path: Path, tensor: onnx.TensorProto, *, what: str | None = None
                    ) -> FileRange:
    what = what or f"initializer {tensor.name!r}"
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    data_path = _resolve_location(path, what, location)
    try:
        # As onnx.load reads them: a key that is present must be an integer ("" is not).
        offset = int(info["offset"]) if "offset" in info else 0
        file_size = data_path.stat().st_size
        length = int(info["length"]) if "length" in info else file_size - offset
    except ValueError:
        raise InputError(
            f"{path}: {what} has a malformed external-data offset or "
            "length; export the model again"
        ) from None
    if offset < 0 or length < 0 or offset + length > file_size:
        raise InputError(
            f"{data_path}: too short for {what} (needs bytes "
            f"{offset}..{offset + length}, has {file_size}); the data file is truncated or "
            "belongs to another model"
        )
    return FileRange(data_path, offset, length, external=True)


def _resolve_location(path: Path, what: str, location: str) -> Path:
    base = path.resolve().parent
    if "\0" in location:
        # The OS cannot name such a file (pathlib raises ValueError): a corrupt or crafted model.
        raise InputError(
            f"{path}: {what} has an external-data location with a NUL byte "
            f"({location!r}); the model is corrupt (re-save it)"
        )
    if not location or Path(location).is_absolute():
        raise InputError(
            f"{path}: {what} has external-data location {location!r}; only paths "
            "relative to the model's folder are accepted (re-save the model)"
        )
    data_path = (base / location).resolve()
    if base not in data_path.parents:
        raise InputError(
            f"{path}: {what} points outside the model's folder ({location!r}); "
            "refusing to read it (re-save the model with its data next to it)"
        )
    if not data_path.is_file():
        raise InputError(
            f"{path}: external data file {location!r} is missing; keep it next to the model "
            f"(looked for {data_path})"
        )
    return data_path


def _inline_nested_external_data(path: Path, proto: onnx.ModelProto) -> None:
    """Load the (rare, small) external tensors that are not main-graph initializers into the
    skeleton: initializers of If/Loop/Scan bodies, and tensor attributes (``Constant`` values)
    anywhere, function bodies included.

    Their external-data references would point into the input's data file, which the output
    does not share, so they are written inline. Each is checked as a main-graph initializer is
    (location inside the model's folder, bytes inside the file, length matching the declared
    shape and type) *before* it is read, and all of them together must fit in a protobuf
    message, where they end up.
    """
    import onnx

    budget = PROTOBUF_LIMIT - _INLINE_MARGIN
    total = 0
    for where, tensor in _nested_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        what = f"tensor {tensor.name!r} ({where})" if tensor.name else f"tensor {where}"
        source = _external_range(path, tensor, what=what)
        check_length(path, tensor, source.length, what=what)
        total += source.length
        if total > budget:
            raise InputError(
                f"{path}: {what} brings the external data of subgraphs and constants to "
                f"{total:,} bytes, more than fits inline in an ONNX file ({budget:,}); only "
                "main-graph initializers can stay external: export the model with large "
                "weights as main-graph initializers"
            )
        tensor.raw_data = source.read().tobytes()
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT


def _nested_tensors(proto: onnx.ModelProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    """Every TensorProto in the model but the main graph's initializers, with where it is
    (``model.graph.node[3].attribute[0].t``). Iterative: deep nesting cannot exhaust Python's
    recursion limit."""
    from google.protobuf.descriptor import FieldDescriptor

    message = FieldDescriptor.TYPE_MESSAGE
    # (where, message, is the main graph): the main graph's initializers are read lazily.
    pending: list[tuple[str, Any, bool]] = [("model", proto, False)]
    while pending:
        where, node, is_main = pending.pop()
        if node.DESCRIPTOR.full_name == "onnx.TensorProto":
            yield where, node
            continue  # a tensor holds no tensors
        for descriptor, value in node.ListFields():
            if descriptor.type != message or (is_main and descriptor.name == "initializer"):
                continue
            items = list(enumerate(value)) if _is_repeated(descriptor) else [(None, value)]
            for index, item in items:
                here = f"{where}.{descriptor.name}" + ("" if index is None else f"[{index}]")
                pending.append((here, item, where == "model" and descriptor.name == "graph"))


def _expected_nbytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes of raw data the shape and type need (None: a type without fixed-size raw data)."""
    import onnx

    count = 1
    for size in tensor.dims:
        count *= size
    name = onnx.TensorProto.DataType.Name(tensor.data_type) if tensor.data_type in (
        onnx.TensorProto.DataType.values()) else ""
    if name in ("STRING", "UNDEFINED", ""):
        return None
    bits = {"INT4": 4, "UINT4": 4, "FLOAT4E2M1": 4, "INT2": 2, "UINT2": 2}.get(name)
    if bits is not None:
        return (count * bits + 7) // 8
    from onnx import helper

    try:
        return count * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return None


def check_length(path: Path, tensor: onnx.TensorProto, length: int, *,
                 what: str | None = None) -> None:
    """Raise :class:`InputError` unless ``length`` bytes of raw data are what ``tensor``'s
    shape and type declare (``what`` names it in messages; default: the initializer's name)."""
    what = what or f"initializer {tensor.name!r}"
    if any(size < 0 for size in tensor.dims):
        raise InputError(
            f"{path}: {what} has a negative dimension {list(tensor.dims)}; "
            "the model is invalid (export it again)"
        )
    expected = _expected_nbytes(tensor)
    if expected is not None and length != expected:
        where = "external data" if tensor.data_location == 1 else "raw_data"
        kind = "truncated" if length < expected else "too long"
        raise InputError(
            f"{path}: {what} has {length} bytes of {where} for shape "
            f"{list(tensor.dims)} ({expected} needed); the model is corrupt ({kind}: export or "
            "copy it again)"
        )


def _alignment(sources: dict[str, Source]) -> int:
    """The largest power of two (up to 4096) dividing every external offset of the input.

    Keeps the input's alignment (ORT memory-maps aligned external data); 4096 when the input
    had no external data.
    """
    alignment = _MAX_ALIGNMENT
    for source in sources.values():
        if isinstance(source, FileRange) and source.external:
            while alignment > 1 and source.offset % alignment:
                alignment //= 2
    return alignment


def read_initializer(model: LazyModel, tensor: onnx.TensorProto) -> np.ndarray:
    """A main-graph initializer's data as a numpy array of its ONNX dtype and shape.

    ``tensor`` is the skeleton in ``model.proto.graph.initializer``. bfloat16 comes back as
    uint16 bits (numpy has no bfloat16).
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    source = model.sources.get(tensor.name)
    if source is None:
        return numpy_helper.to_array(tensor)
    if isinstance(source, Computed):
        raise ValueError(f"initializer {tensor.name!r} is computed at write time")
    np_dtype = _storage_dtype(tensor.data_type)
    if np_dtype is None:
        # Exotic storage (strings, sub-byte types): let onnx decode a complete copy.
        full = onnx.TensorProto()
        full.CopyFrom(tensor)
        full.ClearField("external_data")
        full.data_location = onnx.TensorProto.DEFAULT
        full.raw_data = source.read().tobytes()
        return numpy_helper.to_array(full)
    shape = tuple(tensor.dims)
    count = int(np.prod(shape, dtype=np.int64))
    if source.length != count * np_dtype.itemsize:
        raise InputError(
            f"{model.path}: initializer {tensor.name!r} has {source.length} bytes of data for "
            f"shape {list(shape)}; the model is corrupt (export it again)"
        )
    data = source.read()
    if data.ctypes.data % np_dtype.alignment:
        data = data.copy()  # inline raw_data may sit at any offset; numpy is slow unaligned
    data = data.view(np_dtype)
    if not np.little_endian:  # ONNX raw data is little-endian
        data = data.byteswap()
    return data.reshape(shape)


def _storage_dtype(data_type: int) -> np.dtype | None:
    import numpy as np

    from ..dtypes import from_onnx_code, numpy_dtype

    name = from_onnx_code(data_type)
    if name is None or name.startswith("complex"):
        return None
    # bfloat16 and float8 are stored as raw 16/8-bit words in raw_data.
    if name == "bfloat16":
        return np.dtype(np.uint16)
    if name.startswith("float8"):
        return np.dtype(np.uint8)
    return numpy_dtype(name)
