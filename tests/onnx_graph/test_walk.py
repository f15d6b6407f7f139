"""The one subgraph walker: order, depth, outer references, and renames that respect scopes."""

from __future__ import annotations

from onnx import TensorProto, helper

from wnconvert.onnx_graph.walk import (
    graph_outer_references,
    iter_nodes,
    outer_references,
    rename_references,
    subgraphs,
)


def _branch(name: str, nodes: list, outputs: list[str], inputs: list[str] = ()) -> object:
    return helper.make_graph(
        nodes, name, [helper.make_tensor_value_info(i, TensorProto.FLOAT, [2]) for i in inputs],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, [2]) for o in outputs])


def _attr(node: object, name: str) -> object:
    """A graph attribute by name (helper.make_node sorts attributes by name)."""
    return next(a.g for a in node.attribute if a.name == name)


def _if(inputs_then: list, inputs_else: list, out: str) -> object:
    then = _branch("then", inputs_then, [inputs_then[-1].output[0]])
    other = _branch("else", inputs_else, [inputs_else[-1].output[0]])
    return helper.make_node("If", ["cond"], [out], then_branch=then, else_branch=other)


def test_walks_nested_subgraphs_in_order_and_deeply():
    inner = helper.make_node("Identity", ["w"], ["deep"], name="deepest")
    graph = _branch("main", [inner], ["deep"])
    for level in range(25):  # about as deep as protobuf lets a model nest
        node = helper.make_node("If", ["cond"], [f"o{level}"], name=f"if{level}",
                                then_branch=graph, else_branch=_branch(
                                    "e", [helper.make_node("Identity", ["w"], [f"e{level}"])],
                                    [f"e{level}"]))
        graph = _branch(f"g{level}", [node], [f"o{level}"])
    assert sum(1 for _ in subgraphs(graph)) == 50
    names = [n.name for n in iter_nodes(graph)]
    assert names[0] == "if24" and names.count("deepest") == 1


def test_outer_references_exclude_what_a_subgraph_defines():
    node = _if([helper.make_node("Add", ["w", "x"], ["t"])],
               [helper.make_node("Identity", ["local_in"], ["e"])], "y")
    _attr(node, "else_branch").input.extend(
        [helper.make_tensor_value_info("local_in", TensorProto.FLOAT, [2])])
    assert outer_references(node) == {"w", "x"}
    assert graph_outer_references(_attr(node, "then_branch")) == {"w", "x"}


def test_rename_stops_where_a_subgraph_shadows_the_name():
    uses = _if([helper.make_node("Identity", ["w"], ["t"])],
               [helper.make_node("Identity", ["w"], ["e"])], "y")
    # The else branch defines its own "w": its uses are that local value, not the outer one.
    _attr(uses, "else_branch").node.insert(
        0, helper.make_node("Constant", [], ["w"], value_float=1.0))
    passthrough = helper.make_graph([], "p", [], [helper.make_tensor_value_info(
        "w", TensorProto.FLOAT, [2])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["q"])], "q", [],
                              [helper.make_tensor_value_info("q", TensorProto.FLOAT, [2])])
    passes = helper.make_node("If", ["cond"], ["z"], then_branch=passthrough, else_branch=other)
    main = _branch("main", [helper.make_node("Add", ["w", "x"], ["s"]), uses, passes], ["w"])
    main.value_info.extend([helper.make_tensor_value_info("w", TensorProto.FLOAT, [2])])
    rename_references(main, {"w": "conv.weight"})
    uses, passes = main.node[1], main.node[2]  # make_graph copied the nodes
    assert list(main.node[0].input) == ["conv.weight", "x"]
    assert list(_attr(uses, "then_branch").node[0].input) == ["conv.weight"]
    assert list(_attr(uses, "else_branch").node[1].input) == ["w"]  # shadowed: unchanged
    assert _attr(passes, "then_branch").output[0].name == "conv.weight"  # passes it through
    assert main.output[0].name == "w"  # the model's interface never changes here
    assert main.value_info[0].name == "conv.weight"
