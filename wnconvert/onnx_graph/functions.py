"""Model-local functions (``ModelProto.functions``): weight norm computed inside one still runs.

A graph can call a function that holds the norm (``g * v / ||v||`` over initializers passed in
as arguments), e.g. the TorchScript exporter with ``export_modules_as_functions``. Matched on
the main graph only, such a model would look clean to ``check``. When the inlined graph shows
weight norm that the graph as written hides, the functions are inlined (``onnx.inliner``), so
``check``/``inspect`` report it and ``fold`` folds it; otherwise the model stays as written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..errors import InputError
from .protoio import LazyModel

if TYPE_CHECKING:
    import onnx


def inline_functions_hiding_weight_norm(model: LazyModel) -> LazyModel:
    """``model``, or a copy with its local functions inlined when they compute weight norm
    (:attr:`LazyModel.inlined_functions` names them)."""
    if not model.proto.functions:
        return model
    from onnx import inliner

    from .analysis import GraphIndex, find_all_weight_norm

    try:
        proto = inliner.inline_local_functions(model.proto)
    except Exception as exc:  # noqa: BLE001 - the C++ inliner raises several types
        raise InputError(
            f"{model.path}: its model-local functions cannot be inlined "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}), so weight norm "
            "computed inside them cannot be seen; export the model without local functions"
        ) from None
    called = {(node.domain, node.op_type) for node in _all_nodes(model)}
    names = tuple(f"{f.domain}.{f.name}" for f in model.proto.functions
                  if (f.domain, f.name) in called)
    inlined = dataclasses.replace(model, proto=proto, inlined_functions=names)
    if len(find_all_weight_norm(GraphIndex.build(inlined))) > len(
            find_all_weight_norm(GraphIndex.build(model))):
        return inlined
    return model


def _all_nodes(model: LazyModel) -> Iterator[onnx.NodeProto]:
    """The nodes of every graph and every function body: what calls what."""
    from .walk import iter_nodes

    yield from iter_nodes(model.proto.graph)
    for function in model.proto.functions:
        yield from function.node
