"""A many-model fold takes the same verification options as a one-model fold: the pass rules
of the error budget and the precision are applied to each model, and flags naming one file
(--save-inputs/--save-outputs) are refused."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from tests.onnx_graph.builders import save_weight_norm_model


@pytest.fixture
def two_models(tmp_path: Path) -> Path:
    folder = tmp_path / "exports"
    for name in ("a", "b"):
        save_weight_norm_model(folder / f"{name}.onnx")
    return folder


def test_the_error_budget_rules_reach_every_model(cli, two_models: Path) -> None:
    result = cli("fold", str(two_models), "--min-snr", "1000", "--json")
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert [entry["exit_code"] for entry in data["files"]] == [1, 1]


def test_precision_reaches_every_model(cli, two_models: Path) -> None:
    result = cli("fold", str(two_models), "--precision", "fp16", "--json")
    assert result.exit_code == 0, result.output
    for name in ("a", "b"):
        model = onnx.load(two_models / f"{name}.folded.onnx")
        types = {init.data_type for init in model.graph.initializer}
        assert onnx.TensorProto.FLOAT16 in types


def test_save_flags_name_one_file(cli, two_models: Path, tmp_path: Path) -> None:
    result = cli("fold", str(two_models), "--save-outputs", str(tmp_path / "o.json"))
    assert result.exit_code == 2
    assert "--save-inputs/--save-outputs name one file" in result.output


def test_a_one_model_fold_says_which_report_it_wrote(cli, two_models: Path,
                                                     tmp_path: Path) -> None:
    report = tmp_path / "fold.json"
    result = cli("fold", two_models / "a.onnx", "--report", report)
    assert result.exit_code == 0, result.output
    assert report.exists() and str(report) in result.output
