"""Finding and folding spectral norm in hand-built graphs (issue 19 §3): the forms exporters
write, and look-alikes.

Each folded weight must be bit-identical to :func:`wnconvert.numerics.spectral_fold` of the same
W, u and v (PyTorch's eval-mode ``W / σ``, ``σ = uᵀ·W_mat·v``, in float64, rounded once), the
graph must lose exactly the spectral-norm nodes, and ONNX Runtime must compute the same outputs
from the folded model as from the original. Weight norm beside it folds as before.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from tests.onnx_graph.builders import (
    SN_ORDERS,
    Graph,
    combine,
    expected,
    expected_spectral,
    initializer,
    norm_l2,
    run,
    save,
    spectral_norm_model,
    wn_arrays,
)
from wnconvert.api import check_failure
from wnconvert.errors import WeightNormWarning
from wnconvert.onnx_graph import check_file, fold_file, inspect_file

SHAPES_DIMS = [((6, 4), 0), ((6, 4, 3), 0), ((4, 6, 3), 1), ((3, 4, 5), 2), ((5, 7), 1)]


def fold_and_compare(tmp_path, model, name, want):
    src = save(model, tmp_path / "model.onnx")
    out = tmp_path / "folded.onnx"
    outcome = fold_file(src, out, force=False)
    assert [(layer.name, layer.kind) for layer in outcome.result.layers] == [
        (name, "spectral_norm")]
    got = initializer(out, name)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    x = np.random.default_rng(1).standard_normal(want.shape).astype(want.dtype)
    np.testing.assert_allclose(run(out, {"x": x})[0].astype(np.float64),
                               run(src, {"x": x})[0].astype(np.float64), rtol=1e-3, atol=1e-3)
    assert check_file(out).clean
    return src, out, outcome


@pytest.mark.parametrize("shape,dim", SHAPES_DIMS)
@pytest.mark.parametrize("order", SN_ORDERS)
def test_every_form_and_dim_folds_exactly(tmp_path, shape, dim, order):
    model, weight, u, v = spectral_norm_model(shape, dim, order=order)
    src = save(model, tmp_path / "model.onnx")
    [site] = check_file(src).sites
    assert (site.kind, site.v, site.parameter, site.dim) == (
        "spectral_norm", "layer.parametrizations.weight.original", "layer.weight", dim)
    assert site.foldable and site.spectral is not None
    assert (site.spectral.u, site.spectral.vector) == ("layer.parametrizations.weight.0._u",
                                                       "layer.parametrizations.weight.0._v")
    _, _, outcome = fold_and_compare(tmp_path, model, "layer.weight",
                                     expected_spectral(weight, u, v, dim))
    assert "MatMul" not in outcome.result.ops_after
    removed = {n for n in outcome.result.initializers_removed if not n.startswith("ints_")}
    assert removed == {  # and the matrix shape (ints_N), when there is a Reshape
        "layer.parametrizations.weight.original", "layer.parametrizations.weight.0._u",
        "layer.parametrizations.weight.0._v"}


@pytest.mark.parametrize("style,name", [("legacy", "layer.weight"),
                                        ("parametrize", "layer.weight")])
@pytest.mark.parametrize("shape_by", ["initializer", "concat"])
def test_both_key_styles_and_dynamo_shapes(tmp_path, style, name, shape_by):
    """The dynamo exporter builds the matrix shape with Concat of Constants: those nodes go
    with the chain."""
    model, weight, u, v = spectral_norm_model((4, 6, 3), 1, style=style, shape_by=shape_by)
    _, out, outcome = fold_and_compare(tmp_path, model, name,
                                       expected_spectral(weight, u, v, 1))
    [layer] = outcome.result.layers
    assert layer.sigma == pytest.approx(float(u.astype(np.float64) @ np.moveaxis(
        weight.astype(np.float64), 1, 0).reshape(6, -1) @ v.astype(np.float64)))
    assert set(outcome.result.ops_after) == {"Add"}  # nothing of the chain is left


def test_sigma_from_a_copy_of_the_weight(tmp_path):
    """The TorchScript exporter constant-folds ``weight_orig.reshape(rows, -1)`` into a new
    initializer: σ is read from it, and it goes with the chain."""
    model, weight, u, v = spectral_norm_model((6, 4, 3), 0, style="legacy", copy=True)
    src, out, outcome = fold_and_compare(tmp_path, model, "layer.weight",
                                         expected_spectral(weight, u, v, 0))
    [site] = check_file(src).sites
    assert (site.spectral.matrix, site.dim) == ("onnx::MatMul_7", 0)
    assert "onnx::MatMul_7" in outcome.result.initializers_removed


def test_float16_weights_cast_to_float32_round_once(tmp_path):
    """float16 storage computed in float32 and cast back: one rounding to float16."""
    weight, u, v = (x.astype(np.float16) for x in
                    spectral_norm_model((6, 4), 0)[1:])
    b = Graph()
    names = ("a.weight_orig", "a.weight_u", "a.weight_v")
    for name, array in zip(names, (weight, u, v), strict=True):
        b.init(name, array)
    w32, u32, v32 = (b.cast(name, np.float32) for name in names)
    sigma = b.op("MatMul", u32, b.op("MatMul", w32, v32))
    w = b.cast(b.op("Div", w32, sigma), np.float16)
    fold_and_compare(tmp_path, b.model(w, (6, 4), np.float16), "a.weight",
                     expected_spectral(weight, u, v, 0))


def test_weight_norm_beside_spectral_norm_folds_as_before(tmp_path):
    """A HiFi-GAN-style graph: one spectral-normed weight, one weight-normed one."""
    model, weight, u, v = spectral_norm_model((6, 4), 0, style="legacy")
    g, wv = wn_arrays((6, 4), 0, seed=1)
    b = Graph()
    b.nodes, b.initializers = list(model.graph.node)[:-1], list(model.graph.initializer)
    sn_out = model.graph.node[-2].output[0]
    g_name, v_name = b.init("b.weight_g", g), b.init("b.weight_v", wv)
    wn_out = combine(b, v_name, g_name, norm_l2(b, v_name, [1]), "v/n*g")
    total = b.op("Add", sn_out, wn_out)
    src = save(b.model(total, (6, 4)), tmp_path / "model.onnx")
    kinds = {site.parameter: site.kind for site in check_file(src).sites}
    assert kinds == {"layer.weight": "spectral_norm", "b.weight": "weight_norm"}
    out = tmp_path / "folded.onnx"
    outcome = fold_file(src, out, force=False)
    assert {layer.name: layer.kind for layer in outcome.result.layers} == kinds
    np.testing.assert_array_equal(initializer(out, "layer.weight"),
                                  expected_spectral(weight, u, v, 0))
    np.testing.assert_array_equal(initializer(out, "b.weight"), expected(g, wv, 0))
    assert check_file(out).clean


LOOK_ALIKES = {
    "times σ": dict(order="W*σ"),
    "σ squared": dict(order="W/σ²"),
    "u·u": dict(order="W/dot(u,u)"),
    "other permutation": dict(perm=(1, 2, 0)),  # PyTorch's keeps the rest in order
    "rows of two axes": dict(rows=24),
}


def _look_alike(case: str) -> Graph:
    options = LOOK_ALIKES[case]
    b = Graph()
    weight, u, v = spectral_norm_model((4, 6, 3), 0)[1:]
    w_name, u_name, v_name = (b.init(n, a) for n, a in (("a.weight_orig", weight),
                                                         ("a.weight_u", u), ("a.weight_v", v)))
    perm = options.get("perm")
    mat = b.op("Transpose", w_name, perm=list(perm)) if perm else w_name
    rows = options.get("rows", (weight.shape[perm[0]] if perm else 4))
    mat = b.op("Reshape", mat, b.ints([rows, -1]))
    columns = weight.size // rows
    vec = v_name if columns == v.size else b.init("other_v", np.ones(columns, np.float32))
    mv = b.op("MatMul", mat, vec)
    order = options.get("order", "W/σ")
    if order == "W/dot(u,u)":
        sigma = b.op("MatMul", u_name, u_name)
    else:
        other_u = u_name if mat and rows == u.size else b.init("other_u",
                                                               np.ones(rows, np.float32))
        sigma = b.op("MatMul", other_u, mv)
    if order == "W*σ":
        w = b.op("Mul", w_name, sigma)
    elif order == "W/σ²":
        w = b.op("Div", w_name, b.op("Mul", sigma, sigma))
    else:
        w = b.op("Div", w_name, sigma)
    b.op("Identity", w, out="w")
    return b


@pytest.mark.parametrize("case", sorted(LOOK_ALIKES))
def test_look_alikes_are_left_alone(tmp_path, case):
    b = _look_alike(case)
    src = save(b.model("w", (4, 6, 3)), tmp_path / "model.onnx")
    assert check_file(src).sites == []
    outcome = fold_file(src, tmp_path / "out.onnx", force=False)
    assert outcome.result.layers == []


def test_check_and_inspect_name_spectral_norm(cli, tmp_path):
    model, *_ = spectral_norm_model((6, 4, 3), 0, style="legacy")
    src = save(model, tmp_path / "model.onnx")
    result = cli("check", src)
    assert result.exit_code == 1
    assert "spectral norm at run time: layer.weight" in result.stdout
    assert "computes spectral norm at run time in 1 place(s)" in result.stderr
    failure = check_failure(check_file(src))
    assert failure is not None and "spectral norm" in str(failure)
    data = json.loads(cli("check", src, "--json").stdout)
    [site] = data["weight_norm"]
    assert (site["kind"], site["parameter"], site["original"], site["u"], site["v"]) == (
        "spectral_norm", "layer.weight", "layer.weight_orig", "layer.weight_u",
        "layer.weight_v")
    shown = cli("inspect", src)
    assert shown.exit_code == 0
    assert "spectral norm computed at run time: 1" in shown.stdout
    assert "weight norm computed at run time" not in shown.stdout
    [listed] = inspect_file(src).sites
    assert listed.kind == "spectral_norm"


def test_fold_through_the_cli_verifies_on_onnx_runtime(cli, tmp_path, assert_ok):
    model, weight, u, v = spectral_norm_model((4, 6, 3), 1, shape_by="concat", bias=True)
    src = save(model, tmp_path / "model.onnx")
    result = assert_ok(cli("fold", src))
    assert "verification PASSED" in result.stdout and "layer.weight" in result.stdout
    out = tmp_path / "model.folded.onnx"
    np.testing.assert_array_equal(initializer(out, "layer.weight"),
                                  expected_spectral(weight, u, v, 1))
    data = json.loads(assert_ok(cli("fold", src, "-o", tmp_path / "j.onnx", "--no-verify",
                                    "--json")).stdout)
    [layer] = data["layers"]
    assert (layer["kind"], layer["name"], layer["v"], layer["g"]) == (
        "spectral_norm", "layer.weight", "layer.parametrizations.weight.original", None)
    assert layer["sigma"] > 0
    assert_ok(cli("check", out))


def test_zero_sigma_folds_as_the_graph_computes_with_a_warning(tmp_path):
    """u = 0 gives σ = 0: the graph computes ±inf/NaN, and so does the fold, saying so."""
    model, weight, u, v = spectral_norm_model((6, 4), 0, style="legacy")
    [tensor] = [t for t in model.graph.initializer if t.name == "layer.weight_u"]
    tensor.CopyFrom(onnx.numpy_helper.from_array(np.zeros_like(u), "layer.weight_u"))
    src = save(model, tmp_path / "model.onnx")
    with pytest.warns(WeightNormWarning, match="σ = uᵀ·W·v is 0.0"):
        outcome = fold_file(src, tmp_path / "out.onnx", force=False)
    [layer] = outcome.result.layers
    assert layer.sigma == 0 and layer.nonfinite_rows == 1
    assert not np.isfinite(initializer(tmp_path / "out.onnx", "layer.weight")).any()


@pytest.mark.parametrize("style", ["legacy", "parametrize"])
def test_spectral_norm_the_analysis_cannot_follow_is_not_clean(cli, tmp_path, style):
    """σ through an Einsum: not recognized, but W_orig and u read at run time are reported."""
    original, u_name, v_name = {"legacy": ("a.weight_orig", "a.weight_u", "a.weight_v"),
                                "parametrize": ("a.parametrizations.weight.original",
                                                "a.parametrizations.weight.0._u",
                                                "a.parametrizations.weight.0._v")}[style]
    weight, u, v = spectral_norm_model((6, 4), 0)[1:]
    b = Graph()
    for name, array in ((original, weight), (u_name, u), (v_name, v)):
        b.init(name, array)
    sigma = b.op("Einsum", u_name, original, v_name, equation="i,ij,j->")
    src = save(b.model(b.op("Div", original, sigma), (6, 4)), tmp_path / "model.onnx")
    result = check_file(src)
    assert (result.sites, result.unrecognized_spectral, result.clean) == ([], ["a.weight"], False)
    failure = check_failure(result)
    assert failure is not None and "cannot analyze (a.weight)" in str(failure)
    shown = cli("check", src)
    assert shown.exit_code == 1 and "spectral-norm weight read at run time" in shown.stdout
    folded = save(spectral_norm_model((6, 4), 0, style=style)[0], tmp_path / "ok.onnx")
    assert check_file(folded).unrecognized_spectral == []  # recognized: reported as a site


def test_fold_leaves_spectral_norm_it_cannot_follow_and_says_so(tmp_path):
    """Only an unrecognized spectral norm in the graph: the fold reports it, and the library
    fold refuses (nothing can be folded) naming it."""
    from wnconvert import InputError, fold_onnx

    b = Graph()
    weight, u, v = spectral_norm_model((6, 4), 0)[1:]
    for name, array in (("a.weight_orig", weight), ("a.weight_u", u), ("a.weight_v", v)):
        b.init(name, array)
    sigma = b.op("Einsum", "a.weight_u", "a.weight_orig", "a.weight_v", equation="i,ij,j->")
    src = save(b.model(b.op("Div", "a.weight_orig", sigma), (6, 4)), tmp_path / "model.onnx")
    outcome = fold_file(src, tmp_path / "out.onnx", force=False)
    assert outcome.result.unrecognized_spectral == ["a.weight"]
    assert outcome.to_dict()["unrecognized_spectral_norm"] == ["a.weight"]
    with pytest.raises(InputError, match="a.weight: its spectral-norm weight and u are read"):
        fold_onnx(src, tmp_path / "api.onnx", verify=False)
