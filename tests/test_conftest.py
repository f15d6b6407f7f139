"""The suite's own speed-ups change nothing a test sees: exports with the shared torchlib table
(``tests/conftest.py``, ``_share_torchlib_registry``) are byte-identical to torch's own, and
what one export registers stays out of the next."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

from tests.conftest import _share_torchlib_registry


@pytest.fixture
def registration() -> ModuleType:
    import torch.onnx._internal.exporter._registration as registration

    assert _share_torchlib_registry()
    return registration


def test_each_export_gets_its_own_copy_of_the_table(registration: ModuleType) -> None:
    first = registration.ONNXRegistry.from_torchlib()
    second = registration.ONNXRegistry().from_torchlib(opset_version=first.opset_version)
    assert first is not second and first.functions.keys() == second.functions.keys()
    target = next(iter(first.functions))
    assert first.functions[target] == second.functions[target]
    first.functions[target].clear()  # what register_op's appends would do to a shared list
    assert registration.ONNXRegistry.from_torchlib().functions[target] == second.functions[target]
    assert registration.ONNXRegistry.from_torchlib(opset_version=20).opset_version == 20


def test_an_export_with_the_shared_table_is_byte_identical(
        registration: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(4, 8, 3, padding=1), nn.Tanh()).eval()
    shared = registration.ONNXRegistry.from_torchlib

    def export(folder: str) -> bytes:
        path = tmp_path / folder / "model.onnx"
        path.parent.mkdir()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporter chatter (torchvision, pytree, ...)
            torch.onnx.export(model, (torch.ones(1, 4, 16),), str(path), dynamo=True,
                              dynamic_shapes=({2: torch.export.Dim("time")},))
        return b"".join(p.read_bytes() for p in sorted(path.parent.iterdir()))

    with monkeypatch.context() as torch_own:
        torch_own.setattr(registration.ONNXRegistry, "from_torchlib",
                          classmethod(shared.__func__.unshared))
        expected = export("torch")
    assert export("shared") == expected
    assert export("again") == expected
