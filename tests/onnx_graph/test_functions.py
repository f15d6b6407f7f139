"""Weight norm computed inside model-local functions is found, reported and folded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.onnx_graph.builders import expected, function_model, initializer, run, save
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
