"""Reading and writing ONNX files without holding their tensor data in memory.

:func:`load_model` scans the protobuf wire format of the ``.onnx`` file itself and parses
everything *except* the bytes of initializers into an ``onnx.ModelProto`` (the "skeleton"). Each
initializer's bytes stay where they are, in the ``.onnx`` file (inline ``raw_data``) or in an
external data file, and are recorded as a :class:`FileRange`. Folding then reads only the tensors
it changes, one at a time, and :func:`write_model` streams every other tensor from its source file
to the output with ``copy_file_range`` (never through Python memory). Peak memory is the skeleton
plus the working set of one fold, whatever the model's size, and the output's serialization is the
one ``onnx.save`` would produce (fields in field-number order).

(Why one module of ~680 lines: the reader and the writer share the wire-format scanner, the
:class:`FileRange`/:class:`Computed` sources and the field layout; the atomic publishing itself
lives in :mod:`wnconvert.formats.atomic`.)
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..errors import InputError
from .walk import subgraphs

if TYPE_CHECKING:
    import numpy as np
    import onnx

    from ..formats.atomic import Staging

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

    @property
    def has_external_data(self) -> bool:
        return bool(self.data_files)

    def tensor_nbytes(self) -> int:
        return sum(source.nbytes for source in self.sources.values())


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
    sources, data_files = _tensor_sources(path, proto, [raw for _, raw in tensors])
    _inline_subgraph_external_data(path, proto)
    return LazyModel(
        path=path,
        proto=proto,
        sources=sources,
        alignment=_alignment(sources),
        data_files=data_files,
    )


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


def _external_range(path: Path, tensor: onnx.TensorProto) -> FileRange:
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    data_path = _resolve_location(path, tensor.name, location)
    try:
        offset = int(info.get("offset", 0) or 0)
        file_size = data_path.stat().st_size
        length = int(info["length"]) if info.get("length") else file_size - offset
    except ValueError:
        raise InputError(
            f"{path}: initializer {tensor.name!r} has a malformed external-data offset or "
            "length; export the model again"
        ) from None
    if offset < 0 or length < 0 or offset + length > file_size:
        raise InputError(
            f"{data_path}: too short for initializer {tensor.name!r} (needs bytes "
            f"{offset}..{offset + length}, has {file_size}); the data file is truncated or "
            "belongs to another model"
        )
    return FileRange(data_path, offset, length, external=True)


def _resolve_location(path: Path, name: str, location: str) -> Path:
    base = path.resolve().parent
    if "\0" in location:
        # The OS cannot name such a file (pathlib raises ValueError): a corrupt or crafted model.
        raise InputError(
            f"{path}: initializer {name!r} has an external-data location with a NUL byte "
            f"({location!r}); the model is corrupt (re-save it)"
        )
    if not location or Path(location).is_absolute():
        raise InputError(
            f"{path}: initializer {name!r} has external-data location {location!r}; only paths "
            "relative to the model's folder are accepted (re-save the model)"
        )
    data_path = (base / location).resolve()
    if base not in data_path.parents:
        raise InputError(
            f"{path}: initializer {name!r} points outside the model's folder ({location!r}); "
            "refusing to read it (re-save the model with its data next to it)"
        )
    if not data_path.is_file():
        raise InputError(
            f"{path}: external data file {location!r} is missing; keep it next to the model "
            f"(looked for {data_path})"
        )
    return data_path


def _inline_subgraph_external_data(path: Path, proto: onnx.ModelProto) -> None:
    """Load the (rare, small) external tensors of If/Loop bodies into the skeleton.

    Their external-data references would point into the input's data file, which the output
    does not share, so they are written inline.
    """
    import onnx

    for graph in subgraphs(proto.graph):
        for tensor in graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                tensor.raw_data = _external_range(path, tensor).read().tobytes()
                del tensor.external_data[:]
                tensor.data_location = onnx.TensorProto.DEFAULT


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


# --------------------------------------------------------------------------------------------
# Writing


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _len_header(field_number: int, length: int) -> bytes:
    return _encode_varint(field_number << 3 | _WIRE_LEN) + _encode_varint(length)


def _split_at_field(blob: bytes, field_number: int) -> tuple[bytes, bytes]:
    """Split serialized fields (in field-number order) before the first field > field_number."""
    pos = 0
    end = len(blob)
    while pos < end:
        tag, after_tag = _varint(blob, pos, end)
        if tag >> 3 > field_number:
            return blob[:pos], blob[pos:]
        _, pos = _skip(blob, after_tag, end, tag & 7)
    return blob, b""


class _Sink:
    """Sequential writer: small pieces are buffered, tensor bytes copied file-to-file."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self._buffer = bytearray()
        self.position = 0

    def write(self, data: bytes | memoryview) -> None:
        size = len(data) if isinstance(data, bytes) else data.nbytes
        if size >= _EXTERNAL_THRESHOLD * 64:
            self.flush()
            self._handle.write(data)
        else:
            self._buffer += data
        self.position += size

    def flush(self) -> None:
        if self._buffer:
            self._handle.write(self._buffer)
            self._buffer.clear()
        self._handle.flush()

    def copy(self, source: FileRange) -> None:
        from ..formats.atomic import copy_range

        self.flush()
        start = self._handle.tell()
        copy_range(source.path, source.offset, source.length, self._handle.fileno(), start)
        self._handle.seek(start + source.length)  # the copy does not move the file position
        self.position += source.length

    def pad_to(self, alignment: int) -> None:
        if alignment > 1 and self.position % alignment:
            self.write(b"\0" * (alignment - self.position % alignment))


