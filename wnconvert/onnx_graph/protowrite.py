"""Writing ONNX files whose tensors stream from their sources (:mod:`.protoio`).

:func:`write_model` serializes the skeleton with every initializer's bytes copied from its
:class:`~.protoio.FileRange` (``copy_file_range``, never through Python memory) or computed
(:class:`~.protoio.Computed`, one tensor at a time), in the field order ``onnx.save`` uses;
:class:`StagedOutput` writes it into a staging folder and publishes it atomically.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from .protoio import (
    _EXTERNAL_THRESHOLD,
    _GRAPH_INITIALIZER,
    _INLINE_MARGIN,
    _MODEL_GRAPH,
    _TENSOR_RAW_DATA,
    _WIRE_LEN,
    PROTOBUF_LIMIT,
    Computed,
    FileRange,
    LazyModel,
    Source,
    _skip,
    _varint,
)

if TYPE_CHECKING:
    import onnx

    from ..formats.atomic import Staging


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
        from ..formats.byteio import copy_range

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

    from ..formats.atomic import name_write_errors

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
        with open(data_path, "wb") as handle, name_write_errors(data_path):
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
    with open(output, "wb") as handle, name_write_errors(output):
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


def _tensors_of_graph(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of ``graph`` and its subgraphs that can hold external data."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors_of_graph(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors_of_graph(subgraph)


def _external_locations(model: onnx.ModelProto) -> Iterator[onnx.StringStringEntryProto]:
    import onnx

    for tensor in _tensors_of_graph(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            yield from (entry for entry in tensor.external_data if entry.key == "location")


class OnnxLayout:
    """An ONNX model and its external data files as an output set
    (:class:`~wnconvert.formats.atomic.SetLayout`): the model is the entry."""

    def payloads(self, entry: Path) -> list[str]:
        from .protoio import load_model

        # Skeletons only: the tensor bytes of a large inline model are not read.
        folder = entry.resolve().parent
        return [path.name for path in load_model(entry).data_files if path.parent == folder]

    def owns(self, entry: Path, name: str) -> bool:
        return name == data_file_name(entry)  # the only data file name wnconvert writes

    def repoint(self, entry: Path, renames: Mapping[str, str], out: Path) -> None:
        import onnx
        from google.protobuf.message import DecodeError

        try:
            model = onnx.load_model(str(entry), load_external_data=False)
        except DecodeError as exc:
            raise ValueError(f"{entry}: {exc}") from None
        for location in _external_locations(model):
            location.value = renames.get(os.path.normpath(location.value), location.value)
        out.write_bytes(model.SerializeToString())


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
        staging = Staging([self.data_path, self.final], force=self.force,
                          layout=OnnxLayout(), keep=self.inputs)
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
