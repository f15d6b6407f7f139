"""Weight norm the main-graph analysis (:mod:`.analysis`) does not see by itself.

``check`` may call a model clean only if nothing computes weight norm at run time anywhere:

* **model-local functions** (``ModelProto.functions``, e.g. the TorchScript exporter with
  ``export_modules_as_functions``): when the inlined graph shows weight norm that the graph as
  written hides, the functions are inlined (``onnx.inliner``), so ``check``/``inspect`` report
  it and ``fold`` folds it; otherwise the model stays as written;
* **If/Loop/Scan bodies**: searched with the main graph's initializers in scope; reported, never
  folded (fold rewrites the main graph only);
* **ops the analysis does not follow** (a ``Transpose`` around the norm): a g/v pair (by name)
  that the graph reads at run time with no recognized weight norm is reported as such, and so
  is a spectral-norm original weight with its ``u`` (:func:`spectral_read_at_run_time`).

Before anything inlines or checks the functions (``onnx.checker`` infers shapes through every
call site, so it inlines too), :func:`refuse_function_bombs` counts the nodes the inlined model
would have from the declarations alone: functions that call each other twice per level make a
2 KB file whose inlined graph has 2^60 nodes.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from .analysis import GraphIndex, WeightNormSite, find_weight_norm
from .protoio import LazyModel
from .walk import iter_nodes, node_subgraphs

if TYPE_CHECKING:
    import onnx

    from ..keys import PairKeys

#: Most nodes a model may have once its model-local functions are inlined (main graph and
#: subgraphs, every call expanded). Exported networks have thousands to a few hundred thousand
#: nodes; each inlined node costs the inliner and onnx.checker a NodeProto (hundreds of bytes)
#: and shape inference, so ten million is generous for a real model and still bounded in memory
#: and time, while a crafted model can declare astronomically more.
MAX_INLINED_NODES = 10_000_000
# Counts saturate here, so a count stays a small integer whatever the model declares.
_COUNT_CAP = 2**100

_FunctionId = tuple[str, str, str]  # (domain, name, overload)


def refuse_function_bombs(path: Path, proto: onnx.ModelProto) -> None:
    """Raise :class:`InputError` if model-local functions call themselves (directly or through
    others), or if inlining them would give a graph of more than :data:`MAX_INLINED_NODES`
    nodes. Reads the declarations only: linear in the file's size, inlines nothing."""
    largest, where = inlined_node_counts(path, proto)
    if largest > MAX_INLINED_NODES:
        raise InputError(
            f"{path}: its model-local functions call each other so often that {where} would "
            f"have {_count_text(largest)} nodes once inlined, more than the "
            f"{MAX_INLINED_NODES:,} wnconvert (and onnx.checker, which inlines them) can handle;"
            " export the model without local functions (or with fewer nested calls)"
        )


def inlined_node_counts(path: Path, proto: onnx.ModelProto) -> tuple[int, str]:
    """The largest inlined node count of the main graph or any model-local function, and
    which one it is. Counts include If/Loop/Scan bodies and saturate at ``_COUNT_CAP``."""
    functions = {(f.domain, f.name, f.overload): f for f in proto.functions}
    calls = {key: _call_counts(function.node, functions) for key, function in functions.items()}
    sizes: dict[_FunctionId, int] = {}
    for key in functions:
        _size_of(path, key, calls, sizes)
    own, called = _call_counts(proto.graph.node, functions)
    largest, where = _total(own, called, sizes), "the main graph"
    for (domain, name, _), size in sizes.items():
        if size > largest:
            largest, where = size, f"function {domain}.{name}"
    return largest, where


def _call_counts(nodes: Iterable[onnx.NodeProto], functions: dict[_FunctionId, onnx.FunctionProto]
                 ) -> tuple[int, Counter[_FunctionId]]:
    """(nodes that are not calls of a local function, calls per function) of ``nodes`` and the
    graphs nested in them."""
    plain, called = 0, Counter[_FunctionId]()
    stack = list(nodes)
    while stack:
        node = stack.pop()
        key = (node.domain, node.op_type, node.overload)
        if key in functions:
            called[key] += 1
        else:
            plain += 1
        for sub in node_subgraphs(node):
            stack.extend(sub.node)
    return plain, called


def _total(plain: int, called: Counter[_FunctionId], sizes: dict[_FunctionId, int]) -> int:
    return min(_COUNT_CAP, plain + sum(count * sizes[key] for key, count in called.items()))


