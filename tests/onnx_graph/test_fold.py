"""Finding and folding weight norm in hand-built graphs: every pattern, and look-alikes.

Each folded weight must be bit-identical to the checkpoint fold (``numerics.fold``) of the same
g and v, the graph must lose exactly the weight-norm nodes, and ONNX Runtime must compute the
same outputs from the folded model as from the original.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.onnx_graph.builders import (
    NORMS,
    ORDERS,
    Graph,
    combine,
    expected,
    initializer,
    norm_l2,
    run,
    save,
    weight_norm_model,
    wn_arrays,
)
from wnconvert import numerics
from wnconvert.errors import WeightNormWarning
from wnconvert.onnx_graph import check_file, fold_file, inspect_file

SHAPES_DIMS = [((8, 4, 3), 0), ((6, 5), 1), ((4, 3, 5), 2), ((3, 4, 2), -1), ((6, 7), None)]


def fold_and_compare(tmp_path: Path, model: onnx.ModelProto, name: str, want: np.ndarray,
                     *, exact: bool = True) -> tuple[Path, Path]:
    src = save(model, tmp_path / "model.onnx")
    out = tmp_path / "folded.onnx"
    outcome = fold_file(src, out, force=False)
    assert [layer.name for layer in outcome.result.layers] == [name]
    got = initializer(out, name)
    assert got.dtype == want.dtype and got.shape == want.shape
    if exact:
        np.testing.assert_array_equal(got, want)
    x = np.random.default_rng(1).standard_normal(want.shape).astype(want.dtype)
    np.testing.assert_allclose(run(out, {"x": x})[0], run(src, {"x": x})[0], rtol=1e-5,
                               atol=1e-6)
    assert check_file(out).clean
    return src, out


@pytest.mark.parametrize("shape,dim", SHAPES_DIMS)
@pytest.mark.parametrize("order", ORDERS)
def test_every_operand_order_and_dim_folds_exactly(tmp_path, shape, dim, order):
    model, g, v = weight_norm_model(shape, dim, order=order)
    src = save(model, tmp_path / "model.onnx")
    [site] = check_file(src).sites
    assert (site.v, site.parameter) == ("layer.parametrizations.weight.original1", "layer.weight")
    want_dim = None if dim is None else dim % len(shape)
    assert site.dim == want_dim
    fold_and_compare(tmp_path, model, "layer.weight", expected(g, v, dim))


@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize("opset", [11, 13, 17, 18, 21])
def test_every_norm_form_in_every_opset(tmp_path, norm, opset):
    model, g, v = weight_norm_model((6, 4, 3), 0, norm=norm, opset=opset)
    fold_and_compare(tmp_path, model, "layer.weight", expected(g, v, 0))


def test_norm_without_keepdims_reshaped_back_and_one_dimensional_g(tmp_path):
    """keepdims=0 norm (O,) unsqueezed back, g stored 1-D and reshaped: converters do this."""
    g, v = wn_arrays((8, 3, 5), 0)
    b = Graph(13)
    v_name = b.init("conv_v", v)
    g_name = b.init("conv_g", g.reshape(8))
    n = b.unsqueeze(norm_l2(b, v_name, [1, 2], keepdims=0), [1, 2])
    g3 = b.op("Reshape", g_name, b.ints([-1, 1, 1]))
    w = b.op("Mul", b.op("Div", b.op("Identity", v_name), n), g3)
    fold_and_compare(tmp_path, b.model(w, v.shape), "conv", expected(g, v, 0))


def test_converter_style_flatten_squeeze_expand(tmp_path):
    """v flattened to 2-D for the norm, norm squeezed and unsqueezed, g expanded to v's shape."""
    g, v = wn_arrays((8, 3, 5), 0)
    b = Graph(13)
    v_name = b.init("block.conv.weight_v", v)
    g_name = b.init("block.conv.weight_g", g.reshape(8))
    flat = b.op("Flatten", v_name, axis=1)
    n = b.op("Squeeze", norm_l2(b, flat, [1]), b.ints([1]))
    n3 = b.unsqueeze(n, [1, 2])
    g3 = b.op("Expand", b.unsqueeze(g_name, [1, 2]), b.ints([8, 3, 5]))
    w = b.op("Mul", b.op("Div", v_name, n3), g3)
    src, _ = fold_and_compare(tmp_path, b.model(w, v.shape), "block.conv.weight",
                              expected(g, v, 0))
    [site] = check_file(src).sites
    assert sorted(site.op_types) == ["Div", "Expand", "Flatten", "Mul", "ReduceL2", "Squeeze",
                                     "Unsqueeze", "Unsqueeze"]


