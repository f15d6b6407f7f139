"""``wnconvert.export_onnx`` / ``wnconvert.verify`` with the model as an ``nn.Module`` or a
callable (issue 17 §1): the caller's module is never changed, its own weights are exported when
no checkpoint is given, and a checkpoint loads into it strictly."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

import wnconvert

CPU = wnconvert.VerifyOptions(providers=("cpu",))
SPEC = (1, 4, 16)


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(weight_norm(torch.nn.Conv1d(4, 6, 3)), torch.nn.Tanh(),
                               weight_norm(torch.nn.Conv1d(6, 2, 1), dim=None))


def test_an_nn_module_exports_with_its_own_weights_and_stays_as_it_was(tmp_path: Path) -> None:
    net = _net()
    before = copy.deepcopy(net.state_dict())
    x = torch.randn(SPEC)
    expected = net(x)
    outcome = wnconvert.export_onnx(output=tmp_path / "net.onnx", model=net,
                                    inputs=[wnconvert.InputSpec(SPEC)], options=CPU)
    assert outcome.passed, outcome.failure()
    assert outcome.report is not None and outcome.to_dict()["passed"] is True
    assert wnconvert.check_onnx(outcome.path).clean
    # The caller's module: still weight-normed, same weights, same outputs.
    assert parametrize.is_parametrized(net[0]) and parametrize.is_parametrized(net[2])
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert torch.equal(net(x), expected)
    report = wnconvert.verify(outcome.path, model=net,
                              options=wnconvert.VerifyOptions(
                                  providers=("cpu",), input_specs=(wnconvert.InputSpec(SPEC),)))
    assert report.passed


@pytest.mark.slow
def test_a_checkpoint_loads_into_a_module_or_a_callable(tmp_path: Path) -> None:
    other = _net()
    with torch.no_grad():
        other[0].parametrizations.weight.original0.mul_(1.5)
    checkpoint = tmp_path / "ckpt.pt"
    torch.save(other.state_dict(), checkpoint)
    for model in (_net(), _net):
        out = tmp_path / f"{type(model).__name__}.onnx"
        outcome = wnconvert.export_onnx(checkpoint, out, model=model,
                                        inputs=[wnconvert.InputSpec(SPEC)], options=CPU)
        assert outcome.passed and outcome.export.path == out
    # The exported weights are the checkpoint's, not the module's own.
    report = wnconvert.verify(tmp_path / "Sequential.onnx", checkpoint, model=_net(),
                              options=wnconvert.VerifyOptions(
                                  providers=("cpu",), input_specs=(wnconvert.InputSpec(SPEC),)))
    assert report.passed


def test_model_kwargs_for_a_built_module_and_trust_without_a_program_are_refused(
        tmp_path: Path) -> None:
    with pytest.raises(wnconvert.InputError, match="model_kwargs= apply to a callable"):
        wnconvert.export_onnx(output=tmp_path / "x.onnx", model=_net(), model_kwargs={"a": 1},
                              inputs=[wnconvert.InputSpec(SPEC)], verify=False)
    with pytest.raises(wnconvert.InputError, match="trust_program=True applies to a .pt2"):
        wnconvert.export_onnx(output=tmp_path / "x.onnx", model=_net(), trust_program=True,
                              inputs=[wnconvert.InputSpec(SPEC)], verify=False)
    assert not (tmp_path / "x.onnx").exists()


def test_no_output_and_no_input_file_is_refused() -> None:
    with pytest.raises(wnconvert.InputError, match="output=: give the .onnx file"):
        wnconvert.export_onnx(model=_net(), inputs=[wnconvert.InputSpec(SPEC)])


def test_verification_reads_the_exported_file_once(tmp_path: Path, model_reads) -> None:
    """The signature and the weight diff share one read of the file just written (ONNX Runtime
    loads it for its session)."""
    out = tmp_path / "net.onnx"
    outcome = wnconvert.export_onnx(output=out, model=_net(),
                                    inputs=[wnconvert.InputSpec(SPEC)], options=CPU)
    assert outcome.passed and outcome.report is not None
    assert outcome.report.weights is not None and outcome.report.weights.compared
    assert model_reads.count(out) == 1


_CALLS: list[str] = []


class _RecordsCalls(torch.nn.Module):
    """Records whether each forward ran eagerly or under the exporter's tracer, and prints."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(4, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch._subclasses.fake_tensor import FakeTensor

        _CALLS.append("traced" if isinstance(x, FakeTensor) else "eager")
        print("hello from the model")
        return self.conv(x)


def test_the_reference_runs_once_before_the_export_and_its_prints_are_noted(
        tmp_path: Path) -> None:
    """Issue 22: the verification's reference case runs ahead (beside the export's imports),
    not after the export; its outputs are used, and what it printed is still reported."""
    _CALLS.clear()
    torch.manual_seed(0)
    outcome = wnconvert.export_onnx(output=tmp_path / "r.onnx", model=_RecordsCalls(),
                                    inputs=[wnconvert.InputSpec(SPEC)], options=CPU)
    assert outcome.passed, outcome.failure()
    assert _CALLS[0] == "eager" and _CALLS.count("eager") == 1, _CALLS
    assert outcome.report is not None
    assert any("the reference printed 1 line(s)" in note and "hello from the model" in note
               for note in outcome.report.notes), outcome.report.notes


def test_the_imports_ahead_of_the_export_are_only_a_head_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A private torch module that moved (or a missing package) is left to the step that needs
    it: importing ahead never fails the export."""
    import importlib

    from wnconvert.api.export import _export_imports

    real = importlib.import_module
    tried: list[str] = []

    def moved(name: str, package: str | None = None) -> object:
        tried.append(name)
        if name.startswith("torch.onnx._internal"):
            raise ModuleNotFoundError(name)
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", moved)
    _export_imports("auto")
    assert "torch.onnx._internal.exporter._compat" in tried
