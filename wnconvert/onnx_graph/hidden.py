"""Weight norm the main-graph analysis (:mod:`.analysis`) does not see by itself.

``check`` may call a model clean only if nothing computes weight norm at run time anywhere:

* **model-local functions** (``ModelProto.functions``, e.g. the TorchScript exporter with
  ``export_modules_as_functions``): when the inlined graph shows weight norm that the graph as
  written hides, the functions are inlined (``onnx.inliner``), so ``check``/``inspect`` report
  it and ``fold`` folds it; otherwise the model stays as written;
* **If/Loop/Scan bodies**: searched with the main graph's initializers in scope; reported, never
  folded (fold rewrites the main graph only);
* **ops the analysis does not follow** (a ``Transpose`` around the norm): a g/v pair (by name)
  that the graph reads at run time with no recognized weight norm is reported as such.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..errors import InputError
from .analysis import GraphIndex, WeightNormSite, find_weight_norm
from .protoio import LazyModel
from .walk import iter_nodes, node_subgraphs

if TYPE_CHECKING:
    import onnx

    from ..keys import PairKeys


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
