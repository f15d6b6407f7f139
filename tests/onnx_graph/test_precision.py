"""``onnx_graph/precision.py``: a float32 graph converted to float16/bfloat16 (issue 20 §1).

Weights are rounded once (from float64 where the fold has it), an overflow is refused, an
underflow counted; the block list stays float32 behind Casts; inputs and outputs stay float32
with ``keep_io_types``; the converted graph passes onnx.checker, strict shape inference and
ONNX Runtime.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from wnconvert.errors import InputError
from wnconvert.numerics import round_from_float64
from wnconvert.onnx_graph.precision import (
    BLOCK_LIST,
    apply_precision,
    computes_in,
    convert_model,
    round_onto_grid,
)

FLOAT, FLOAT16, BFLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16


def _conv_model(weight: np.ndarray | None = None) -> onnx.ModelProto:
    """Conv -> LeakyRelu -> Pow/ReduceSum (an in-graph norm) -> Softmax, with a Constant and
    a ConstantOfShape: every kind of float the conversion touches."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 4, 3)).astype(np.float32) if weight is None else weight
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
        helper.make_node("LeakyRelu", ["c"], ["r"], alpha=0.1, name="relu"),
        helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(
            np.array(2.0, np.float32)), name="two"),
        helper.make_node("Pow", ["r", "two"], ["sq"], name="pow"),
        helper.make_node("ReduceSum", ["sq", "axes"], ["s"], keepdims=1, name="sum"),
        helper.make_node("Add", ["r", "s"], ["a"], name="add"),
        helper.make_node("Softmax", ["a"], ["y"], axis=-1, name="softmax"),
        helper.make_node("Shape", ["a"], ["shape"], name="shape"),
        helper.make_node("ConstantOfShape", ["shape"], ["ones"], name="ones",
                         value=numpy_helper.from_array(np.ones(1, np.float32))),
        helper.make_node("Mul", ["a", "ones"], ["z"], name="mul"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", FLOAT, [1, 4, 16])],
        [helper.make_tensor_value_info("y", FLOAT, [1, 6, 14]),
         helper.make_tensor_value_info("z", FLOAT, [1, 6, 14])],
        [numpy_helper.from_array(w, "w"),
         numpy_helper.from_array(np.linspace(-1, 1, 6).astype(np.float32), "b"),
         numpy_helper.from_array(np.array([1], np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    graph = inferred.graph
    return {v.name: v.type.tensor_type.elem_type
            for v in [*graph.input, *graph.output, *graph.value_info]}


@pytest.mark.parametrize("keep", [True, False])
def test_fp16_runs_on_ort_close_to_float32_with_io_types_as_asked(keep: bool) -> None:
    model = _conv_model()
    x = np.random.default_rng(1).standard_normal((1, 4, 16)).astype(np.float32)
    want = _run(model, x)
    report = apply_precision(model, "fp16", keep_io_types=keep)  # checker + strict inference
    edge = FLOAT if keep else FLOAT16
    assert [v.type.tensor_type.elem_type for v in model.graph.input] == [edge]
    assert [v.type.tensor_type.elem_type for v in model.graph.output] == [edge, edge]
    assert {t.name: t.data_type for t in model.graph.initializer} == {
        "w": FLOAT16, "b": FLOAT16, "axes": TensorProto.INT64}
    got = _run(model, x if keep else x.astype(np.float16))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g.astype(np.float32), w, atol=1e-3, rtol=1e-2)
    assert report.to_dict()["kept_float32"] == {"Pow": 1, "ReduceSum": 1, "Softmax": 1}
    assert computes_in(model) == "float16"


def test_block_list_ops_compute_in_float32_behind_casts() -> None:
    model = _conv_model()
    apply_precision(model, "fp16", keep_io_types=True)
    types = _types(model)
    by_name = {node.name: node for node in model.graph.node}
    for name in ("pow", "sum", "softmax"):
        node = by_name[name]
        assert node.op_type in BLOCK_LIST
        float_inputs = [i for i in node.input if types.get(i) in (FLOAT, FLOAT16)]
        assert float_inputs and all(types[i] == FLOAT for i in float_inputs), node
    for name in ("conv", "relu", "add", "mul"):
        assert types[by_name[name].output[0]] == FLOAT16
    # The Constant feeding only Pow (float32) stays float32; ConstantOfShape's value follows
    # its (converted) node.
    assert by_name["ones"].attribute[0].t.data_type == FLOAT16
    assert types["two"] in (FLOAT, FLOAT16)


def test_bf16_types_and_bits() -> None:
    model = _conv_model()
    w = numpy_helper.to_array(model.graph.initializer[0])
    apply_precision(model, "bf16", keep_io_types=False)
    stored = model.graph.initializer[0]
    assert stored.data_type == BFLOAT16
    bits = np.frombuffer(stored.raw_data, np.uint16)
    want = round_from_float64(w.astype(np.float64), "bfloat16").view(np.uint16).reshape(-1)
    np.testing.assert_array_equal(bits, want)
    assert _types(model)["y"] == BFLOAT16


def test_weights_are_rounded_once_from_their_float64_value() -> None:
    # 1 + 2**-11 + 2**-40 lies just above a float16 midpoint: float64 -> float16 rounds up;
    # through float32 it first lands on the midpoint, then ties to even: down. Double rounding.
    x64 = np.full((6, 4, 3), 1 + 2.0**-11 + 2.0**-40)
    once = round_from_float64(x64, "float16")
    twice = round_from_float64(x64.astype(np.float32).astype(np.float64), "float16")
    assert not np.array_equal(once, twice)
    model = _conv_model(x64.astype(np.float32))
    report = convert_model(model, "fp16", float64={"w": x64})
    np.testing.assert_array_equal(numpy_helper.to_array(model.graph.initializer[0]), once)
    assert report.from_float64 == 1
    # A float64 value that is not the one the file holds (another tensor's) is not used.
    model = _conv_model(x64.astype(np.float32))
    report = convert_model(model, "fp16", float64={"w": x64 + 1})
    np.testing.assert_array_equal(numpy_helper.to_array(model.graph.initializer[0]), twice)
    assert report.from_float64 == 0


def test_round_onto_grid_stores_the_single_rounding_in_float32() -> None:
    x64 = np.array([1 + 2.0**-11 + 2.0**-40, 1e5, 1e-9, 0.0, -3.0])
    grid = round_onto_grid(x64, np.dtype(np.float32), "float16")
    assert grid.dtype == np.float32
    assert grid[0] == np.float32(1 + 2.0**-10)  # the single rounding, exact in float32
    # Overflow and underflow are left as float32 for the conversion to refuse or count.
    assert grid[1] == np.float32(1e5) and grid[2] == np.float32(1e-9)
    assert grid[3] == 0 and grid[4] == -3


def test_an_overflowing_weight_is_refused_naming_it() -> None:
    weight = np.ones((6, 4, 3), np.float32)
    weight[0, 0, 0] = 70000.0
    with pytest.raises(InputError, match=r"^w: 1 value\(s\) \(up to 70000\) exceed float16"):
        convert_model(_conv_model(weight), "fp16")
    convert_model(_conv_model(weight), "bf16")  # bfloat16's range holds it


def test_underflow_is_counted_with_its_largest_relative_change() -> None:
    weight = np.ones((6, 4, 3), np.float32)
    weight[0, 0, :] = [1e-9, 3e-6, 1e-4]  # to zero, to a subnormal, normal
    report = convert_model(_conv_model(weight), "fp16")
    data = report.to_dict()
    assert data["underflow"]["count"] == 2 and data["underflow"]["tensors"] == ["w"]
    assert data["underflow"]["max_rel_change"] == 1.0  # flushed to zero
    assert "2 nonzero weight value(s) in 1 tensor(s) became zero or subnormal" in (
        report.notes()[1])
    assert data["overflow"] == 0 and data["values"] == 72 + 6 + 1 + 1


def test_cast_to_float32_follows_the_conversion() -> None:
    nodes = [helper.make_node("Cast", ["x"], ["c"], to=FLOAT, name="cast"),
             helper.make_node("Mul", ["c", "w"], ["y"], name="mul")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.INT64,
                                                                         [3])],
                              [helper.make_tensor_value_info("y", FLOAT, [3])],
                              [numpy_helper.from_array(np.ones(3, np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    apply_precision(model, "fp16", keep_io_types=True)
    assert model.graph.node[0].attribute[0].i == FLOAT16
    out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]
                               ).run(None, {"x": np.array([1, 2, 3], np.int64)})[0]
    assert out.dtype == np.float32 and out.tolist() == [1, 2, 3]


def test_bf16_is_refused_naming_the_ops_the_provider_cannot_run() -> None:
    with pytest.raises(InputError, match="bf16: CPUExecutionProvider has no bfloat16 kernel "
                                         "for .*; use fp16 or a provider that runs bf16"):
        apply_precision(_conv_model(), "bf16", keep_io_types=True,
                        providers=["CPUExecutionProvider"])


def test_ours_changes_no_value_where_onnxconverter_common_clamps() -> None:
    """onnxconverter-common's convert_float_to_float16 clamps weights into [1e-7, 1e4] (a
    Python warning per tensor, the clamped values written); ours rounds (1e-8 flushes to zero:
    counted) and keeps 2e4, a float16 number."""
    from onnxconverter_common import float16

    weight = np.ones((6, 4, 3), np.float32)
    weight[0, 0, :] = [2e4, 1e-8, 5e-7]
    with pytest.warns(UserWarning, match="truncated"):
        theirs = float16.convert_float_to_float16(_conv_model(weight), keep_io_types=True)
    their_w = next(numpy_helper.to_array(t) for t in theirs.graph.initializer if t.name == "w")
    assert their_w[0, 0, 0] == 1e4  # clamped: half the value, silently
    ours = _conv_model(weight)
    report = convert_model(ours, "fp16")
    our_w = numpy_helper.to_array(ours.graph.initializer[0])
    assert our_w[0, 0, 0] == 2e4 and our_w[0, 0, 1] == 0
    assert our_w[0, 0, 2] == np.float16(5e-7)  # a subnormal, as close as float16 gets
    assert report.underflow == 2