@pytest.mark.parametrize("shape,dim,flat_axis", [((8, 3, 5), 0, 1), ((4, 6), 1, 0)])
def test_lp_normalization_with_reshapes(tmp_path, shape, dim, flat_axis):
    """LpNormalization normalizes along one axis: v is reshaped to 2-D around it and back."""
    g, v = wn_arrays(shape, dim)
    b = Graph(13)
    v_name, g_name = b.init("lin_v", v), b.init("lin_g", g)
    if len(shape) == 2:
        normalized = b.op("LpNormalization", v_name, axis=flat_axis, p=2)
    else:
        flat = b.op("Reshape", v_name, b.ints([shape[0], -1]))
        normalized = b.op("LpNormalization", flat, axis=1, p=2)
        normalized = b.op("Reshape", normalized, b.ints(list(shape)))
    w = b.op("Mul", normalized, g_name)
    src, _ = fold_and_compare(tmp_path, b.model(w, shape), "lin", expected(g, v, dim))
    assert [s.dim for s in check_file(src).sites] == [dim]


def test_whole_tensor_norm_through_flatten(tmp_path):
    """dim=None as the dynamo exporter writes it: Reshape(v, [-1]) -> ReduceL2, 0-d g."""
    g, v = wn_arrays((6, 7), None)
    b = Graph(18)
    v_name, g_name = b.init("whole.weight_v", v), b.init("whole.weight_g", g)
    n = b.reduce("ReduceL2", b.op("Reshape", v_name, b.ints([-1])), None, keepdims=0)
    w = b.op("Mul", v_name, b.op("Div", g_name, n))
    fold_and_compare(tmp_path, b.model(w, v.shape), "whole.weight", expected(g, v, None))


def test_constant_nodes_as_g_and_v(tmp_path):
    g, v = wn_arrays((5, 4), 0)
    b = Graph(18)
    v_name, g_name = b.const(v, "v_const"), b.const(g, "g_const")
    w = combine(b, v_name, g_name, norm_l2(b, v_name, [1]), "v/n*g")
    src, out = fold_and_compare(tmp_path, b.model(w, v.shape), w, expected(g, v, 0))
    assert [n.op_type for n in onnx.load(str(out)).graph.node] == ["Add"]


@pytest.mark.parametrize("storage", [np.float16, np.float32])
def test_casts_to_and_from_float16_round_once(tmp_path, storage):
    """f16 weights computed in f32 and cast back (or f32 computed in f16): one rounding."""
    compute = np.float32 if storage == np.float16 else np.float16
    g, v = wn_arrays((8, 6, 3), 0, dtype=storage)
    b = Graph(18)
    v_name = b.init("m.parametrizations.weight.original1", v)
    g_name = b.init("m.parametrizations.weight.original0", g)
    v_c, g_c = b.cast(v_name, compute), b.cast(g_name, compute)
    w = b.cast(combine(b, v_c, g_c, norm_l2(b, v_c, [1, 2]), "v/n*g"), storage)
    model = b.model(w, v.shape, storage)
    src = save(model, tmp_path / "model.onnx")
    out = tmp_path / "folded.onnx"
    fold_file(src, out, force=False)
    got = initializer(out, "m.weight")
    assert got.dtype == storage
    # Values are v as the graph sees it (f32 -> f16 rounds v first), folded in float64 and
    # rounded once to the narrowest type the graph computes in.
    v_seen = v.astype(np.float16).astype(storage) if compute == np.float16 else v
    g_seen = g.astype(np.float16).astype(storage) if compute == np.float16 else g
    want = numerics.fold(g_seen.astype(np.float64), v_seen.astype(np.float64), 0)[0]
    want = numerics.round_from_float64(want, np.float16).astype(storage)
    np.testing.assert_array_equal(got, want)
    assert [n.op_type for n in onnx.load(str(out)).graph.node] == ["Add"]
    x = np.zeros(v.shape, dtype=storage)
    np.testing.assert_allclose(run(out, {"x": x})[0].astype(np.float32),
                               run(src, {"x": x})[0].astype(np.float32), rtol=2e-3, atol=1e-3)