def _write_source(sink: _Sink, source: Source | None, tensor: onnx.TensorProto) -> None:
    if isinstance(source, FileRange):
        sink.copy(source)
        return
    assert isinstance(source, Computed)
    array = source.compute()
    view = memoryview(array.reshape(-1).view("uint8"))  # type: ignore[arg-type]  # numpy buffer
    if view.nbytes != source.nbytes:
        raise AssertionError(
            f"{tensor.name}: computed {view.nbytes} bytes, planned {source.nbytes}"
        )
    sink.write(view)


def plan_external(
    model: LazyModel, *, inline_limit: int = PROTOBUF_LIMIT - _INLINE_MARGIN
) -> dict[str, bool]:
    """For each initializer with a source: does it go to the external data file?

    The input's layout is kept; only when the inline part would pass protobuf's 2 GiB limit do
    all initializers of 1 KB or more move out.
    """
    names = [t.name for t in model.proto.graph.initializer if t.name in model.sources]
    external = {name: model.sources[name].external for name in names}
    inline_bytes = sum(model.sources[n].nbytes for n, out in external.items() if not out)
    if inline_bytes > inline_limit:
        for name in names:
            if model.sources[name].nbytes >= _EXTERNAL_THRESHOLD:
                external[name] = True
    return external


@dataclass(frozen=True)
class WrittenFiles:
    model: Path
    data: Path | None


def data_file_name(output: Path) -> str:
    """The external data file an output gets: ``<output name>.data`` next to it."""
    return f"{output.name}.data"


