"""What the analysis finds beyond the main graph: weight norm inside If/Loop bodies is reported
(never folded), so ``check`` cannot call such a model clean."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from tests.onnx_graph.builders import if_model, save
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
