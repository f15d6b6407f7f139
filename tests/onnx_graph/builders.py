"""Hand-built ONNX graphs for the graph tests: every way to write weight norm, and look-alikes.

:class:`Graph` collects nodes and initializers; the ``norm_*`` functions write ``||v||`` over the
given axes in one of the forms exporters use, and :func:`combine` writes ``g * v / n`` in one of
the operand orders. :meth:`Graph.model` wraps the weight in a runnable model (``y = x + w``) so
ONNX Runtime can compare the original with the folded model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from wnconvert import numerics

ORDERS = ("v/n*g", "g*(v/n)", "g/n*v", "v*(g/n)", "(g*v)/n", "v*g*recip(n)", "v/(n/g)")


def tensor_type(dtype: np.dtype | type) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


class Graph:
    """A graph under construction; names are generated unless given."""

    def __init__(self, opset: int = 18) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._count = 0

    def _name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def init(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def ints(self, values: Sequence[int]) -> str:
        return self.init(self._name("ints"), np.asarray(values, dtype=np.int64))

    def const(self, array: np.ndarray, name: str | None = None) -> str:
        out = name or self._name("const")
        tensor = numpy_helper.from_array(np.asarray(array))
        self.nodes.append(helper.make_node("Constant", [], [out], name=self._name("Constant"),
                                           value=tensor))
        return out

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs: object) -> str:
        output = out or self._name(op_type.lower())
        self.nodes.append(
            helper.make_node(op_type, list(inputs), [output], name=self._name(op_type), **attrs)
        )
        return output

    def reduce(self, op_type: str, x: str, axes: Sequence[int] | None, *, keepdims: int = 1,
               **attrs: object) -> str:
        """A Reduce* node with axes as attribute or input, as the opset wants."""
        input_from = 13 if op_type == "ReduceSum" else 18
        if axes is None:
            return self.op(op_type, x, keepdims=keepdims, **attrs)
        if self.opset >= input_from:
            return self.op(op_type, x, self.ints(axes), keepdims=keepdims, **attrs)
        return self.op(op_type, x, axes=list(axes), keepdims=keepdims, **attrs)

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        if self.opset >= 13:
            return self.op("Unsqueeze", x, self.ints(axes))
        return self.op("Unsqueeze", x, axes=list(axes))

    def cast(self, x: str, dtype: np.dtype | type) -> str:
        return self.op("Cast", x, to=tensor_type(dtype))

    def model(self, weight: str, shape: Sequence[int], dtype: np.dtype | type = np.float32,
              *, extra_outputs: Sequence[tuple[str, Sequence[int], np.dtype | type]] = (),
              ir_version: int = 8) -> onnx.ModelProto:
        """``y = x + weight`` with input ``x`` of the weight's shape (plus extra outputs)."""
        elem = tensor_type(dtype)
        self.op("Add", "x", weight, out="y")
        graph = helper.make_graph(
            self.nodes,
            "wn",
            [helper.make_tensor_value_info("x", elem, list(shape))],
            [helper.make_tensor_value_info("y", elem, list(shape))]
            + [helper.make_tensor_value_info(n, tensor_type(t), list(s))
               for n, s, t in extra_outputs],
            initializer=self.initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                  producer_name="wnconvert-tests")
        model.ir_version = ir_version
        return model


def norm_axes(rank: int, dim: int | None) -> list[int]:
    """The axes weight norm reduces: all but ``dim``."""
    return [a for a in range(rank) if dim is None or a != dim % rank]


