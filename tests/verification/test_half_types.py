"""bfloat16 and float16 end to end: fed and read through OrtValues and IO binding (numpy feeds
cannot carry bfloat16), compared in float64."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from typer.testing import CliRunner, Result

from wnconvert.cli import app
from wnconvert.verification import VerifyOptions, verify_onnx_against_onnx
from wnconvert.verification.runners import from_ortvalue, to_ortvalue


def run(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def cast_model(path: Path, *, scale: float = 1.0, io: str = "output",
               half: int = TensorProto.BFLOAT16) -> Path:
    """``io="output"``: float32 x -> Mul(scale) -> Cast(half) -> y (a bfloat16/float16 output).
    ``io="input"``: half x -> Cast(float) -> Mul(scale) -> y float32 (a bfloat16 input)."""
    scale_init = helper.make_tensor("scale", TensorProto.FLOAT, [], [scale])
    if io == "output":
        nodes = [helper.make_node("Mul", ["x", "scale"], ["xs"]),
                 helper.make_node("Cast", ["xs"], ["y"], to=half)]
        x_type, y_type = TensorProto.FLOAT, half
    else:
        nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
                 helper.make_node("Mul", ["xf", "scale"], ["y"])]
        x_type, y_type = half, TensorProto.FLOAT
    graph = helper.make_graph(nodes, "cast", [helper.make_tensor_value_info("x", x_type, [2, 8])],
                              [helper.make_tensor_value_info("y", y_type, [2, 8])], [scale_init])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, path)
    return path


def test_ortvalue_round_trip_keeps_bfloat16_bits() -> None:
    a = np.array([1.5, -2.0, 3.140625, np.inf], dtype=ml_dtypes.bfloat16)
    value = to_ortvalue(a)
    assert value.data_type() == "tensor(bfloat16)"
    back = from_ortvalue(value)
    assert back.dtype == a.dtype and back.view(np.uint16).tolist() == a.view(np.uint16).tolist()


@pytest.mark.parametrize("half", [TensorProto.BFLOAT16, TensorProto.FLOAT16])
@pytest.mark.parametrize("io", ["output", "input"])
def test_half_outputs_and_inputs_verify_and_a_perturbed_one_fails(tmp_path: Path, io: str,
                                                                  half: int) -> None:
    ref = cast_model(tmp_path / "ref.onnx", io=io, half=half)
    same = cast_model(tmp_path / "same.onnx", io=io, half=half)
    bad = cast_model(tmp_path / "bad.onnx", scale=1.5, io=io, half=half)
    options = VerifyOptions(providers=("cpu",), weights="off")
    report = verify_onnx_against_onnx(same, ref, options=options)
    assert report.passed, report.failures()
    [out] = report.providers[0].outputs
    name = "bfloat16" if half == TensorProto.BFLOAT16 else "float16"
    assert out.first.dtype == (name if io == "output" else "float32")
    assert report.cases[0].inputs["x"][1] == ("float32" if io == "output" else name)
    failed = verify_onnx_against_onnx(bad, ref, options=options)
    assert not failed.passed
    assert failed.providers[0].error is None  # a numerical failure, not a feeding error


def test_bfloat16_output_through_the_cli(tmp_path: Path) -> None:
    ref = cast_model(tmp_path / "ref.onnx")
    ok = run("verify", cast_model(tmp_path / "c.onnx"), "--reference", ref, "--json",
             "--weights", "off")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["verification"]["providers"][0]["outputs"][0]["dtype"] == \
        "bfloat16"
    bad = run("verify", cast_model(tmp_path / "b.onnx", scale=1.5), "--reference", ref,
              "--json", "--weights", "off")
    assert bad.exit_code == 1, bad.output
    assert json.loads(bad.stdout)["passed"] is False


class _Bf16Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.float())


def test_pt2_with_a_bfloat16_input_exports_and_verifies(tmp_path: Path) -> None:
    torch.manual_seed(0)
    program = torch.export.export(_Bf16Net(), (torch.randn(2, 8).to(torch.bfloat16),))
    pt2 = tmp_path / "net.pt2"
    torch.export.save(program, str(pt2))
    out = tmp_path / "net.onnx"
    result = run("fold", pt2, "--trust-program", "-o", out, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["passed"] is True
    assert data["verification"]["cases"][0]["inputs"]["x"]["dtype"] == "bfloat16"
    model = onnx.load(out)
    for init in model.graph.initializer:
        if len(init.dims) == 2:
            arr = onnx.numpy_helper.to_array(init) * np.float32(1.05)
            init.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), init.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, bad)
    failed = run("verify", bad, "--reference", pt2, "--trust-program", "--json")
    assert failed.exit_code == 1, failed.output
    assert json.loads(failed.stdout)["passed"] is False