def test_bfloat16_weights(tmp_path):
    import ml_dtypes

    g, v = wn_arrays((4, 8), 0)
    bf16 = np.dtype(ml_dtypes.bfloat16)
    g, v = g.astype(bf16), v.astype(bf16)
    b = Graph(18)
    v_name, g_name = b.init("p_v", v), b.init("p_g", g)
    w = combine(b, v_name, g_name, norm_l2(b, v_name, [1]), "g/n*v")
    b.model(w, v.shape)  # the Add consumer is not run (ORT CPU lacks bf16 Add); fold only
    src = save(onnx.helper.make_model(
        onnx.helper.make_graph(b.nodes[:-1], "g", [], [onnx.helper.make_tensor_value_info(
            w, onnx.TensorProto.BFLOAT16, list(v.shape))], initializer=b.initializers),
        opset_imports=[onnx.helper.make_opsetid("", 18)]), tmp_path / "bf16.onnx")
    [site] = check_file(src).sites
    assert site.root == w  # a graph output keeps its name (the model's interface)
    out = tmp_path / "folded.onnx"
    fold_file(src, out, force=False)
    np.testing.assert_array_equal(initializer(out, w).view(np.uint16),
                                  expected(g, v, 0).view(np.uint16))


# -- look-alikes that are not weight norm must be left alone -----------------------------------


def not_weight_norm_models() -> dict[str, onnx.ModelProto]:
    g, v = wn_arrays((6, 4, 3), 0)
    _, u = wn_arrays((6, 4, 3), 0, seed=7)
    models = {}

    b = Graph()
    v_name, g_name = b.init("v", v), b.init("g", g)
    n = norm_l2(b, v_name, [2])  # keeps two axes: a per-(out, in) norm, not weight norm
    models["norm over one axis of three"] = b.model(combine(b, v_name, g_name, n, "v/n*g"),
                                                    v.shape)

    b = Graph()
    v_name, u_name, g_name = b.init("v", v), b.init("u", u), b.init("g", g)
    n = norm_l2(b, u_name, [1, 2])  # the norm of another tensor
    models["norm of another tensor"] = b.model(combine(b, v_name, g_name, n, "v/n*g"), v.shape)

    b = Graph()
    v_name = b.init("v", v)
    models["no g"] = b.model(b.op("Div", v_name, norm_l2(b, v_name, [1, 2])), v.shape)

    b = Graph()
    v_name = b.init("v", v)
    g_wrong = b.init("g", (np.random.default_rng(2).random((1, 4, 1)) + 0.5).astype(np.float32))
    models["g along another axis"] = b.model(
        combine(b, v_name, g_wrong, norm_l2(b, v_name, [1, 2]), "v/n*g"), v.shape)

    b = Graph()
    v_name, g_name = b.init("v", v), b.init("g", g)
    eps = b.const(np.array(1e-12, dtype=np.float32))
    n = b.op("Sqrt", b.op("Add", b.reduce("ReduceSumSquare", v_name, [1, 2]), eps))
    models["norm plus epsilon"] = b.model(combine(b, v_name, g_name, n, "v/n*g"), v.shape)

    b = Graph()  # an activation's norm: x / ||x|| * g at run time
    g_name = b.init("g", g)
    n = norm_l2(b, "x", [1, 2])
    models["activation norm"] = b.model(combine(b, "x", g_name, n, "v/n*g"), v.shape)

    b = Graph()  # the norm of a constant scales an input
    v_name = b.init("v", v)
    n = norm_l2(b, v_name, [0, 1, 2])
    models["constant norm scales an input"] = b.model(b.op("Div", "x", n), v.shape)

    b = Graph()  # sqrt(v^2) is |v|, not v
    v_name, g_name = b.init("v", v), b.init("g", g)
    two = b.const(np.array(2.0, dtype=np.float32))
    abs_v = b.op("Sqrt", b.op("Pow", v_name, two))
    ss = b.reduce("ReduceSumSquare", v_name, [1, 2])
    models["abs(v) instead of v"] = b.model(
        b.op("Mul", b.op("Mul", abs_v, g_name), b.op("Reciprocal", b.op("Sqrt", ss))), v.shape)
    return models