def wn_arrays(shape: Sequence[int], dim: int | None, dtype: np.dtype | type = np.float32,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random ``(g, v)`` with PyTorch's g shape for ``dim``."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(tuple(shape)).astype(dtype)
    g = np.asarray(rng.random(numerics.g_shape_for(tuple(shape), dim)) + 0.5).astype(dtype)
    return g, v


def expected(g: np.ndarray, v: np.ndarray, dim: int | None) -> np.ndarray:
    """The checkpoint fold's result (the numbers every graph fold must reproduce)."""
    return numerics.fold(g, v, dim)[0]


# -- norms: each returns the name of ||v|| (keepdims unless said otherwise) --------------------


def norm_l2(b: Graph, v: str, axes: Sequence[int], keepdims: int = 1) -> str:
    return b.reduce("ReduceL2", v, axes, keepdims=keepdims)


def norm_sumsquare_sqrt(b: Graph, v: str, axes: Sequence[int], keepdims: int = 1) -> str:
    return b.op("Sqrt", b.reduce("ReduceSumSquare", v, axes, keepdims=keepdims))


def norm_pow_sum_sqrt(b: Graph, v: str, axes: Sequence[int], keepdims: int = 1) -> str:
    squared = b.op("Pow", v, b.const(np.array(2.0, dtype=np.float32)))
    return b.op("Sqrt", b.reduce("ReduceSum", squared, axes, keepdims=keepdims))


def norm_mul_sum_pow_half(b: Graph, v: str, axes: Sequence[int], keepdims: int = 1) -> str:
    summed = b.reduce("ReduceSum", b.op("Mul", v, v), axes, keepdims=keepdims)
    return b.op("Pow", summed, b.const(np.array(0.5, dtype=np.float32)))


NORMS: dict[str, Callable[..., str]] = {
    "ReduceL2": norm_l2,
    "Sqrt(ReduceSumSquare)": norm_sumsquare_sqrt,
    "Sqrt(ReduceSum(Pow))": norm_pow_sum_sqrt,
    "Pow(ReduceSum(Mul),0.5)": norm_mul_sum_pow_half,
}


def combine(b: Graph, v: str, g: str, n: str, order: str) -> str:
    """``g * v / n`` written in one of :data:`ORDERS`."""
    if order == "v/n*g":
        return b.op("Mul", b.op("Div", v, n), g)
    if order == "g*(v/n)":
        return b.op("Mul", g, b.op("Div", v, n))
    if order == "g/n*v":
        return b.op("Mul", b.op("Div", g, n), v)
    if order == "v*(g/n)":
        return b.op("Mul", v, b.op("Div", g, n))
    if order == "(g*v)/n":
        return b.op("Div", b.op("Mul", g, v), n)
    if order == "v*g*recip(n)":
        return b.op("Mul", b.op("Mul", v, g), b.op("Reciprocal", n))
    if order == "v/(n/g)":
        return b.op("Div", v, b.op("Div", n, g))
    raise ValueError(order)


def weight_norm_model(shape: Sequence[int], dim: int | None, *, norm: str = "ReduceL2",
                      order: str = "v/n*g", opset: int = 18, names: tuple[str, str] = (
                          "layer.parametrizations.weight.original0",
                          "layer.parametrizations.weight.original1"),
                      dtype: np.dtype | type = np.float32, seed: int = 0,
                      ) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """One weight-normed weight feeding ``y = x + w``; returns (model, g, v)."""
    g, v = wn_arrays(shape, dim, dtype, seed)
    b = Graph(opset)
    g_name, v_name = b.init(names[0], g), b.init(names[1], v)
    n = NORMS[norm](b, v_name, norm_axes(len(shape), dim))
    w = combine(b, v_name, g_name, n, order)
    return b.model(w, shape, dtype), g, v


def save(model: onnx.ModelProto, path: Path, *, external: bool = False,
         threshold: int = 0) -> Path:
    """``onnx.save``; with ``external``, tensors of ``threshold`` bytes or more go to
    ``<name>.data``."""
    if external:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=f"{path.name}.data", size_threshold=threshold)
    else:
        onnx.save(model, str(path))
    return path


def scaled_copy(source: Path, target: Path, name: str, factor: float) -> Path:
    """``source`` with its initializer ``name`` multiplied by ``factor`` (a weight a check must
    catch), saved inline as ``target``."""
    model = onnx.load(str(source))
    [tensor] = [t for t in model.graph.initializer if t.name == name]
    tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * np.float32(factor),
                                            name))
    onnx.save(model, str(target))
    return target


def initializer(path: Path, name: str) -> np.ndarray:
    """One initializer of a saved model (external data loaded)."""
    model = onnx.load(str(path))
    for tensor in model.graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    raise KeyError(f"{name} not in {[t.name for t in model.graph.initializer]}")


def run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


# -- models onnx.checker refuses (each one way; the tests expect exit 2 from every command) ------


def _plain_model(nodes: list[onnx.NodeProto], initializers: list[TensorProto],
                 shape: Sequence[int] = (2, 3)) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))],
        initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                              producer_name="wnconvert-tests")
    model.ir_version = 8
    return model


