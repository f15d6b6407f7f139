"""The package's weight-norm detector for an in-memory ``onnx_ir`` model (what the exporter holds).

The exporter checks its own output before saving it; this runs the same detector as ``check``
(:func:`~.analysis.find_weight_norm`) on a skeleton of the model: initializers larger than the
analysis ever reads stand in as external-data references (dtype and shape only), so checking
does not copy the model's weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .analysis import _SMALL_CONSTANT, GraphIndex, WeightNormSite
from .hidden import find_all_weight_norm
from .protoio import LazyModel

if TYPE_CHECKING:
    import onnx
    import onnx_ir as ir


def _skeleton(model: ir.Model) -> onnx.ModelProto:
    """``model`` as a ModelProto without the data of its large main-graph initializers."""
    import onnx_ir as ir

    swapped: dict[ir.Value, ir.TensorProtocol] = {}
    try:
        for value in model.graph.initializers.values():
            tensor = value.const_value
            if tensor is None or tensor.size <= _SMALL_CONSTANT:
                continue
            swapped[value] = tensor
            # Never read: the analysis only asks a large constant for its dtype and shape.
            value.const_value = ir.ExternalTensor(
                "wnconvert-skeleton", 0, tensor.nbytes, tensor.dtype,
                shape=ir.Shape(list(tensor.shape)),  # type: ignore[arg-type]  # static dims
                name=value.name or "",
            )
        return ir.serde.serialize_model(model)
    finally:
        for value, tensor in swapped.items():
            value.const_value = tensor


def find_weight_norm_in_ir(model: ir.Model) -> list[WeightNormSite]:
    """Every weight-norm computation from constants in ``model``'s main graph (as ``check``)."""
    lazy = LazyModel(path=Path("<in memory>"), proto=_skeleton(model), sources={}, alignment=1)
    return find_all_weight_norm(GraphIndex.build(lazy))


def runtime_weight_norm(model: ir.Model) -> list[str]:
    """One label per place ``model`` still computes weight norm at run time: the parameter
    name its g/v say, else the value it computes. Empty after a correct export."""
    return [site.parameter or site.root for site in find_weight_norm_in_ir(model)]