def write_model(
    model: LazyModel,
    output: Path,
    *,
    data_name: str | None = None,
    inline_limit: int = PROTOBUF_LIMIT - _INLINE_MARGIN,
    on_tensor: Callable[[str, int, int], None] | None = None,
) -> WrittenFiles:
    """Write ``model`` to ``output`` (not atomic: see :class:`StagedOutput`).

    Initializers that came from external data (and computed ones that replace one) go to the
    data file ``data_name`` next to ``output``; inline ones stay inline. If the inline part would
    pass protobuf's 2 GiB limit, every initializer of 1 KB or more moves to the data file.
    """
    import onnx

    output = Path(output)
    data_name = data_name or data_file_name(output)
    graph = model.proto.graph
    initializers = list(graph.initializer)
    external = plan_external(model, inline_limit=inline_limit)
    placements: dict[str, tuple[int, int]] = {}
    data_path: Path | None = None
    total = len(external)
    done = 0
    if any(external.values()):
        data_path = output.parent / data_name
        with open(data_path, "wb") as handle:
            sink = _Sink(handle)
            for tensor in initializers:
                if not external.get(tensor.name):
                    continue
                sink.pad_to(model.alignment)
                offset = sink.position
                _write_source(sink, model.sources[tensor.name], tensor)
                placements[tensor.name] = (offset, sink.position - offset)
                done += 1
                if on_tensor is not None:
                    on_tensor(tensor.name, done, total)
            sink.flush()  # no fsync: the rename into place is what protects the output

    shell = onnx.ModelProto()
    shell.CopyFrom(model.proto)
    shell.ClearField("graph")
    model_head, model_tail = _split_at_field(shell.SerializeToString(), _MODEL_GRAPH)
    graph_shell = onnx.GraphProto()
    graph_shell.CopyFrom(graph)
    del graph_shell.initializer[:]
    graph_head, graph_tail = _split_at_field(graph_shell.SerializeToString(), _GRAPH_INITIALIZER)

    pieces: list[tuple[bytes, Source | None, bytes, onnx.TensorProto]] = []
    graph_length = len(graph_head) + len(graph_tail)
    for tensor in initializers:
        source = model.sources.get(tensor.name)
        template = onnx.TensorProto()
        template.CopyFrom(tensor)
        if source is None:
            blob = template.SerializeToString()
            pieces.append((_len_header(_GRAPH_INITIALIZER, len(blob)) + blob, None, b"", tensor))
            graph_length += len(pieces[-1][0])
            continue
        template.ClearField("raw_data")
        template.ClearField("external_data")
        template.ClearField("data_location")
        if external[tensor.name]:
            offset, length = placements[tensor.name]
            template.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", offset), ("length", length)):
                entry = template.external_data.add()
                entry.key = key
                entry.value = str(value)
            blob = template.SerializeToString()
            pieces.append((_len_header(_GRAPH_INITIALIZER, len(blob)) + blob, None, b"", tensor))
            graph_length += len(pieces[-1][0])
            continue
        head, tail = _split_at_field(template.SerializeToString(), _TENSOR_RAW_DATA)
        raw_header = _len_header(_TENSOR_RAW_DATA, source.nbytes)
        size = len(head) + len(raw_header) + source.nbytes + len(tail)
        pieces.append((_len_header(_GRAPH_INITIALIZER, size) + head + raw_header, source, tail,
                       tensor))
        graph_length += size + len(_len_header(_GRAPH_INITIALIZER, size))
    with open(output, "wb") as handle:
        sink = _Sink(handle)
        sink.write(model_head)
        sink.write(_len_header(_MODEL_GRAPH, graph_length))
        sink.write(graph_head)
        for prefix, source, suffix, tensor in pieces:
            sink.write(prefix)
            if source is not None:
                _write_source(sink, source, tensor)
                done += 1
                if on_tensor is not None:
                    on_tensor(tensor.name, done, total)
            sink.write(suffix)
        sink.write(graph_tail)
        sink.write(model_tail)
        sink.flush()
    return WrittenFiles(model=output, data=data_path)


# --------------------------------------------------------------------------------------------
# Atomic output


class StagedOutput:
    """Write an output (and its data file) into a private folder, then move it into place.

    ``path`` is where to write; :meth:`commit` publishes the files next to ``final`` (data file
    first, so the model never points at a missing file; see :class:`~wnconvert.formats.atomic.
    Staging`: without ``force`` a file that appeared meanwhile is kept and nothing is
    published). Leaving the ``with`` block without committing deletes everything written, so an
    interrupted or failed run leaves nothing half-written behind. Existing outputs need
    ``force``; inputs (the model and its data files) are never overwritten.
    """

    def __init__(
        self,
        final: Path,
        *,
        force: bool,
        inputs: tuple[Path, ...] = (),
        with_data: bool = False,
    ) -> None:
        self.final = Path(final)
        self.force = force
        self.inputs = inputs
        self.with_data = with_data
        self._staging: Staging | None = None

    @property
    def data_path(self) -> Path:
        return self.final.parent / data_file_name(self.final)

    def __enter__(self) -> StagedOutput:
        from ..formats.atomic import Staging, check_output

        check_output(self.final, force=self.force, inputs=self.inputs)
        if self.with_data:
            check_output(self.data_path, force=self.force, inputs=self.inputs)
        # Both names are staged even when no data file is written: publish() skips it then.
        staging = Staging([self.data_path, self.final], force=self.force)
        self._staging = staging.__enter__()
        return self

    @property
    def path(self) -> Path:
        assert self._staging is not None, "use StagedOutput in a with block"
        return self._staging.path(self.final)

    def commit(self, written: WrittenFiles) -> list[Path]:
        """Move the written files into place; return their final paths (data file first)."""
        assert self._staging is not None, "use StagedOutput in a with block"
        if written.data is not None and written.data != self._staging.path(self.data_path):
            raise ValueError(f"{written.data}: not this output's staged data file")
        if written.model != self.path:
            raise ValueError(f"{written.model}: not this output's staged model")
        outputs = [self.data_path, self.final] if written.data is not None else [self.final]
        return self._staging.publish(outputs)

    def __exit__(self, *exc_info: object) -> None:
        if self._staging is not None:
            self._staging.__exit__(*exc_info)
            self._staging = None
