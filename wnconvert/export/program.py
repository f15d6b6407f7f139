"""``torch.export`` programs (``.pt2``): load one without running any pickled code, move it to
the CPU, and fold its ``aten._weight_norm`` calls on parameters into plain parameters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError, InputNotFound
from .inputs import DynamicAxis
from .torch_model import PreparedModel, load_strict

if TYPE_CHECKING:
    import torch

def load_program(path: Path) -> Any:
    """``torch.export.load`` with a one-line error (this runs no pickled code)."""
    import torch

    if not path.exists():
        raise InputNotFound(f"{path}: no such file; check the path")
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad archives
        raise InputError(f"{path}: cannot load as a torch.export program (.pt2): "
                         f"{type(exc).__name__}: {exc}") from None
    return program_on_cpu(program)


def program_on_cpu(program: Any) -> Any:
    """The program with its parameters, buffers and device arguments moved to the CPU.

    A program saved on CUDA keeps its device after loading; the reference must run on CPU in
    float32 (its inputs are CPU tensors, and the weight-norm fold inserts CPU parameters).
    """
    from torch.export.passes import move_to_device_pass

    return move_to_device_pass(program, "cpu")


def prepare_program(path: Path, *, state_dict: Mapping[str, torch.Tensor] | None = None,
                    source: str | None = None) -> PreparedModel:
    """Reference and plain module from a ``.pt2`` program (optionally with other weights)."""
    program = load_program(path)
    reference = program.module()
    plain = program.module()
    if state_dict is not None:
        load_strict(reference, state_dict, source=source or str(path), model=str(path))
        load_strict(plain, state_dict, source=source or str(path), model=str(path))
    weights = dict(reference.state_dict())
    folded = fold_program_weight_norm(plain)
    names = [spec.arg.name for spec in program.graph_signature.input_specs
             if spec.kind.name == "USER_INPUT"]
    examples, dynamic = _program_inputs(program, names)
    notes = [f"folded {folded} weight-norm calls of the program"] if folded else []
    description = {"program": str(path), "checkpoint": source}
    return PreparedModel(reference, plain, weights, names, description, examples, dynamic, notes)


def _program_inputs(program: Any, names: Sequence[str]
                    ) -> tuple[list[torch.Tensor] | None, tuple[DynamicAxis, ...]]:
    """The program's example inputs and the axes it was exported with as dynamic."""
    import torch

    examples = None
    stored = getattr(program, "example_inputs", None)
    if stored is not None:
        args, kwargs = stored
        if not kwargs and all(isinstance(a, torch.Tensor) for a in args):
            examples = list(args)
    dynamic: list[DynamicAxis] = []
    symbols: dict[str, str] = {}  # the program's symbol (s71) -> a readable name (mel_dim2)
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    for index, name in enumerate(names):
        value = placeholders[name].meta.get("val") if name in placeholders else None
        for axis, size in enumerate(getattr(value, "shape", ())):
            if not isinstance(size, int):
                symbol = symbols.setdefault(str(size), f"{name}_dim{axis}")
                dynamic.append(DynamicAxis(axis, index, symbol, f"{index}:{axis}"))
    return examples, tuple(dynamic)


def fold_program_weight_norm(graph_module: torch.nn.Module) -> int:
    """Replace ``aten._weight_norm(v, g, dim)`` on parameters by a folded parameter, in place.

    The new parameter is named like the plain module's (``conv.weight``). Returns the count.
    """
    import torch

    from ..dtypes import numpy_to_tensor, tensor_to_numpy
    from ..keys import find_pair_keys
    from ..numerics import fold, infer_dim

    graph = graph_module.graph
    targets = {torch.ops.aten._weight_norm.default, torch.ops.aten._weight_norm_interface.default}
    pair_of_v = {p.v_key: p for p in find_pair_keys(dict(graph_module.state_dict()))}
    count = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in targets:
            continue
        v_node, g_node = node.args[0], node.args[1]
        if not (getattr(v_node, "op", None) == "get_attr" and g_node.op == "get_attr"):
            continue  # computed operands: not a parameter's weight norm
        v = _get_attr(graph_module, v_node.target)
        g = _get_attr(graph_module, g_node.target)
        pair = pair_of_v.get(v_node.target)
        weight_name = pair.weight_key if pair else f"{v_node.target}_folded"
        # The dim argument is -1 for a whole-tensor norm; g's shape says it unambiguously.
        w, _ = fold(tensor_to_numpy(g), tensor_to_numpy(v),
                    infer_dim(tuple(g.shape), tuple(v.shape)))
        _set_param(graph_module, weight_name,
                   torch.nn.Parameter(numpy_to_tensor(w), requires_grad=False))
        with graph.inserting_before(node):
            new = graph.get_attr(weight_name)
        if node.target == torch.ops.aten._weight_norm_interface.default:
            for user in list(node.users):  # getitem(node, 0) is the weight, 1 the norms
                if user.target.__name__ == "getitem" and user.args[1] == 0:
                    user.replace_all_uses_with(new)
                    graph.erase_node(user)
            if node.users:
                continue
        else:
            node.replace_all_uses_with(new)
        graph.erase_node(node)
        for operand in (v_node, g_node):
            if not operand.users:
                graph.erase_node(operand)
                _del_attr(graph_module, operand.target)
        count += 1
    if count:
        graph.lint()
        graph_module.recompile()
    return count


def _get_attr(root: Any, target: str) -> Any:
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _set_param(root: Any, target: str, value: Any) -> None:
    import torch

    *path, last = target.split(".")
    obj = root
    for part in path:
        if not hasattr(obj, part):
            obj.add_module(part, torch.nn.Module())
        obj = getattr(obj, part)
    if last in obj._parameters or not hasattr(obj, last):
        obj.register_parameter(last, value)
    else:
        raise InputError(f"cannot fold weight norm into {target}: the name is taken in the program")


def _del_attr(root: Any, target: str) -> None:
    *path, last = target.split(".")
    obj = root
    for part in path:
        obj = getattr(obj, part)
    with contextlib.suppress(AttributeError):
        delattr(obj, last)
