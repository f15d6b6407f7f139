"""Weight norm the main-graph analysis does not see by itself (``onnx_graph.hidden``):

* inside model-local functions: found, reported and folded (the functions are inlined);
* inside If/Loop bodies: reported, never folded;
* through ops the analysis does not follow: a g/v pair read at run time is reported.

Functions whose inlined size is out of bounds (or recursive) are refused before anything inlines.

In each case ``check`` cannot call the model clean.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx.inliner  # patched below: not imported by `import onnx`
import pytest

from tests.onnx_graph.builders import (
    expected,
    function_bomb_model,
    function_model,
    if_model,
    initializer,
    run,
    save,
    transposed_norm_model,
    weight_norm_model,
)
from wnconvert import api
from wnconvert.errors import InputError
from wnconvert.onnx_graph import check_file, fold_file, inspect_file


@pytest.mark.parametrize("nested", [False, True])
def test_weight_norm_inside_a_function_is_found_and_folded(tmp_path: Path, nested: bool) -> None:
    model, g, v = function_model(nested=nested)
    onnx.checker.check_model(model, full_check=True)
    path = save(model, tmp_path / "model.onnx")
    names = ["local.Layer", "local.WeightNorm"] if nested else ["local.WeightNorm"]

    result = check_file(path)
    assert not result.clean and len(result.sites) == 1
    assert result.sites[0].to_dict()["parameter"] == "layer.weight"
    assert sorted(result.to_dict()["inlined_functions"]) == names
    assert inspect_file(path).to_dict()["inlined_functions"] == result.to_dict()[
        "inlined_functions"]

    out = tmp_path / "folded.onnx"
    outcome = fold_file(path, out, force=False)
    assert sorted(outcome.to_dict()["inlined_functions"]) == names
    assert check_file(out).clean
    folded = onnx.load(str(out))
    assert not any(node.domain == "local" for node in folded.graph.node)
    np.testing.assert_array_equal(initializer(out, "layer.weight"), expected(g, v, 0))
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    np.testing.assert_allclose(run(out, {"x": x})[0], run(path, {"x": x})[0], rtol=1e-6,
                               atol=1e-6)


def test_functions_without_weight_norm_are_kept_as_written(tmp_path: Path) -> None:
    path = save(function_model(weight_norm=False)[0], tmp_path / "model.onnx")
    result = check_file(path)
    assert result.clean and result.to_dict()["inlined_functions"] == []
    out = tmp_path / "copy.onnx"
    fold_file(path, out, force=False)
    assert [f.name for f in onnx.load(str(out)).functions] == ["WeightNorm"]


def test_cli_check_fails_and_says_where(tmp_path: Path, cli) -> None:
    path = save(function_model()[0], tmp_path / "model.onnx")
    result = cli("check", path)
    assert result.exit_code == 1
    assert "inside model-local function(s) local.WeightNorm" in result.stdout
    data = json.loads(cli("check", path, "--json").stdout)
    assert data["clean"] is False and data["inlined_functions"] == ["local.WeightNorm"]


def test_functions_that_cannot_be_inlined_are_an_input_error(tmp_path: Path,
                                                             monkeypatch) -> None:
    from onnx import inliner

    def fail(model: onnx.ModelProto) -> onnx.ModelProto:
        raise RuntimeError("recursive function")

    monkeypatch.setattr(inliner, "inline_local_functions", fail)
    path = save(function_model()[0], tmp_path / "model.onnx")
    with pytest.raises(InputError, match="cannot be inlined .*recursive function"):
        check_file(path)


@pytest.mark.parametrize("loop", [False, True], ids=["if", "loop"])
def test_weight_norm_in_a_subgraph_is_reported_not_folded(tmp_path: Path, loop: bool) -> None:
    model, _, _ = if_model(loop=loop)
    onnx.checker.check_model(model, full_check=True)
    path = save(model, tmp_path / "model.onnx")
    holder = "loop/body" if loop else "if/then"

    [site] = check_file(path).sites
    data = site.to_dict()
    assert data["parameter"] == "layer.weight" and data["foldable"] is False
    assert f"inside the subgraph {holder}" in data["reason"]
    assert all(node.startswith(f"{holder}/") for node in data["nodes"])
    assert inspect_file(path).to_dict()["weight_norm"] == [data]
    outcome = fold_file(path, tmp_path / "out.onnx", force=False)
    assert not outcome.result.changed
    assert [skipped.to_dict() for skipped in outcome.result.skipped] == [data]


def test_cli_check_fails_and_fold_says_it_cannot_help(tmp_path: Path, cli) -> None:
    path = save(if_model()[0], tmp_path / "model.onnx")
    result = cli("check", path)
    assert result.exit_code == 1
    assert "1 of them cannot be folded, see wnconvert inspect" in result.stderr
    result = cli("fold", path, "-o", tmp_path / "out.onnx")
    assert result.exit_code == 2 and "none can be folded" in result.stderr
    assert "inside the subgraph if/then" in result.stderr
    assert not (tmp_path / "out.onnx").exists()


def test_a_pair_read_by_an_unrecognized_computation_is_not_clean(tmp_path: Path, cli) -> None:
    model = transposed_norm_model()
    onnx.checker.check_model(model, full_check=True)
    path = save(model, tmp_path / "model.onnx")
    result = check_file(path)
    assert result.sites == [] and not result.clean
    assert [pair.parameter for pair in result.unrecognized_pairs] == ["layer.weight"]
    [pair] = inspect_file(path).to_dict()["pairs"]
    assert pair["read_unrecognized"] is True and pair["computed_by"] is None

    checked = cli("check", path)
    assert checked.exit_code == 1 and "cannot analyze (layer.weight)" in checked.stderr
    folded = cli("fold", path, "-o", tmp_path / "out.onnx")
    assert folded.exit_code == 2 and "none can be folded" in folded.stderr
    assert not (tmp_path / "out.onnx").exists()


def test_pairs_that_are_folded_or_unused_are_not_reported(tmp_path: Path) -> None:
    path = save(weight_norm_model((4, 3), 0, names=("a.weight_g", "a.weight_v"))[0],
                tmp_path / "model.onnx")
    assert check_file(path).unrecognized_pairs == []
    [pair] = inspect_file(path).to_dict()["pairs"]
    assert pair["read_unrecognized"] is False and pair["computed_by"] is not None
    folded = tmp_path / "folded.onnx"
    fold_file(path, folded, force=False)
    assert check_file(folded).clean


def _must_not_run(*args: object, **kwargs: object) -> None:
    raise AssertionError("ran on a model that should have been refused first")


@pytest.fixture
def no_inlining(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnx.checker (which inlines every call while inferring shapes) and the inliner fail the
    test if called: a function bomb must be refused from its declarations, before either."""
    monkeypatch.setattr(onnx.checker, "check_model", _must_not_run)
    monkeypatch.setattr(onnx.inliner, "inline_local_functions", _must_not_run)


