"""How candidate outputs are matched to the reference's: by name, else by position; a candidate
that lacks an output is refused, since that output would go unchecked."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

import wnconvert
from tests.onnx_graph.builders import save
from wnconvert.errors import InputError


def _model(outputs: dict[str, str]) -> onnx.ModelProto:
    """``x`` (2x3) in; each output name -> the op computing it from x (Add: 2x, Mul: x*x)."""
    nodes = [helper.make_node(op, ["x", "x"], [name]) for name, op in outputs.items()]
    graph = helper.make_graph(
        nodes, "outputs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 3]) for name in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model


@pytest.fixture
def reference(tmp_path: Path) -> Path:
    return save(_model({"y": "Add", "z": "Mul"}), tmp_path / "reference.onnx")


def test_a_candidate_missing_an_output_is_refused(tmp_path: Path, reference: Path) -> None:
    candidate = save(_model({"y": "Add"}), tmp_path / "candidate.onnx")
    with pytest.raises(InputError, match=r"lacks 1 of the reference's outputs \(z; it has y\)"):
        wnconvert.verify(candidate, reference)


def test_a_candidate_with_an_extra_output_is_refused(tmp_path: Path, reference: Path) -> None:
    candidate = save(_model({"y": "Add", "z": "Mul", "extra": "Sub"}), tmp_path / "c.onnx")
    with pytest.raises(InputError, match="do not match the reference's"):
        wnconvert.verify(candidate, reference)


@pytest.mark.parametrize("outputs, matching, passed", [
    ({"z": "Mul", "y": "Add"}, "name", True),  # same names, another order
    ({"a": "Add", "b": "Mul"}, "position", True),  # renamed by the exporter
    ({"a": "Mul", "b": "Add"}, "position", False),  # renamed and swapped: a real difference
])
def test_outputs_match_by_name_else_by_position(tmp_path: Path, reference: Path,
                                                 outputs: dict[str, str], matching: str,
                                                 passed: bool) -> None:
    report = wnconvert.verify(save(_model(outputs), tmp_path / "c.onnx"), reference)
    assert report.output_matching == matching
    assert report.passed is passed


@pytest.mark.parametrize("dims", [[-3, 4], [-3, -4]])
def test_a_negative_declared_input_size_is_an_input_error(tmp_path: Path, dims) -> None:
    """onnx.checker accepts the model; generating its input must not fail inside numpy."""
    from typer.testing import CliRunner

    from wnconvert.cli import app

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "negative",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    path = save(model, tmp_path / "negative.onnx")
    message = f"{path}: input 'x' declares size -3 on axis 0"
    with pytest.raises(InputError, match=message):
        wnconvert.verify(path, path)
    result = CliRunner().invoke(app, ["verify", str(path), "--reference", str(path)])
    assert result.exit_code == 2, result.output
    [line] = result.stderr.strip().splitlines()
    assert message in line and "unexpected" not in line
