"""Initializer names after export (issue 16): a name is given back only to the value it names.

Both exporters fold an eval-mode BatchNorm into the convolution before it. The dynamo exporter's
optimizer leaves the fused weight under the convolution's parameter name (``dw.weight`` holding
``dw.weight * gamma / sqrt(var + eps)``), the legacy one names it ``onnx::Conv_14``; neither is
the checkpoint's ``dw.weight``, so the weight check must not compare them with it. The export
is correct (the outputs agree) and must verify; a weight error in it must still fail.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from typer.testing import CliRunner, Result

from wnconvert.cli import app
from wnconvert.onnx_graph.names import DERIVED_KEY

MODELS = '''
import torch
from torch import nn


class ConvBn(nn.Module):
    """Weight-normed pointwise conv, then a (grouped) conv and a BatchNorm: wav2vec2-conformer's
    convolution module, and most CNNs' blocks."""

    def __init__(self, dims=1, groups=8, weight_norm=False):
        super().__init__()
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        norm = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
        self.pw = conv(4, 8, 1)
        if weight_norm:
            self.pw = nn.utils.parametrizations.weight_norm(self.pw)
        self.dw = conv(8, 8, 3, padding=1, groups=groups)
        self.bn = norm(8)

    def forward(self, x):
        return self.bn(self.dw(self.pw(x)))


def build(dims=1, groups=8):
    return ConvBn(dims, groups).eval()


def trained(dims=1, groups=8):
    """The checkpoint: weight norm on pw, BatchNorm statistics and affine far from identity."""
    torch.manual_seed(0)
    model = ConvBn(dims, groups, weight_norm=True)
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.3, 3)
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-1, 1)
    return model.eval()
