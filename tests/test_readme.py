"""Every Python example in the README's "Python API" section runs (issue 10 §3)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _python_api_examples() -> list[str]:
    section = README.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


EXAMPLES = _python_api_examples()


def test_the_section_has_an_example_per_job() -> None:
    code = "\n".join(EXAMPLES)
    for job in ("load_checkpoint", "save_checkpoint", "fold_state_dict", "decompose_state_dict",
                "restyle_state_dict", "export_onnx", "verify(", "fold_onnx", "check_onnx"):
        assert job in code, job


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fixture_models) -> Path:
    shutil.copytree(REPO / "fixtures", tmp_path / "fixtures")
    monkeypatch.chdir(tmp_path)
    # vocoder.onnx: the generator exported with weight norm in place (TorchScript exporter,
    # opset 18, which keeps the ReduceL2 -> Div -> Mul chains).
    model = fixture_models.build_generator("parametrize")
    torch.onnx.export(model, (torch.randn(1, 16, 12),), str(tmp_path / "vocoder.onnx"),
                      dynamo=False, opset_version=18, input_names=["mel"])
    return tmp_path


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_readme_example_runs(index: int, workdir: Path, capsys: pytest.CaptureFixture) -> None:
    exec(compile(EXAMPLES[index], f"README example {index + 1}", "exec"), {})
