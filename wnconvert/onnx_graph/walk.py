"""The one walker over ONNX subgraphs (If/Loop/Scan bodies): every module of the package uses it.

Walks are iterative (an explicit stack), so a deeply nested model cannot exhaust Python's
recursion limit, and they visit graphs in a fixed order (a graph before its subgraphs, nodes and
attributes in file order).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx


def node_subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs held directly by a node's attributes (``then_branch``, ``body``, ...)."""
    graphs: list[onnx.GraphProto] = []
    for attr in node.attribute:
        if attr.HasField("g"):
            graphs.append(attr.g)
        graphs.extend(attr.graphs)
    return graphs


def subgraphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """Every graph nested in ``graph``, at any depth (not ``graph`` itself)."""
    stack = list(reversed(_direct(graph)))
    while stack:
        sub = stack.pop()
        yield sub
        stack.extend(reversed(_direct(sub)))


def _direct(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    return [sub for node in graph.node for sub in node_subgraphs(node)]


def all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every graph nested in it."""
    yield graph
    yield from subgraphs(graph)


def iter_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of a graph and of its subgraphs."""
    for current in all_graphs(graph):
        yield from current.node


def defined_names(graph: onnx.GraphProto) -> set[str]:
    """Names a graph defines itself: inputs, initializers, node outputs."""
    names = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    names |= {t.values.name for t in graph.sparse_initializer}
    for node in graph.node:
        names.update(name for name in node.output if name)
    return names


def graph_outer_references(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads from enclosing scopes: used, and not defined inside."""
    used: set[str] = {o.name for o in graph.output}
    for node in graph.node:
        used.update(name for name in node.input if name)
        used |= outer_references(node)
    return used - defined_names(graph)


def outer_references(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs read from the scope the node is in."""
    found: set[str] = set()
    for sub in node_subgraphs(node):
        found |= graph_outer_references(sub)
    return found


def rename_references(
    graph: onnx.GraphProto, renames: dict[str, str], *, value_info: bool = True
) -> None:
    """Point every use of a renamed main-graph value at its new name.

    Renamed: node inputs everywhere, subgraph outputs that pass the value through, and (with
    ``value_info``) value_info entries. A subgraph that defines the old name itself (an input,
    initializer or node output of that name) shadows the outer value, so nothing under it
    changes. The main graph's outputs are the model's interface and never change here: callers
    do not rename a value the model outputs.
    """
    if not renames:
        return
    stack: list[tuple[onnx.GraphProto, dict[str, str], bool]] = [(graph, renames, True)]
    while stack:
        current, active, top = stack.pop()
        if not top:
            shadowed = defined_names(current)
            active = {old: new for old, new in active.items() if old not in shadowed}
            if not active:
                continue
            for output in current.output:
                if output.name in active:
                    output.name = active[output.name]
        for node in current.node:
            for i, name in enumerate(node.input):
                if name in active:
                    node.input[i] = active[name]
            stack.extend((sub, active, False) for sub in node_subgraphs(node))
        if value_info:
            for info in current.value_info:
                if info.name in active:
                    info.name = active[info.name]