'''


def run(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("convbn")
    (path / "convbn_models.py").write_text(MODELS)
    return path


_EXPORTS: dict[tuple[Path, int, int, str], tuple[Result, Path, Path]] = {}


def _export(workspace: Path, dims: int, groups: int, exporter: str) -> tuple[Result, Path, Path]:
    """``fold CKPT --to onnx`` of the model, once per module (the tests share exports)."""
    key = (workspace, dims, groups, exporter)
    if key not in _EXPORTS:
        _EXPORTS[key] = _fold_to_onnx(workspace, dims, groups, exporter)
    return _EXPORTS[key]


def _fold_to_onnx(workspace: Path, dims: int, groups: int,
                  exporter: str) -> tuple[Result, Path, Path]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("convbn_models_for_test",
                                                  workspace / "convbn_models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stem = f"d{dims}_g{groups}_{exporter}"
    ckpt = workspace / f"{stem}.pt"
    torch.save(module.trained(dims, groups).state_dict(), ckpt)
    out = workspace / f"{stem}.onnx"
    shape = "1x4x10" if dims == 1 else "1x4x6x5"
    result = run("fold", ckpt, "--to", "onnx", "--model",
                 f"{workspace / 'convbn_models.py'}:build", "--model-kwargs",
                 json.dumps({"dims": dims, "groups": groups}), "--input", shape,
                 "--exporter", exporter, "-o", out, "--report", workspace / f"{stem}.json",
                 "--report", workspace / f"{stem}.xml")
    return result, out, ckpt


CASES = [(dims, groups, exporter) for dims in (1, 2) for groups in (8, 1)
         for exporter in ("dynamo", "legacy")]


@pytest.mark.slow
@pytest.mark.parametrize(("dims", "groups", "exporter"), CASES,
                         ids=[f"{d}d-groups{g}-{e}" for d, g, e in CASES])
def test_a_batchnorm_fused_into_a_conv_is_derived_not_compared(
        workspace: Path, dims: int, groups: int, exporter: str) -> None:
    result, out, ckpt = _export(workspace, dims, groups, exporter)
    assert result.exit_code == 0, result.output
    assert "verification PASSED" in result.stdout
    report = json.loads((workspace / f"{out.stem}.json").read_text())
    weights = report["weights"]
    assert weights["passed"] is True and weights["failed"] == []
    # The fused tensors are listed as derived from the BatchNorm, and not compared...
    derived = {d["name"]: d["note"] for d in weights["derived"]}
    assert len(derived) == 2 and all(d["compared"] is False for d in weights["derived"])
    assert all("BatchNorm 'bn' folded" in note for note in derived.values())
    assert any("'dw.weight'" in note for note in derived.values())
    assert not set(derived) & {t["name"] for t in weights["tensors"]}
    # ...while the weights stored as themselves are (pw is folded from its g/v pair).
    assert {t["name"] for t in weights["tensors"]} == {"pw.weight", "pw.bias"}
    assert "derived by the exporter from several parameters, not compared" in result.stdout
    assert "BatchNorm 'bn' folded by the exporter into the convolution weight 'dw.weight'" in \
        " ".join(result.stdout.split())
    # No initializer is named after a parameter whose value it does not hold.
    state = torch.load(ckpt, weights_only=True)
    model = onnx.load(out)
    for init in model.graph.initializer:
        if init.name in state:
            np.testing.assert_array_equal(numpy_helper.to_array(init), state[init.name].numpy())
    notes = {i.name: {e.key: e.value for e in i.metadata_props} for i in model.graph.initializer}
    assert {name for name, props in notes.items() if DERIVED_KEY in props} == set(derived)
    # JUnit: skipped (no comparison was made), not passed.
    suite = ET.parse(workspace / f"{out.stem}.xml").getroot().find(
        "testsuite[@name='wnconvert.verify.weights']")
    assert suite is not None and suite.get("skipped") == "2" and suite.get("failures") == "0"
    skipped = {case.get("name") for case in suite if case.find("skipped") is not None}
    assert skipped == set(derived)
    if exporter == "dynamo":  # it named them dw.weight and dw.bias
        assert set(derived) == {"dw.weight+bn", "dw.bias+bn"}


def _scaled(model_path: Path, out: Path, name: str, factor: float) -> Path:
    model = onnx.load(model_path)
    [init] = [i for i in model.graph.initializer if i.name == name]
    array = numpy_helper.to_array(init) * np.float32(factor)
    init.raw_data = array.astype(np.float32).tobytes()
    onnx.save(model, out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_a_weight_error_in_a_model_with_batchnorm_fusion_is_still_caught(
        workspace: Path, exporter: str) -> None:
    result, out, ckpt = _export(workspace, 1, 8, exporter)
    assert result.exit_code == 0, result.output
    model_arg = f"{workspace / 'convbn_models.py'}:build"
    # 5 % on a weight stored as itself: the weight check names it (and the outputs differ).
    bad = _scaled(out, workspace / f"bad_pw_{exporter}.onnx", "pw.weight", 1.05)
    failed = run("verify", bad, "--reference", ckpt, "--model", model_arg, "--input", "1x4x10",
                 "--json")
    assert failed.exit_code == 1, failed.output
    data = json.loads(failed.stdout)["verification"]
    assert data["weights"]["failed"] == ["pw.weight"]
    # 5 % on the fused weight: not compared as a weight, so the outputs must catch it.
    report = json.loads((workspace / f"{out.stem}.json").read_text())
    fused = next(d["name"] for d in report["weights"]["derived"] if "weight" in d["note"]
                 and "'dw.weight'" in d["note"])
    bad = _scaled(out, workspace / f"bad_fused_{exporter}.onnx", fused, 1.05)
    failed = run("verify", bad, "--reference", ckpt, "--model", model_arg, "--input", "1x4x10",
                 "--json")
    assert failed.exit_code == 1, failed.output
    data = json.loads(failed.stdout)["verification"]
    assert data["passed"] is False and data["weights"]["passed"] is True
    assert not data["providers"][0]["passed"]
    assert fused in {d["name"] for d in data["weights"]["derived"]}