def _bomb_entry_points(tmp_path: Path) -> list:
    return [check_file, inspect_file,
            lambda p: fold_file(p, tmp_path / "out.onnx", force=False),
            lambda p: api.verify(p, p)]


@pytest.mark.usefixtures("no_inlining")
def test_a_function_call_bomb_is_refused_before_anything_inlines(tmp_path: Path, cli) -> None:
    # 60 levels, each calling the next twice: a 4 KB file, 2^59 nodes inlined.
    path = save(function_bomb_model(60), tmp_path / "bomb.onnx")
    assert path.stat().st_size < 8192
    for run_it in _bomb_entry_points(tmp_path):
        with pytest.raises(InputError, match="2\\^59 nodes once inlined") as caught:
            run_it(path)
        assert str(path) in str(caught.value) and "10,000,000" in str(caught.value)
    for args in (("check", path), ("inspect", path), ("fold", path, "-o", tmp_path / "o.onnx"),
                 ("verify", path, "--reference", path)):
        result = cli(*args)
        assert result.exit_code == 2, result.output
        [line] = result.stderr.strip().splitlines()
        assert "2^59 nodes once inlined" in line and "without local functions" in line
    assert not (tmp_path / "o.onnx").exists() and not (tmp_path / "out.onnx").exists()


@pytest.mark.usefixtures("no_inlining")
@pytest.mark.parametrize("depth", [1, 3])
def test_a_recursive_function_is_refused(tmp_path: Path, cli, depth: int) -> None:
    path = save(function_bomb_model(depth, recursive=True), tmp_path / "loop.onnx")
    for run_it in _bomb_entry_points(tmp_path):
        with pytest.raises(InputError, match="function bomb.F0 calls itself"):
            run_it(path)
    result = cli("check", path)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "cannot be recursive" in result.stderr


def test_inlined_size_counts_calls_in_functions_and_subgraphs(tmp_path: Path) -> None:
    """Counted from the declarations: every call expanded, If bodies and function bodies too;
    the largest of the main graph and the functions is reported."""
    from wnconvert.onnx_graph.hidden import inlined_node_counts

    model = function_bomb_model(4)  # F3: 1 node, F0: 8
    assert inlined_node_counts(tmp_path, model) == (8, "the main graph")
    # The main graph calls F0 from both branches of an If (1 + 8 + 8), F1 twice directly.
    out = onnx.helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [2])
    branch = onnx.helper.make_graph(
        [onnx.helper.make_node("F0", ["x"], ["b"], domain="bomb")], "branch", [], [out])
    model.graph.node.extend([
        onnx.helper.make_node("If", ["c"], ["z"], then_branch=branch, else_branch=branch),
        onnx.helper.make_node("F1", ["x"], ["u"], domain="bomb"),
        onnx.helper.make_node("F1", ["u"], ["v"], domain="bomb")])
    assert inlined_node_counts(tmp_path, model) == (8 + 17 + 8, "the main graph")
    # A function called nowhere still counts (the checker checks every function's body).
    unused = onnx.helper.make_function(
        "bomb", "Unused", ["a"], ["b"],
        [onnx.helper.make_node("F0", ["a"], ["t"], domain="bomb")] * 5,
        [onnx.helper.make_opsetid("", 18)])
    model.functions.append(unused)
    assert inlined_node_counts(tmp_path, model) == (40, "function bomb.Unused")


def test_functions_below_the_limit_are_inlined_as_before(tmp_path: Path, monkeypatch) -> None:
    path = save(function_bomb_model(8), tmp_path / "ok.onnx")
    assert check_file(path).clean  # 128 nodes: fine
    monkeypatch.setattr("wnconvert.onnx_graph.hidden.MAX_INLINED_NODES", 100)
    with pytest.raises(InputError, match="128 nodes once inlined, more than the 100 "):
        check_file(path)
