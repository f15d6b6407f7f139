"""Initializer names after export: give exported initializers back their parameter names, and
find norm computations on weights that are still left in a graph.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import onnx_ir as ir
    import torch

#: Attribute under which the flat-output wrapper holds the user's module (its parameters get
#: this prefix in the exported graph, which :func:`restore_parameter_names` removes).
WRAPPER_ATTR = "wrapped"


@dataclass
class RenameResult:
    renamed: dict[str, str]
    untransposed: list[str]
    derived: list[str]
    named: int  # parameters that are initializers under their own name
    total: int  # floating parameters of the module


def restore_parameter_names(model: ir.Model,
                            parameters: Mapping[str, torch.Tensor]) -> RenameResult:
    """Give initializers back the parameter names the exporter lost, in place.

    An initializer bit-identical to a parameter takes its name (``mul_3`` -> ``conv.weight``,
    ``onnx::Conv_12`` -> ``conv.weight``, ``wrapped.fc.bias`` -> ``fc.bias``). One equal to a
    2-D parameter transposed (the optimizer pre-transposes Linear weights for MatMul) is replaced
    by the parameter plus a Transpose node, so the weight is stored under its name and layout.
    Anything else (LSTM gate packing, constants) keeps the exporter's name.
    """
    import numpy as np

    from ..dtypes import tensor_to_numpy
    from ..onnx_graph.names import fingerprint

    graph = model.graph
    params = {k: tensor_to_numpy(t) for k, t in parameters.items()
              if t.dtype.is_floating_point}
    by_print: dict[tuple[str, tuple[int, ...], str], list[str]] = {}
    for key, array in params.items():
        by_print.setdefault(fingerprint(array), []).append(key)
    transposed: dict[tuple[str, tuple[int, ...], str], list[str]] = {}
    for key, array in params.items():
        if array.ndim == 2:
            transposed.setdefault(fingerprint(np.ascontiguousarray(array.T)), []).append(key)
    taken = set(graph.initializers)
    renamed: dict[str, str] = {}
    untransposed: list[str] = []
    derived: list[str] = []
    prefix = WRAPPER_ATTR + "."
    for name, value in list(graph.initializers.items()):
        tensor = value.const_value
        if tensor is None:
            continue
        if name in params and not name.startswith(prefix):
            continue  # already the parameter's name
        array = tensor.numpy()
        if not np.issubdtype(array.dtype, np.floating) and str(array.dtype) != "bfloat16":
            continue  # shape constants and indices are not parameters
        fp = fingerprint(array)
        candidates = [name.removeprefix(prefix)] if name.startswith(prefix) else []
        candidates += by_print.get(fp, [])
        new = next((k for k in candidates if k in params and k not in taken
                    and fingerprint(params[k]) == fp), None)
        if new is not None:
            value.name = new
            taken.add(new)
            renamed[name] = new
            continue
        t_key = next((k for k in transposed.get(fp, []) if k not in taken), None)
        if t_key is not None:
            _untranspose(graph, value, t_key, params[t_key])
            taken.add(t_key)
            untransposed.append(t_key)
            continue
        derived.append(name)
    named = sum(1 for key in params if key in graph.initializers)
    return RenameResult(renamed, untransposed, derived, named, len(params))


def _untranspose(graph: ir.Graph, value: ir.Value, key: str, array: np.ndarray) -> None:
    """Replace initializer ``value`` (== param.T) by the parameter and a Transpose node."""
    import onnx_ir as ir

    param = ir.Value(name=key, shape=ir.Shape(array.shape),
                     type=ir.TensorType(value.dtype or ir.DataType.FLOAT),
                     const_value=ir.tensor(array, name=key))
    graph.register_initializer(param)
    node = ir.Node("", "Transpose", inputs=[param], attributes=[ir.AttrInt64s("perm", [1, 0])],
                   num_outputs=1, name=f"{key}.transpose")
    out = node.outputs[0]
    out.shape = value.shape
    out.type = value.type
    old_name = value.name or ""
    value.replace_all_uses_with(out)
    graph.initializers.pop(old_name)
    out.name = old_name
    graph.insert_before(graph[0], node) if len(graph) else graph.append(node)


def find_runtime_weight_norm(model: ir.Model) -> list[str]:
    """Where ``model`` still computes weight norm at run time (empty after a correct export):
    the same detector as ``wnconvert check``, see :mod:`wnconvert.onnx_graph.irmodel`."""
    from ..onnx_graph.irmodel import runtime_weight_norm

    return runtime_weight_norm(model)
