"""Checkpoints whose keys carry a wrapper prefix (issue 11 §4): a Lightning checkpoint
(``model.`` + key) or an HF task model (``hubert.`` + key, next to a head) fits the model or
template after the prefix is found and changed, and the CLI says so; ``--strip-prefix`` /
``--add-prefix`` do it on request."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import torch
from typer.testing import CliRunner, Result

from wnconvert import convert
from wnconvert.cli import app
from wnconvert.errors import InputError
from wnconvert.keys import PrefixChange, prefix_to_match, rename_keys

REPO = Path(__file__).resolve().parents[1]
MODEL = "fixtures/models.py:build_generator"


def run(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # --model paths are relative to the repository


@pytest.fixture
def wn_state(fixture_models: ModuleType) -> dict[str, torch.Tensor]:
    return dict(fixture_models.build_generator("parametrize").state_dict())


@pytest.fixture
def plain_state(fixture_models: ModuleType) -> dict[str, torch.Tensor]:
    return dict(fixture_models.build_generator("none").state_dict())


def test_prefix_change_renames_and_leaves_out_other_keys() -> None:
    change = PrefixChange("model.", "")
    assert rename_keys(["model.a", "model.b.c", "loss.w"], change) == {"a": "model.a",
                                                                       "b.c": "model.b.c"}
    assert PrefixChange("", "m.").apply("a") == "m.a"
    with pytest.raises(InputError, match="no key starts with 'net.'"):
        rename_keys(["model.a"], PrefixChange("net.", ""))
    # A change is only proposed when it makes more keys match.
    assert prefix_to_match(["a.w", "b.w"], ["a.w", "b.w"]) is None
    assert prefix_to_match(["model.a.w", "model.b.w"], ["a.w", "b.w"]) == PrefixChange("model.",
                                                                                       "")


def test_decompose_like_finds_an_hf_task_prefix(plain_state: dict[str, torch.Tensor],
                                                wn_state: dict[str, torch.Tensor]) -> None:
    task = {f"hubert.{k}": v for k, v in plain_state.items()}
    task["lm_head.weight"] = torch.randn(5, 8)
    conversion = convert.plan_decompose(task, like=wn_state)
    out = conversion.to_state_dict()
    assert list(out) == list(wn_state)
    assert any("prefix 'hubert.' removed" in n and "lm_head.weight" in n
               for n in conversion.notes)


def test_decompose_like_adds_a_prefix_the_template_has(
        plain_state: dict[str, torch.Tensor], wn_state: dict[str, torch.Tensor]) -> None:
    template = {f"generator.{k}": v for k, v in wn_state.items()}
    out = convert.decompose_state_dict(plain_state, like=template)
    assert list(out) == list(template)


def test_fold_with_strip_prefix_renames_the_output(
        tmp_path: Path, wn_state: dict[str, torch.Tensor]) -> None:
    ckpt = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in wn_state.items()}, "epoch": 3}, ckpt)
    out = tmp_path / "plain.safetensors"
    result = run("fold", ckpt, "--strip-prefix", "model.", "-o", out, "--json")
    assert result.exit_code == 0, result.output
    from safetensors.torch import load_file

    keys = list(load_file(str(out)))
    assert keys and not any(k.startswith("model.") for k in keys)
    assert "conv_pre.weight" in keys


def test_a_prefix_that_no_key_has_is_an_input_error(tmp_path: Path,
                                                     wn_state: dict[str, torch.Tensor]) -> None:
    ckpt = tmp_path / "g.pt"
    torch.save(wn_state, ckpt)
    result = run("fold", ckpt, "--strip-prefix", "model.", "-o", tmp_path / "o.pt")
    assert result.exit_code == 2
    assert "no key starts with 'model.'" in result.stderr
    assert not (tmp_path / "o.pt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("explicit", [False, True])
def test_fold_to_onnx_of_a_lightning_checkpoint(tmp_path: Path, explicit: bool,
                                                wn_state: dict[str, torch.Tensor]) -> None:
    ckpt = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in wn_state.items()},
                "optimizer_states": [], "epoch": 3}, ckpt)
    out = tmp_path / "g.onnx"
    extra = ["--strip-prefix", "model."] if explicit else []
    result = run("fold", ckpt, "--to", "onnx", "--model", MODEL, "--model-kwargs",
                 '{"weight_norm": "none"}', "--input", "1x16x12", "-o", out, *extra)
    assert result.exit_code == 0, result.output
    assert "prefix 'model.' removed" in result.stderr
    assert out.exists()