def cycle_model() -> onnx.ModelProto:
    """``a = x + b``, ``b = a + x``: a cycle (no topological order exists)."""
    return _plain_model([helper.make_node("Add", ["x", "b"], ["a"], name="first"),
                         helper.make_node("Add", ["a", "x"], ["b"], name="second"),
                         helper.make_node("Identity", ["a"], ["y"], name="out")], [])


def undefined_input_model() -> onnx.ModelProto:
    """A node reads ``missing``, which nothing defines."""
    return _plain_model([helper.make_node("Add", ["x", "missing"], ["y"], name="add")], [])


def truncated_model(*, nbytes_missing: int = 4, large: bool = False) -> onnx.ModelProto:
    """Weight norm whose ``v`` has ``nbytes_missing`` fewer bytes of raw_data than its shape
    needs (``large``: big enough that the checker only sees it as a stand-in)."""
    shape = (64, 32, 16) if large else (6, 4, 3)
    model, _, _ = weight_norm_model(shape, 0)
    v = model.graph.initializer[1]
    v.raw_data = v.raw_data[:-nbytes_missing]
    return model


def misfit_pair_model() -> onnx.ModelProto:
    """A clean graph that also holds a g/v pair whose shapes cannot be weight norm."""
    b = Graph()
    b.init("w", np.ones((2, 3), dtype=np.float32))
    b.init("fc.weight_g", np.ones((3, 1), dtype=np.float32))
    b.init("fc.weight_v", np.ones((5, 4), dtype=np.float32))
    return b.model("w", (2, 3))


def wrong_type_model(shape: Sequence[int] = (256, 128)) -> onnx.ModelProto:
    """``y = x + w`` with x float32 and a large float16 w: a type error only shape inference
    (the checker's full check) finds."""
    b = Graph()
    b.init("w", np.ones(tuple(shape), dtype=np.float16))
    return b.model("w", shape)


def external_location_model(location: str, offset: str = "0") -> onnx.ModelProto:
    """``y = x + w`` with w in external data at ``location`` (``offset``, 24 bytes)."""
    w = TensorProto()
    w.name, w.data_type = "w", TensorProto.FLOAT
    w.dims.extend([2, 3])
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", "24")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    return _plain_model([helper.make_node("Add", ["x", "w"], ["y"], name="add")], [w])


def function_model(*, weight_norm: bool = True, nested: bool = False, seed: int = 0,
                   ) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """``y = x + F(v, g)`` where F is a model-local function computing ``g * v / ||v||`` over
    dim 0 (or ``v + g`` without ``weight_norm``); ``nested``: F only calls G, which computes it.
    Shape (4, 3); returns (model, g, v)."""
    g, v = wn_arrays((4, 3), 0, np.float32, seed)
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("local", 1)]
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64))
    body = [helper.make_node("Constant", [], ["axes"], value=axes),
            helper.make_node("ReduceL2", ["v", "axes"], ["n"], keepdims=1),
            helper.make_node("Div", ["v", "n"], ["d"]),
            helper.make_node("Mul", ["d", "g"], ["w"])] if weight_norm else [
            helper.make_node("Add", ["v", "g"], ["w"])]
    functions = [helper.make_function("local", "WeightNorm", ["v", "g"], ["w"], body, opsets)]
    if nested:
        functions.append(helper.make_function(
            "local", "Layer", ["v", "g"], ["w"],
            [helper.make_node("WeightNorm", ["v", "g"], ["w"], domain="local")], opsets))
    call = "Layer" if nested else "WeightNorm"
    # Without weight norm the tensors are not named like a g/v pair either (a pair read by
    # something else is reported as unrecognized weight norm).
    v_name, g_name = (("layer.weight_v", "layer.weight_g") if weight_norm else
                      ("layer.scale", "layer.shift"))
    graph = helper.make_graph(
        [helper.make_node(call, [v_name, g_name], ["w"], domain="local", name="call"),
         helper.make_node("Add", ["x", "w"], ["y"], name="add")], "functions",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3])],
        initializer=[numpy_helper.from_array(g, g_name), numpy_helper.from_array(v, v_name)])
    model = helper.make_model(graph, functions=functions, opset_imports=opsets,
                              producer_name="wnconvert-tests")
    model.ir_version = 10
    return model, g, v