@pytest.mark.parametrize("case", list(not_weight_norm_models()))
def test_look_alikes_are_left_alone(tmp_path, case):
    model = not_weight_norm_models()[case]
    src = save(model, tmp_path / "model.onnx")
    assert check_file(src).clean
    assert inspect_file(src).sites == []


# -- the rest of the graph ----------------------------------------------------------------------


def test_everything_else_is_unchanged(tmp_path):
    """Node order and names, other initializers, metadata, opsets and doc strings survive."""
    g, v = wn_arrays((8, 4, 3), 0)
    b = Graph(17)
    v_name = b.init("enc.parametrizations.weight.original1", v)
    g_name = b.init("enc.parametrizations.weight.original0", g)
    b.init("unrelated", np.arange(5, dtype=np.float32))
    b.op("Relu", "x", out="early")
    w = combine(b, v_name, g_name, norm_l2(b, v_name, [1, 2]), "v*(g/n)")
    model = b.model(w, v.shape)
    model.graph.node[0].doc_string = "keep me"
    model.graph.output.append(onnx.helper.make_tensor_value_info("early", 1, list(v.shape)))
    model.graph.value_info.append(onnx.helper.make_tensor_value_info(w, 1, list(v.shape)))
    onnx.helper.set_model_props(model, {"author": "tests"})
    model.doc_string = "model doc"
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 3))
    src = save(model, tmp_path / "model.onnx")
    before = src.read_bytes()
    out = tmp_path / "folded.onnx"
    outcome = fold_file(src, out, force=False)
    assert src.read_bytes() == before  # the input is never touched
    folded = onnx.load(str(out))
    onnx.checker.check_model(folded)
    original = onnx.load(str(src))
    kept = [n for n in original.graph.node if n.op_type in ("Relu", "Add")]
    assert [(n.name, n.op_type, n.doc_string) for n in folded.graph.node] == [
        (n.name, n.op_type, n.doc_string) for n in kept]
    assert folded.graph.node[-1].input[1] == "enc.weight"
    assert [t.name for t in folded.graph.initializer] == ["enc.weight", "unrelated"]
    assert folded.metadata_props == original.metadata_props
    assert folded.opset_import == original.opset_import
    assert (folded.doc_string, folded.producer_name, folded.ir_version) == (
        original.doc_string, original.producer_name, original.ir_version)
    assert [vi.name for vi in folded.graph.value_info] == ["enc.weight"]
    assert list(folded.graph.output) == list(original.graph.output)
    layer = outcome.result.layers[0]
    assert (layer.nodes_removed, sorted(layer.ops_removed)) == (3, ["Div", "Mul", "ReduceL2"])
    assert outcome.result.ops_before == {"Add": 1, "Div": 1, "Mul": 1, "ReduceL2": 1, "Relu": 1}
    assert outcome.result.ops_after == {"Add": 1, "Relu": 1}


def test_nothing_to_fold_writes_the_same_bytes(tmp_path):
    b = Graph()
    b.init("w", np.ones((2, 3), dtype=np.float32))
    src = save(b.model("w", (2, 3)), tmp_path / "plain.onnx")
    out = tmp_path / "copy.onnx"
    outcome = fold_file(src, out, force=False)
    assert outcome.result.layers == []
    assert out.read_bytes() == src.read_bytes()


