"""``wnconvert.inspect_checkpoint`` / ``fold_checkpoint`` / ``decompose_checkpoint`` /
``restyle_checkpoint``: the checkpoint jobs as library calls, the same files as the CLI writes,
progress through an object, nothing printed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import wnconvert
from wnconvert.cli import app


class Recorder:
    """A progress object that records what a job reports."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.items: list[tuple[str, int, int]] = []

    def status(self, message: str) -> None:
        self.events.append(("status", message))

    def note(self, message: str) -> None:
        self.events.append(("note", message))

    @contextmanager
    def step(self, description: str) -> Iterator[object]:
        self.events.append(("step", description))
        yield lambda item, done, total: self.items.append((item, done, total))


@pytest.fixture
def legacy(shipped) -> Path:
    return shipped("tiny_hifigan_legacy.pt")


def test_fold_checkpoint_writes_what_the_cli_writes(legacy, tmp_path, capsys) -> None:
    progress = Recorder()
    with pytest.warns(wnconvert.WeightNormWarning, match="container entries steps, epoch"):
        result = wnconvert.fold_checkpoint(legacy, tmp_path / "api.safetensors",
                                           progress=progress)
    assert capsys.readouterr().out == ""  # the library prints nothing
    cli = CliRunner().invoke(app, ["fold", str(legacy), "-o", str(tmp_path / "cli.safetensors")])
    assert cli.exit_code == 0, cli.output
    api_bytes = (tmp_path / "api.safetensors").read_bytes()
    assert api_bytes == (tmp_path / "cli.safetensors").read_bytes()
    assert result.output == tmp_path / "api.safetensors" and result.format == "safetensors"
    assert len(result.pairs) == 8 and result.unchanged == 8 and result.file_bytes > 0
    assert result.to_dict()["action"] == "fold"
    assert progress.events[0][0] == "step" and progress.items[-1][1:] == (16, 16)


def test_fold_checkpoint_default_output_and_force(legacy) -> None:
    result = wnconvert.fold_checkpoint(legacy)
    assert result.output == legacy.with_name("tiny_hifigan_legacy.folded.pt")
    with pytest.raises(wnconvert.InputError, match="already exists; use force=True"):
        wnconvert.fold_checkpoint(legacy)
    assert wnconvert.fold_checkpoint(legacy, force=True).output == result.output


def test_a_checkpoint_job_refuses_onnx_and_points_to_the_export(legacy) -> None:
    with pytest.raises(wnconvert.InputError, match="to='onnx'.*wnconvert.export_onnx"):
        wnconvert.fold_checkpoint(legacy, to="onnx")  # type: ignore[arg-type]


def test_jobs_take_a_loaded_checkpoint(legacy, tmp_path) -> None:
    checkpoint = wnconvert.load_checkpoint(legacy)
    info = wnconvert.inspect_checkpoint(checkpoint)
    assert info.totals["pairs"] == 8 and info.to_dict()["schema"] == 1
    with pytest.raises(wnconvert.InputError, match="key= selects"):
        wnconvert.inspect_checkpoint(checkpoint, key="generator")


def test_decompose_then_restyle_round_trip(legacy, tmp_path) -> None:
    plain = wnconvert.fold_checkpoint(legacy, tmp_path / "plain.pt").output
    wn = wnconvert.decompose_checkpoint(plain, tmp_path / "wn.pt", like=legacy)
    assert wn.action == "decompose" and len(wn.pairs) == 8
    original = wnconvert.load_checkpoint(legacy).state_dict
    folded = wnconvert.load_checkpoint(plain).state_dict
    again = wnconvert.load_checkpoint(wn.output).state_dict
    assert set(again) == set(original)  # the template's keys and style
    for key in original:  # v is the plain weight bit for bit
        if key.endswith("_v"):
            assert torch.equal(again[key], folded[key.removesuffix("_v")]), key
    renamed = wnconvert.restyle_checkpoint(wn.output, tmp_path / "p.pt", style="parametrize")
    assert all("parametrizations" in pair["g_key"] for pair in renamed.pairs)


def test_decompose_errors_name_the_template_in_api_terms(legacy, tmp_path) -> None:
    bad_template = tmp_path / "t.pt"
    torch.save({"other.weight": torch.ones(2, 2)}, bad_template)
    plain = wnconvert.fold_checkpoint(legacy, tmp_path / "plain.pt").output
    with pytest.raises(wnconvert.InputError) as info:
        wnconvert.decompose_checkpoint(plain, tmp_path / "wn.pt", like=bad_template)
    assert f"vs like={bad_template}" in str(info.value)
    assert f"vs --like {bad_template}" in info.value.render({"like": "--like"})
