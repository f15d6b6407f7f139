"""On a GPU (``pytest -m cuda``; skipped by a probe session where CUDA cannot start).

A MatMul with K = 4096 shows TF32: inputs rounded to 10 significand bits put the error near
1e-3, far outside float32 tolerances, while float32 math stays near 1e-6.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner, Result

from wnconvert.cli import app

from .conftest import CPU, CUDA, cuda_unusable

WHY = cuda_unusable()
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(WHY is not None, reason=WHY or "")]
K = 4096


def run(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def matmul(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((K, 64)) / np.sqrt(K)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "bigk",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 64])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("cuda") / "bigk.onnx"
    onnx.save(model, path)
    return path


@pytest.fixture(autouse=True)
def _no_outside_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)


def providers(result: Result) -> list[dict]:
    return json.loads(result.stdout)["verification"]["providers"]


def test_without_tf32_cuda_matches_float32_tolerances(matmul: Path) -> None:
    result = run("verify", matmul, "--reference", matmul, "--provider", "cpu", "--provider",
                 "cuda", "--json")
    assert result.exit_code == 0, result.output
    cpu, cuda = providers(result)
    assert (cpu["name"], cuda["name"]) == (CPU, CUDA) and cuda["error"] is None
    assert cuda["options"]["use_tf32"] == "0"  # what ORT applied, not what we asked
    assert cuda["outputs"][0]["atol"] == 1e-5
    assert "NVIDIA_TF32_OVERRIDE" not in os.environ


def test_tf32_fails_float32_tolerances_on_a_long_reduction(matmul: Path) -> None:
    result = run("verify", matmul, "--reference", matmul, "--provider", "cpu", "--provider",
                 "cuda", "--tf32", "--atol", "1e-5", "--rtol", "1e-4", "--json")
    assert result.exit_code == 1, result.output
    cpu, cuda = providers(result)
    assert cpu["passed"] is True and cuda["passed"] is False and cuda["error"] is None
    assert cuda["options"]["use_tf32"] == "1"
    assert cuda["outputs"][0]["max_abs"] > 1e-4


def test_tf32_passes_with_the_documented_tf32_tolerances(matmul: Path) -> None:
    result = run("verify", matmul, "--reference", matmul, "--provider", "cuda", "--tf32",
                 "--json")
    assert result.exit_code == 0, result.output
    [cuda] = providers(result)
    assert (cuda["outputs"][0]["atol"], cuda["outputs"][0]["rtol"]) == (1e-2, 1e-2)
    assert "TF32 allowed" in cuda["tf32"]


def test_a_pt2_saved_on_cuda_is_moved_to_cpu(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    net = torch.nn.Sequential(torch.nn.Linear(8, 4)).cuda()
    program = torch.export.export(net, (torch.randn(2, 8, device="cuda"),))
    pt2 = tmp_path / "net.pt2"
    torch.export.save(program, str(pt2))
    result = run("fold", pt2, "--trust-program", "-o", tmp_path / "net.onnx", "--json")
    assert result.exit_code == 0, result.output
