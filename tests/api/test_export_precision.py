"""``wnconvert.export_onnx(precision=...)`` (issue 20 §1): both exporters, weight-norm weights
rounded once from their float64 fold, verified against the float32 PyTorch model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch.nn.utils.parametrizations import weight_norm

import wnconvert
from tests.onnx_graph.builders import initializer
from wnconvert.errors import InputError
from wnconvert.numerics import as_float64, fold, round_from_float64

CPU = wnconvert.VerifyOptions(providers=("cpu",))
SPEC = (1, 4, 16)


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(weight_norm(torch.nn.Conv1d(4, 6, 3)), torch.nn.LeakyReLU(0.1),
                               weight_norm(torch.nn.Conv1d(6, 2, 1), dim=None))


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize("keep", [True, False])
def test_fp16_export_verifies_with_weights_rounded_once(tmp_path: Path, exporter: str,
                                                        keep: bool) -> None:
    net = _net()
    outcome = wnconvert.export_onnx(output=tmp_path / "net.onnx", model=net,
                                    inputs=[wnconvert.InputSpec(SPEC)], options=CPU,
                                    exporter=exporter,  # type: ignore[arg-type]
                                    precision="fp16", keep_io_types=keep)
    assert outcome.passed, outcome.failure()
    data = outcome.to_dict()["precision"]
    assert data["rounded_from_float64"] == 2 and data["initializers"] == 4
    model = onnx.load(str(outcome.path))
    edge = 1 if keep else 10
    assert [v.type.tensor_type.elem_type for v in model.graph.input] == [edge]
    assert [v.type.tensor_type.elem_type for v in model.graph.output] == [edge]
    g = net[0].parametrizations.weight.original0.detach().numpy()
    v = net[0].parametrizations.weight.original1.detach().numpy()
    want = round_from_float64(fold(g, as_float64(v), 0)[0], "float16")
    np.testing.assert_array_equal(initializer(outcome.path, "0.weight"), want)
    assert outcome.report is not None and outcome.report.weights is not None
    assert outcome.report.weights.compared  # fp16 weights compared with the float32 ones


def test_bf16_export_on_cpu_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="bf16: CPUExecutionProvider has no bfloat16 kernel"):
        wnconvert.export_onnx(output=tmp_path / "net.onnx", model=_net(),
                              inputs=[wnconvert.InputSpec(SPEC)], options=CPU,
                              exporter="legacy", precision="bf16")
    assert not list(tmp_path.iterdir())