def _size_of(path: Path, start: _FunctionId,
             calls: dict[_FunctionId, tuple[int, Counter[_FunctionId]]],
             sizes: dict[_FunctionId, int]) -> None:
    """Fill ``sizes`` (memoized) for ``start`` and every function it calls; an explicit stack,
    so a long chain of calls cannot exhaust Python's recursion limit."""
    on_path: set[_FunctionId] = set()
    stack: list[tuple[_FunctionId, bool]] = [(start, False)]
    while stack:
        key, callees_done = stack.pop()
        if callees_done:
            on_path.discard(key)
            sizes[key] = _total(*calls[key], sizes)
            continue
        if key in sizes:
            continue
        on_path.add(key)
        stack.append((key, True))
        for callee in calls[key][1]:
            if callee in on_path:
                through = "" if callee == key else f" through {key[0]}.{key[1]}"
                raise InputError(
                    f"{path}: model-local function {callee[0]}.{callee[1]} calls itself"
                    f"{through}; ONNX functions cannot be recursive (inlining it would never "
                    "end), so the model is invalid: export it again"
                )
            if callee not in sizes:
                stack.append((callee, False))


def _count_text(count: int) -> str:
    if count >= _COUNT_CAP:
        return f"more than 2^{_COUNT_CAP.bit_length() - 1}"
    if count >= 10**12:
        return f"about 2^{count.bit_length() - 1}"
    return f"{count:,}"


def inline_functions_hiding_weight_norm(model: LazyModel) -> LazyModel:
    """``model``, or a copy with its local functions inlined when they compute weight norm
    (:attr:`LazyModel.inlined_functions` names them)."""
    if not model.proto.functions:
        return model
    from onnx import inliner

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
    yield from iter_nodes(model.proto.graph)
    for function in model.proto.functions:
        yield from function.node


def find_all_weight_norm(index: GraphIndex) -> list[WeightNormSite]:
    """:func:`find_weight_norm` on the main graph, then :func:`find_weight_norm_in_subgraphs`:
    everything ``check`` must report."""
    return find_weight_norm(index) + find_weight_norm_in_subgraphs(index.model)


def pairs_read_at_run_time(index: GraphIndex, sites: list[WeightNormSite]) -> list[PairKeys]:
    """Initializers named like a g/v pair that nodes read at run time (both of them, here or
    in a subgraph) and that no site in ``sites`` computes from: weight norm the analysis does
    not recognize (through a ``Transpose``, say), not something to call clean."""
    from ..keys import find_pair_keys

    computed = {(site.g, site.v) for site in sites}
    return [
        keys for keys in find_pair_keys(index.initializers)
        if (keys.g_key, keys.v_key) not in computed
        and index.consumers.get(keys.g_key) and index.consumers.get(keys.v_key)
    ]


def spectral_read_at_run_time(index: GraphIndex, sites: list[WeightNormSite]) -> list[str]:
    """Parameters whose spectral-norm original weight and ``u`` (named as PyTorch names them:
    ``x.weight_orig``/``x.weight_u``, ``x.parametrizations.weight.original``/``...0._u``) are
    both read at run time with no recognized spectral norm computing from them: spectral norm
    the analysis cannot see (an ``Einsum``, a ``Gemm``), not something to call clean."""
    computed = {site.v for site in sites if site.spectral is not None}
    found = []
    for name in index.initializers:
        if name.endswith("_orig"):
            parameter, u = name[: -len("_orig")], f"{name[: -len('_orig')]}_u"
        elif name.endswith(".original") and "parametrizations." in name:
            head, _, param = name.removesuffix(".original").rpartition("parametrizations.")
            parameter, u = f"{head}{param}", name.removesuffix(".original") + ".0._u"
        else:
            continue
        if (
            parameter
            and u in index.initializers
            and name not in computed
            and index.consumers.get(name)
            and index.consumers.get(u)
        ):
            found.append(parameter)
    return found


def find_weight_norm_in_subgraphs(model: LazyModel) -> list[WeightNormSite]:
    """Weight norm computed inside If/Loop/Scan bodies (from the main graph's initializers or
    their own constants). Reported, never folded: fold rewrites the main graph only."""
    sites: list[WeightNormSite] = []
    for number, (owner, sub) in enumerate(_subgraphs_with_owners(model.proto.graph)):
        where = f"{owner}/{sub.name or f'subgraph{number}'}"
        index = GraphIndex.build(model, sub, label_prefix=f"{where}/")
        sites.extend(
            dataclasses.replace(
                site, node_indices=(), foldable=False,
                reason=f"inside the subgraph {where} (an If/Loop/Scan body); fold rewrites the "
                       "main graph only")
            for site in find_weight_norm(index)
        )
    return sites


def _subgraphs_with_owners(graph: onnx.GraphProto) -> list[tuple[str, onnx.GraphProto]]:
    """Every subgraph at any depth with the label of the node that holds it."""
    found: list[tuple[str, onnx.GraphProto]] = []
    stack = [graph]
    while stack:
        current = stack.pop()
        for position, node in enumerate(current.node):
            for sub in node_subgraphs(node):
                found.append((node.name or f"{node.op_type}#{position}", sub))
                stack.append(sub)
    return found
