"""Initializer names after export: give exported initializers back their parameter names, and
find norm computations on weights that are still left in a graph.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
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
    derived: list[str]  # initializers that hold no parameter's value (final names)
    named: int  # parameters that are initializers under their own name
    total: int  # floating parameters of the module
    # derived initializers whose origin is known (final name -> why it is not a parameter); the
    # note is also stored on the initializer (DERIVED_KEY) for verification to show
    derivations: dict[str, str] = field(default_factory=dict)


def restore_parameter_names(model: ir.Model, parameters: Mapping[str, torch.Tensor], *,
                            batchnorm_eps: Mapping[str, float] | None = None) -> RenameResult:
    """Give initializers back the parameter names the exporter lost, in place.

    An initializer bit-identical to a parameter takes its name (``mul_3`` -> ``conv.weight``,
    ``onnx::Conv_12`` -> ``conv.weight``, ``wrapped.fc.bias`` -> ``fc.bias``). One equal to a
    2-D parameter transposed (the optimizer pre-transposes Linear weights for MatMul) is replaced
    by the parameter plus a Transpose node, so the weight is stored under its name and layout.
    Anything else (LSTM gate packing, constants) keeps the exporter's name.

    A name is kept or given only where the value is that parameter's: the dynamo exporter's
    optimizer folds a BatchNorm into the convolution before it and leaves the result under the
    convolution's parameter name (``dw.weight`` holding ``dw.weight * gamma / sqrt(var + eps)``).
    Such an initializer is renamed (``dw.weight+bn``, or ``dw.weight.derived`` when its origin
    is unknown) and reported as derived, so nothing compares it as if it were the parameter.
    ``batchnorm_eps`` (module name -> eps of each BatchNorm in eval mode) lets a fused tensor
    be explained as such.
    """
    import numpy as np

    from ..dtypes import tensor_to_numpy
    from ..onnx_graph.names import DERIVED_KEY, fingerprint, holds_value

    graph = model.graph
    params = {k: tensor_to_numpy(t) for k, t in parameters.items()
              if t.dtype.is_floating_point}
    # Each tensor is hashed once: a parameter's fingerprint is looked up, not computed again.
    param_prints = {key: fingerprint(array) for key, array in params.items()}
    by_print: dict[tuple[str, tuple[int, ...], str], list[str]] = {}
    for key, fp in param_prints.items():
        by_print.setdefault(fp, []).append(key)
    transposed: dict[tuple[str, tuple[int, ...], str], list[str]] = {}
    for key, array in params.items():
        if array.ndim == 2:
            transposed.setdefault(fingerprint(np.ascontiguousarray(array.T)), []).append(key)
    prefix = WRAPPER_ATTR + "."
    floating = {}
    for name, value in graph.initializers.items():
        tensor = value.const_value
        if tensor is None:
            continue
        array = tensor.numpy()
        if np.issubdtype(array.dtype, np.floating) or str(array.dtype) == "bfloat16":
            floating[name] = array  # shape constants and indices are not parameters
    prints = {name: fingerprint(array) for name, array in floating.items()}
    fusions = _batchnorm_fusions({n: a for n, a in floating.items() if prints[n] not in by_print},
                                 params, batchnorm_eps or {})
    taken = set(graph.initializers)
    # 1. Initializers under a parameter's name (with or without the wrapper prefix) that do not
    # hold its value lose that name first, which frees it for the initializer that does.
    derivations: dict[str, str] = {}
    misnamed: dict[str, str] = {}  # old name -> new name
    for name, array in floating.items():
        claimed = name.removeprefix(prefix)
        if claimed not in params or prints[name] == param_prints[claimed] or holds_value(
                array, params[claimed]):
            continue
        fusion = fusions.get(name)
        # dw.weight+bn: the parameter and the BatchNorm's own attribute name, which is what
        # sets it apart (its full name would repeat the parameter's module path).
        stem = (f"{claimed}+{fusion[0].rpartition('.')[2]}" if fusion is not None
                else f"{claimed}.derived")
        fresh = _free_name(stem, taken | set(params))
        graph.initializers[name].name = fresh
        taken.add(fresh)
        misnamed[name] = fresh
        derivations[fresh] = fusion[1] if fusion is not None else (
            f"the exporter named it {claimed!r}, but it does not hold that parameter's value "
            "(computed from several parameters, e.g. a BatchNorm folded into a convolution)")
    taken -= set(misnamed)
    renamed: dict[str, str] = {}
    untransposed: list[str] = []
    derived: list[str] = []
    for name in floating:
        current = misnamed.get(name, name)
        value = graph.initializers[current]
        if current in params and not current.startswith(prefix):
            continue  # already the parameter's name, and its value (checked above)
        fp = prints[name]
        candidates = [name.removeprefix(prefix)] if name.startswith(prefix) else []
        candidates += by_print.get(fp, [])
        new = next((k for k in candidates if k in params and k not in taken
                    and param_prints[k] == fp), None)
        if new is not None:
            value.name = new
            taken.add(new)
            renamed[name] = new
            derivations.pop(current, None)
            continue
        t_key = next((k for k in transposed.get(fp, []) if k not in taken), None)
        if t_key is not None:
            _untranspose(graph, value, t_key, params[t_key])
            taken.add(t_key)
            untransposed.append(t_key)
            derivations.pop(current, None)
            continue
        derived.append(current)
        if current not in derivations and name in fusions:
            derivations[current] = fusions[name][1]
    for name, note in derivations.items():
        tensor = graph.initializers[name].const_value
        if tensor is not None:
            tensor.metadata_props[DERIVED_KEY] = note
    named = sum(1 for key in params if key in graph.initializers)
    return RenameResult(renamed, untransposed, derived, named, len(params), derivations)


def _free_name(stem: str, taken: set[str]) -> str:
    name, n = stem, 1
    while name in taken:
        name, n = f"{stem}_{n}", n + 1
    return name


# A fused tensor is recognised when every element is within this many float32 epsilons of the
# magnitudes it was computed from (the exporter fuses in the model's precision, not float64).
_FUSION_ULPS = 64


def _batchnorm_fusions(initializers: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray],
                       batchnorm_eps: Mapping[str, float]) -> dict[str, tuple[str, str]]:
    """Initializer name -> (BatchNorm module, note) for tensors that are a convolution's weight
    or bias with an eval-mode BatchNorm folded in (what both exporters do to Conv + BatchNorm).

    Only explains; nothing is named or compared from it. Candidates are filtered by shape first
    (the output channels of a weight, the length of a bias, are the BatchNorm's features).
    """
    import numpy as np

    from ..numerics import as_float64

    if not batchnorm_eps:
        return {}
    norms = []
    for module, eps in batchnorm_eps.items():
        p = f"{module}." if module else ""
        if f"{p}running_mean" not in params or f"{p}running_var" not in params:
            continue
        mean = as_float64(params[f"{p}running_mean"])
        var = as_float64(params[f"{p}running_var"])
        gamma = as_float64(params[f"{p}weight"]) if f"{p}weight" in params else np.ones_like(mean)
        beta = as_float64(params[f"{p}bias"]) if f"{p}bias" in params else np.zeros_like(mean)
        scale = gamma / np.sqrt(var + eps)
        norms.append((module or "(root)", p, scale, beta - mean * scale,
                      np.abs(mean * scale) + np.abs(beta)))
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for key, array in params.items():
        if key.rpartition(".")[0] not in batchnorm_eps:  # a BatchNorm's own tensors are not
            by_shape.setdefault(tuple(array.shape), []).append(key)  # what it is folded into
    found: dict[str, tuple[str, str]] = {}
    for name, array in initializers.items():
        if array.ndim == 0 or array.size == 0:
            continue
        actual = as_float64(array)
        channels = array.shape[0]
        for module, _, scale, shift, shift_size in norms:
            if scale.shape != (channels,):
                continue
            if array.ndim == 1 and _near(actual, shift, shift_size):
                found[name] = (module, f"BatchNorm {module!r} folded by the exporter into the "
                                       "bias of the convolution before it (which has none)")
                break
            source = _fused_source(actual, params, by_shape.get(tuple(array.shape), []),
                                   scale, shift if array.ndim == 1 else None, shift_size)
            if source is not None:
                what = "bias" if array.ndim == 1 else "weight"
                found[name] = (module, f"BatchNorm {module!r} folded by the exporter into the "
                                       f"convolution {what} {source!r}")
                break
    return found


def _fused_source(actual: np.ndarray, params: Mapping[str, np.ndarray], keys: list[str],
                  scale: np.ndarray, shift: np.ndarray | None,
                  shift_size: np.ndarray) -> str | None:
    """The parameter among ``keys`` that ``actual`` is, scaled per output channel (a weight),
    or scaled and shifted (a bias, when ``shift`` is given)."""
    from ..numerics import as_float64

    per_channel = scale.reshape((-1,) + (1,) * (actual.ndim - 1))
    for key in keys:
        param = params[key]
        # The first element of each output channel first: most candidates fail there, and a
        # large model is not multiplied out for each of them.
        first = as_float64(param.reshape(param.shape[0], -1)[:, 0]) * scale
        if shift is not None:
            if not _near(actual, first + shift, abs(first) + shift_size):
                continue
            return key  # a bias is its first elements
        if not _near(actual.reshape(actual.shape[0], -1)[:, 0], first, abs(first)):
            continue
        source = as_float64(param) * per_channel
        if _near(actual, source, abs(source)):
            return key
    return None


def _near(actual: np.ndarray, expected: np.ndarray, magnitude: np.ndarray) -> bool:
    import numpy as np

    tolerance = _FUSION_ULPS * 2.0**-23 * magnitude + np.finfo(np.float32).tiny
    return bool(np.all(np.abs(actual - expected) <= tolerance))


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