def if_model(*, loop: bool = False) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """``y = x + (If cond: g * v / ||v|| else: v)`` with g and v main-graph initializers read
    from the branch (``loop``: the same inside a one-iteration Loop body instead). Shape (4, 3);
    returns (model, g, v)."""
    g, v = wn_arrays((4, 3), 0, np.float32, 0)
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64))
    out = helper.make_tensor_value_info("w_body", TensorProto.FLOAT, [4, 3])
    norm = [helper.make_node("Constant", [], ["axes"], value=axes),
            helper.make_node("ReduceL2", ["layer.weight_v", "axes"], ["n"], keepdims=1),
            helper.make_node("Div", ["layer.weight_v", "n"], ["d"]),
            helper.make_node("Mul", ["d", "layer.weight_g"], ["w_body"])]
    if loop:
        body = helper.make_graph(
            [*norm, helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
            [helper.make_tensor_value_info("i", TensorProto.INT64, []),
             helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
            [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), out])
        holder = helper.make_node("Loop", ["", "cond"], ["w"], body=body, name="loop")
    else:
        then = helper.make_graph(norm, "then", [], [out])
        other = helper.make_graph([helper.make_node("Identity", ["layer.weight_v"], ["w_body"])],
                                  "else", [], [out])
        holder = helper.make_node("If", ["cond"], ["w"], then_branch=then, else_branch=other,
                                  name="if")
    scan_out = [4, 3] if not loop else [None, 4, 3]
    graph = helper.make_graph(
        [holder, helper.make_node("Add", ["x", "w"], ["y"], name="add")], "subgraphs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, scan_out)],
        initializer=[numpy_helper.from_array(g, "layer.weight_g"),
                     numpy_helper.from_array(v, "layer.weight_v")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                              producer_name="wnconvert-tests")
    model.ir_version = 10
    return model, g, v


def transposed_norm_model() -> onnx.ModelProto:
    """Weight norm over dim 1 written with Transposes around the norm, which the analysis does
    not follow: ``g * v / T(ReduceL2(T(v)))``. Shape (4, 3, 2)."""
    g, v = wn_arrays((4, 3, 2), 1, np.float32, 0)
    axes = numpy_helper.from_array(np.array([1, 2], dtype=np.int64))
    nodes = [helper.make_node("Transpose", ["layer.weight_v"], ["vt"], perm=[1, 0, 2]),
             helper.make_node("Constant", [], ["axes"], value=axes),
             helper.make_node("ReduceL2", ["vt", "axes"], ["nt"], keepdims=1),
             helper.make_node("Transpose", ["nt"], ["n"], perm=[1, 0, 2]),
             helper.make_node("Div", ["layer.weight_v", "n"], ["d"]),
             helper.make_node("Mul", ["d", "layer.weight_g"], ["w"]),
             helper.make_node("Add", ["x", "w"], ["y"], name="add")]
    return _plain_model(nodes, [numpy_helper.from_array(g, "layer.weight_g"),
                                numpy_helper.from_array(v, "layer.weight_v")], shape=(4, 3, 2))


def unknown_data_type_model() -> onnx.ModelProto:
    """``y = x + w`` with w of tensor data type 99, which no ONNX version defines."""
    w = numpy_helper.from_array(np.ones((2, 3), dtype=np.float32), "w")
    w.data_type = 99
    return _plain_model([helper.make_node("Add", ["x", "w"], ["y"], name="add")], [w])


def save_with_non_utf8_name(path: Path) -> Path:
    """A valid model whose node name is not UTF-8 (protobuf parses it; onnx.checker accepts
    it), written byte by byte since protobuf cannot build such a string itself."""
    model = _plain_model([helper.make_node("Add", ["x", "x"], ["y"], name="add\u00e9")], [])
    data = model.SerializeToString()
    assert data.count("add\u00e9".encode()) == 1
    path.write_bytes(data.replace("add\u00e9".encode(), b"add\xff\xfe"))
    return path


def truncate_external_length(path: Path, name: str, nbytes_missing: int = 4) -> None:
    """Rewrite a saved external-data model so ``name``'s recorded length is too short."""
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        if tensor.name == name:
            for entry in tensor.external_data:
                if entry.key == "length":
                    entry.value = str(int(entry.value) - nbytes_missing)
    onnx.save(model, str(path))


FOLDED_FROM = "pkg.onnxscript.optimizer.folded_from"


def prefolded_model(*, metadata: bool = True, seed: int = 0,
                    ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A graph the exporter already folded, as torch.onnx.export(dynamo=True) writes it:
    ``y = x + mul + mul_5``, weights named after ops, with (``metadata``) the onnxscript
    optimizer's record of the g/v pair each was folded from on its value_info. ``mul_5`` is
    also read inside an If branch. Returns the model and the g/v state dict it came from."""
    state: dict[str, np.ndarray] = {}
    b = Graph()
    infos = []
    for name, module, seed_ in (("mul", "conv_pre", seed), ("mul_5", "upsampler.1", seed + 1)):
        g, v = wn_arrays((2, 3), 0, seed=seed_)
        base = f"{module}.parametrizations.weight"
        state[f"{base}.original0"], state[f"{base}.original1"] = g, v
        b.init(name, expected(g, v, 0))
        info = helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 3])
        if metadata:
            entry = info.metadata_props.add()
            entry.key, entry.value = FOLDED_FROM, repr({f"{base}.original0", f"{base}.original1"})
        infos.append(info)
    branch = helper.make_graph(
        [helper.make_node("Identity", ["mul_5"], ["branch_out"], name="pass")], "then", [],
        [helper.make_tensor_value_info("branch_out", TensorProto.FLOAT, [2, 3])])
    other = helper.make_graph(
        [helper.make_node("Identity", ["mul"], ["other_out"], name="pass2")], "else", [],
        [helper.make_tensor_value_info("other_out", TensorProto.FLOAT, [2, 3])])
    b.init("flag", np.array(True))
    chosen = b.op("If", "flag", then_branch=branch, else_branch=other)
    model = b.model(b.op("Add", chosen, b.op("Add", "mul", "mul_5")), (2, 3))
    model.graph.value_info.extend(infos)
    return model, state


def function_bomb_model(depth: int, *, recursive: bool = False) -> onnx.ModelProto:
    """``y = F0(x)`` where each ``F<i>`` calls ``F<i+1>`` twice and the last one is an Identity:
    a file of a few KB whose inlined graph has 2^depth nodes. ``recursive``: the last function
    calls ``F0`` instead (a cycle)."""
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("bomb", 1)]
    functions = []
    for level in range(depth):
        callee = f"F{level + 1}" if level + 1 < depth else ("F0" if recursive else None)
        body = [helper.make_node("Identity", ["a"], ["b"])] if callee is None else [
            helper.make_node(callee, ["a"], ["t"], domain="bomb"),
            helper.make_node(callee, ["t"], ["b"], domain="bomb")]
        functions.append(helper.make_function("bomb", f"F{level}", ["a"], ["b"], body, opsets))
    graph = helper.make_graph(
        [helper.make_node("F0", ["x"], ["y"], domain="bomb", name="call")], "bomb",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, functions=functions, opset_imports=opsets,
                              producer_name="wnconvert-tests")
    model.ir_version = 10
    return model


def subgraph_external_model(location: str, *, length: int, dims: Sequence[int] = (4, 3),
                            in_constant: bool = False) -> onnx.ModelProto:
    """``y = x + (If cond: c else: x)`` where ``c`` (float, ``dims``) is an initializer of the
    then-branch (``in_constant``: the value of a Constant node there) stored as external data
    at ``location``, ``length`` bytes at offset 0."""
    c = TensorProto()
    c.name, c.data_type = "c", TensorProto.FLOAT
    c.dims.extend(dims)
    c.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = c.external_data.add()
        entry.key, entry.value = key, value
    out = helper.make_tensor_value_info("w_body", TensorProto.FLOAT, [4, 3])
    if in_constant:
        then = helper.make_graph([helper.make_node("Constant", [], ["w_body"], value=c)],
                                 "then", [], [out])
    else:
        then = helper.make_graph([helper.make_node("Identity", ["c"], ["w_body"])], "then", [],
                                 [out], initializer=[c])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["w_body"])], "else", [],
                              [out])
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["w"], then_branch=then, else_branch=other, name="if"),
         helper.make_node("Add", ["x", "w"], ["y"], name="add")], "subgraph_external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                              producer_name="wnconvert-tests")
    model.ir_version = 10
    return model


# -- spectral norm: W / σ, σ = uᵀ·W_mat·v, as PyTorch's eval mode computes it -----------------

SN_NAMES = {
    "parametrize": ("layer.parametrizations.weight.original", "layer.parametrizations.weight.0._u",
                    "layer.parametrizations.weight.0._v"),
    "legacy": ("layer.weight_orig", "layer.weight_u", "layer.weight_v"),
}
SN_ORDERS = ("W/dot(u,mv)", "W/dot(mv,u)", "W*recip(σ)", "recip(σ)*W")


def sn_arrays(shape: Sequence[int], dim: int, dtype: np.dtype | type = np.float32,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random ``(W, u, v)``: u and v one power-iteration step from random unit vectors (not
    PyTorch's initial values, not exactly the singular vectors)."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal(tuple(shape))
    mat = np.moveaxis(weight, dim, 0).reshape(shape[dim], -1)
    u = rng.standard_normal(mat.shape[0])
    v = mat.T @ (u / np.linalg.norm(u))
    v /= np.linalg.norm(v)
    u = mat @ v
    u /= np.linalg.norm(u)
    return weight.astype(dtype), u.astype(dtype), v.astype(dtype)


def spectral_norm_model(shape: Sequence[int], dim: int = 0, *, style: str = "parametrize",
                        order: str = "W/dot(u,mv)", shape_by: str = "initializer",
                        copy: bool = False, perm: Sequence[int] | None = None,
                        rows: int | None = None, dtype: np.dtype | type = np.float32,
                        seed: int = 0, bias: bool = False,
                        ) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray,
                                                np.ndarray]:
    """One spectral-normed weight feeding ``y = x + w``; returns (model, W, u, v).

    ``shape_by``: the matrix shape as an initializer, or as the dynamo exporter writes it
    (``Concat`` of ``Constant`` nodes). ``copy``: σ reads a reshaped copy of W (what the
    TorchScript exporter's constant folding leaves). ``perm``/``rows`` override the Transpose
    and the matrix's row count (look-alikes). ``bias``: a plain ``layer.bias`` added too (a
    weight verification can match by name: the reference's W/u/v are not folded there)."""
    weight, u, v = sn_arrays(shape, dim, dtype, seed)
    b = Graph()
    w_name, u_name, v_name = SN_NAMES[style]
    b.init(w_name, weight)
    b.init(u_name, u)
    b.init(v_name, v)
    rank = len(shape)
    dim %= rank
    perm = list(perm) if perm is not None else [dim] + [a for a in range(rank) if a != dim]
    rows = rows if rows is not None else shape[perm[0]]
    if copy:
        mat = b.init("onnx::MatMul_7", np.ascontiguousarray(
            np.transpose(weight, perm)).reshape(rows, -1))
    else:
        mat = w_name if perm == list(range(rank)) else b.op("Transpose", w_name, perm=perm)
        if rank != 2 or rows != shape[perm[0]]:
            if shape_by == "concat":
                target = b.op("Concat", b.const(np.array([rows], dtype=np.int64)),
                              b.const(np.array([-1], dtype=np.int64)), axis=0)
            else:
                target = b.ints([rows, -1])
            mat = b.op("Reshape", mat, target)
    mv = b.op("MatMul", mat, v_name)
    operands = (mv, u_name) if order == "W/dot(mv,u)" else (u_name, mv)
    sigma = b.op("MatMul", *operands)
    if order in ("W/dot(u,mv)", "W/dot(mv,u)"):
        w = b.op("Div", w_name, sigma)
    elif order == "W*recip(σ)":
        w = b.op("Mul", w_name, b.op("Reciprocal", sigma))
    elif order == "recip(σ)*W":
        w = b.op("Mul", b.op("Reciprocal", sigma), w_name)
    else:
        raise ValueError(order)
    if bias:
        w = b.op("Add", w, b.init("layer.bias", np.full(tuple(shape), 0.5, dtype=dtype)))
    return b.model(w, shape, dtype), weight, u, v


def expected_spectral(weight: np.ndarray, u: np.ndarray, v: np.ndarray, dim: int) -> np.ndarray:
    """PyTorch's eval-mode spectral norm in float64, rounded once (what every fold gives)."""
    return numerics.spectral_fold(weight, u, v, dim)[0]


def save_clean_model(path: Path) -> Path:
    """A small model computing no weight norm, saved at ``path`` (folders made)."""
    b = Graph()
    b.init("w", np.ones((2, 3), dtype=np.float32))
    path.parent.mkdir(parents=True, exist_ok=True)
    return save(b.model("w", (2, 3)), path)


def save_weight_norm_model(path: Path) -> Path:
    """A small model computing weight norm at run time, saved at ``path`` (folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return save(weight_norm_model((6, 4, 3), 0, order="g/n*v")[0], path)