def test_a_shared_norm_keeps_its_nodes(tmp_path):
    """If ||v|| is also used elsewhere, only the nodes nothing else needs are removed."""
    g, v = wn_arrays((6, 5), 0)
    b = Graph()
    v_name, g_name = b.init("v", v), b.init("g", g)
    n = norm_l2(b, v_name, [1])
    w = combine(b, v_name, g_name, n, "v/n*g")
    model = b.model(w, v.shape, extra_outputs=[(n, (6, 1), np.float32)])
    src = save(model, tmp_path / "model.onnx")
    out = tmp_path / "folded.onnx"
    outcome = fold_file(src, out, force=False)
    ops = [node.op_type for node in onnx.load(str(out)).graph.node]
    assert sorted(ops) == ["Add", "ReduceL2"]
    assert outcome.result.layers[0].nodes_removed == 2
    names = [t.name for t in onnx.load(str(out)).graph.initializer]
    assert "g" not in names and names[:2] == ["v", w]  # v still feeds the norm
    x = np.zeros(v.shape, dtype=np.float32)
    for got, want in zip(run(out, {"x": x}), run(src, {"x": x}), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_tied_v_stays_and_two_chains_share_one_weight(tmp_path):
    """The same weight computed twice folds to one initializer; a v used elsewhere stays."""
    g, v = wn_arrays((6, 5), 0)
    b = Graph()
    v_name, g_name = b.init("tied_v", v), b.init("tied_g", g)
    w1 = combine(b, v_name, g_name, norm_l2(b, v_name, [1]), "v/n*g")
    w2 = combine(b, v_name, g_name, norm_l2(b, v_name, [1]), "v/n*g")
    both = b.op("Add", w1, w2)
    extra = b.op("Neg", v_name, out="neg_v")
    model = b.model(both, v.shape, extra_outputs=[(extra, v.shape, np.float32)])
    src = save(model, tmp_path / "model.onnx")
    assert len(check_file(src).sites) == 2
    out = tmp_path / "folded.onnx"
    outcome = fold_file(src, out, force=False)
    folded = onnx.load(str(out))
    assert [layer.name for layer in outcome.result.layers] == ["tied"]
    assert sorted(t.name for t in folded.graph.initializer) == ["tied", "tied_v"]
    assert [n.op_type for n in folded.graph.node] == ["Add", "Neg", "Add"]
    assert list(folded.graph.node[0].input) == ["tied", "tied"]
    np.testing.assert_array_equal(initializer(out, "tied"), expected(g, v, 0))


def test_parameter_name_taken_keeps_the_value_name(tmp_path):
    g, v = wn_arrays((4, 3), 0)
    b = Graph()
    v_name, g_name = b.init("fc_v", v), b.init("fc_g", g)
    b.init("fc", np.zeros(1, dtype=np.float32))  # a tensor already has the parameter's name
    b.op("Identity", "fc", out="fc_out")
    w = combine(b, v_name, g_name, norm_l2(b, v_name, [1]), "v/n*g")
    model = b.model(w, v.shape, extra_outputs=[("fc_out", (1,), np.float32)])
    out = tmp_path / "folded.onnx"
    outcome = fold_file(save(model, tmp_path / "model.onnx"), out, force=False)
    assert outcome.result.layers[0].name == w


def test_zero_norm_rows_fold_to_zeros_with_a_warning(tmp_path):
    model, g, v = weight_norm_model((4, 3), 0)
    v[1] = 0
    v_tensor = model.graph.initializer[1]
    v_tensor.CopyFrom(onnx.numpy_helper.from_array(v, v_tensor.name))
    src = save(model, tmp_path / "model.onnx")
    with pytest.warns(WeightNormWarning, match="zero norm"):
        outcome = fold_file(src, tmp_path / "folded.onnx", force=False)
    got = initializer(tmp_path / "folded.onnx", "layer.weight")
    assert not got[1].any() and np.isfinite(got).all()
    assert outcome.result.layers[0].zero_norm_rows == 1


@pytest.mark.parametrize("dim", [0, 1, None])
def test_folded_weights_match_pytorch(tmp_path, dim):
    """Independent reference: torch._weight_norm in float64, rounded to float32."""
    import torch

    shape = (6, 5, 3)
    model, g, v = weight_norm_model(shape, dim, order="g/n*v")
    out = tmp_path / "folded.onnx"
    fold_file(save(model, tmp_path / "model.onnx"), out, force=False)
    torch_dim = -1 if dim is None else dim
    ref = torch._weight_norm(torch.from_numpy(v).double(), torch.from_numpy(g).double(),
                             torch_dim).float().numpy()
    # Both are float64 computations rounded once; summation order may differ in the last bit.
    np.testing.assert_array_max_ulp(initializer(out, "layer.weight"), ref, maxulp=1)
