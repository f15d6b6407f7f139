"""``inspect`` and ``fold`` of several files in one run (issue 21 §1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.onnx_graph.builders import Graph, save, weight_norm_model


@pytest.fixture
def models(tmp_path: Path) -> tuple[Path, Path, Path]:
    b = Graph()
    b.init("w", np.ones((2, 3), dtype=np.float32))
    clean = save(b.model("w", (2, 3)), tmp_path / "clean.onnx")
    dirty = save(weight_norm_model((6, 4, 3), 0, order="g/n*v")[0], tmp_path / "dirty.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not protobuf")
    return clean, dirty, broken


def test_inspect_several_files_one_section_each_worst_exit_code(cli, models):
    clean, dirty, broken = models
    result = cli("inspect", clean, broken, dirty)
    assert result.exit_code == 2
    out = result.stdout
    assert out.index(f"== {clean}") < out.index("not done: ") < out.index(f"== {dirty}")
    assert "weight norm computed at run time: 1" in out
    assert "inspect: 3 file(s)" in out and "2 done, 0 failed their check, 1 could not be done" \
        in out
    assert result.stderr.startswith("error: 1 of 3 file(s) failed")


def test_inspect_several_files_json_is_one_document(cli, models, tmp_path):
    clean, dirty, _ = models
    result = cli("inspect", tmp_path, "--json")
    assert result.exit_code == 2  # broken.onnx is in the folder
    data = json.loads(result.stdout)
    assert [Path(entry["path"]).name for entry in data["files"]] == [
        "broken.onnx", "clean.onnx", "dirty.onnx"]
    assert data["files"][2]["result"]["weight_norm"][0]["parameter"] == "layer.weight"
    assert json.loads(cli("inspect", clean, dirty, "--json").stdout)["exit_code"] == 0


def test_inspect_one_file_is_unchanged(cli, models):
    data = json.loads(cli("inspect", models[0], "--json").stdout)
    assert "files" not in data and data["model"] == str(models[0])


def test_inspect_refuses_key_for_models_only(cli, models, assert_input_error):
    assert_input_error(cli("inspect", models[0], models[1], "--key", "x"), "--key")


def test_fold_several_models_each_next_to_its_input(cli, models, tmp_path):
    clean, dirty, broken = models
    result = cli("fold", dirty, broken, clean, "--json")
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert [entry["exit_code"] for entry in data["files"]] == [0, 2, 0]
    assert data["files"][0]["result"]["passed"] is True
    assert (tmp_path / "dirty.folded.onnx").is_file() and (tmp_path / "clean.folded.onnx").is_file()
    again = cli("fold", dirty, clean)  # outputs exist: each model is an error row, none clobbered
    assert again.exit_code == 2 and again.stdout.count("already exists") == 2


def test_fold_several_models_refuses_one_output(cli, models, assert_input_error):
    line = assert_input_error(cli("fold", models[0], models[1], "-o", "x.onnx"), "-o")
    assert "each is written next to its input" in line
