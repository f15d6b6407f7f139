"""What the analysis finds beyond the main graph: weight norm inside If/Loop bodies is reported
(never folded), and a g/v pair read at run time by something not recognized as weight norm is
reported too, so ``check`` cannot call such a model clean."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from tests.onnx_graph.builders import if_model, save, transposed_norm_model, weight_norm_model
from wnconvert.onnx_graph import check_file, fold_file, inspect_file


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
