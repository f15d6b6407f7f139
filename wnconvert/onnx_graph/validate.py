"""Refuse the ONNX models ``onnx.checker`` refuses, before any command judges or edits a graph.

:func:`open_model` is the one entry point of ``check``, ``inspect`` and ``fold``: it reads the
model lazily (:func:`~.protoio.load_model`) and runs :func:`validate_model`, so all three accept
and refuse the same files with the same message.

``onnx.checker.check_model(path, full_check=True)`` parses the whole file, inline tensor data
included (2 GB of peak memory for a 1 GB inline model, measured), so it is not given the file.
It checks the skeleton instead: every initializer whose bytes stay in the file is checked here
(its byte count against its shape and type, its external-data location, by
:func:`~.protoio.load_model`) and, for the checker, small ones get their data back (shape
inference reads shape constants) while large ones become typed graph inputs of the same name,
shape and type, which the checker and shape inference treat like the initializer for every
rule that does not read its values (topological order, defined inputs, types, shapes).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from .protoio import FileRange, LazyModel, check_length, load_model

if TYPE_CHECKING:
    import onnx

# Initializers up to this many bytes keep their data in the checker's copy (shape inference
# uses constant shapes, axes, ...); larger ones stand in as graph inputs (no data read).
_CHECKER_DATA_LIMIT = 64 * 1024
_MESSAGE_LIMIT = 300


def open_model(path: Path) -> LazyModel:
    """Read ``path`` lazily and refuse it (:class:`InputError`) if it is not a valid model.

    Model-local functions that compute weight norm come back inlined, so no caller can miss
    weight norm hidden in one (:mod:`.hidden`). Functions whose inlined size is out of bounds
    are refused first: the checker and the inliner would run (almost) forever on them."""
    from .hidden import inline_functions_hiding_weight_norm, refuse_function_bombs

    model = load_model(path)
    refuse_function_bombs(model.path, model.proto)
    validate_model(model)
    return inline_functions_hiding_weight_norm(model)


def validate_model(model: LazyModel) -> None:
    """Raise :class:`InputError` if ``onnx.checker`` (full check) would refuse ``model``, if an
    initializer's data does not fit its shape, or if a g/v pair's shapes do not fit."""
    for tensor in model.proto.graph.initializer:
        source = model.sources.get(tensor.name)
        if isinstance(source, FileRange):
            check_length(model.path, tensor, source.length)
    _run_checker(model)
    _check_pairs(model)


def _checker_copy(model: LazyModel) -> onnx.ModelProto:
    """The skeleton with small initializers' data restored and large ones as typed inputs."""
    import onnx
    from onnx import helper

    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    graph = proto.graph
    inputs = {i.name for i in graph.input}
    kept = onnx.GraphProto()
    stand_ins = []
    for tensor in graph.initializer:
        source = model.sources.get(tensor.name)
        if source is None:
            kept.initializer.append(tensor)
            continue
        if source.nbytes <= _CHECKER_DATA_LIMIT:
            full = kept.initializer.add()
            full.CopyFrom(tensor)
            full.ClearField("external_data")
            full.data_location = onnx.TensorProto.DEFAULT
            assert isinstance(source, FileRange)
            full.raw_data = source.read().tobytes()
            continue
        if model.proto.ir_version < 4 and tensor.name not in inputs:
            # The checker's own rule for IR < 4, which the stand-in input would hide.
            raise InputError(
                f"{model.path}: not a valid ONNX model: {tensor.name} in initializer but not in "
                "graph input (IR version < 4); export it again"
            )
        if tensor.name not in inputs:
            stand_ins.append(
                helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
            )
    graph.ClearField("initializer")
    graph.initializer.extend(kept.initializer)
    graph.input.extend(stand_ins)
    return proto


def _run_checker(model: LazyModel) -> None:
    import onnx

    proto = _checker_copy(model)
    try:
        onnx.checker.check_model(proto, full_check=True)
    # The checker's C++ core also says "invalid" with a bare ValueError (an unknown tensor
    # data type) or RuntimeError; whatever it raises, it refused the model.
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError,
            TypeError, RuntimeError) as exc:
        raise InputError(
            f"{model.path}: not a valid ONNX model, onnx.checker refuses it: {_one_line(exc)}; "
            "export the model again"
        ) from None


def _one_line(exc: BaseException) -> str:
    text = re.sub(r"\s+", " ", str(exc)).strip()
    text = text.removeprefix("[ShapeInferenceError] ").rstrip(".")
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 3] + "..."


def pair_dim(g_shape: tuple[int, ...], v_shape: tuple[int, ...]) -> int | None:
    """The axis of ``v`` a g/v pair's norm keeps (None: the whole tensor).

    PyTorch's layouts are read as the checkpoint fold reads them
    (:func:`~wnconvert.numerics.infer_dim`); graphs may also store ``g`` flat (``[C]`` for
    ``v`` of ``[C, ...]``, reshaped in the graph), which fits the first axis of that size.
    Raises :class:`ValueError` if the shapes cannot be a weight-norm pair.
    """
    from ..numerics import infer_dim

    try:
        return infer_dim(g_shape, v_shape)
    except ValueError:
        if len(g_shape) == 1 and g_shape[0] in v_shape:
            return v_shape.index(g_shape[0])
        raise


def _check_pairs(model: LazyModel) -> None:
    """A g/v pair of initializers whose shapes cannot be weight norm: refused, as the checkpoint
    commands refuse it (:func:`~wnconvert.numerics.check_pair_shapes`)."""
    from ..keys import find_pair_keys

    initializers = {t.name: t for t in model.proto.graph.initializer}
    for keys in find_pair_keys(initializers):
        g_shape = tuple(initializers[keys.g_key].dims)
        v_shape = tuple(initializers[keys.v_key].dims)
        try:
            pair_dim(g_shape, v_shape)
        except ValueError as exc:
            raise InputError(
                f"{model.path}: weight-norm pair {keys.weight_key!r} ({keys.g_key}, {keys.v_key})"
                f" does not fit: {exc}; the model is inconsistent (export it again)"
            ) from None
