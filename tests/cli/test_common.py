"""The library words errors in API terms; the CLI renders the same message with the flags
(issue 10 §1), from the message's parts, never by rewriting its text (issue 17 §2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from wnconvert.cli import app
from wnconvert.cli.options import FLAGS
from wnconvert.errors import InputError


@pytest.mark.parametrize(("template", "values", "api", "cli"), [
    ("{-model=spec}: importing failed; check {-model_kwargs}", {"spec": "m.py:build"},
     "model='m.py:build': importing failed; check model_kwargs=",
     "--model m.py:build: importing failed; check --model-kwargs"),
    ("{-dim=dim}: give a non-negative axis (PyTorch's weight_norm(dim=-1) means the whole "
     "tensor)", {"dim": -1},
     "dim=-1: give a non-negative axis (PyTorch's weight_norm(dim=-1) means the whole tensor)",
     "--dim -1: give a non-negative axis (PyTorch's weight_norm(dim=-1) means the whole tensor)"),
    ("narrow the selection with {-include}/{-exclude} or pick another {-dim}", {},
     "narrow the selection with include=/exclude= or pick another dim=",
     "narrow the selection with --include/--exclude or pick another --dim"),
    ("{out}: already exists; use {-force} to overwrite it", {"out": "out.pt"},
     "out.pt: already exists; use force=True to overwrite it",
     "out.pt: already exists; use --force to overwrite it"),
    ("{-reports=path}: unknown report type", {"path": "/tmp/m.py"},
     "reports=/tmp/m.py: unknown report type".replace("=/tmp/m.py", "='/tmp/m.py'"),
     "--report /tmp/m.py: unknown report type"),
    # Values are never read as terms: a path with "key=" in it stays as typed.
    ("{path}: no such file", {"path": "exp/key=ema/model.pt"},
     "exp/key=ema/model.pt: no such file", "exp/key=ema/model.pt: no such file"),
    # A value a shell would split is quoted in the flag form.
    ("{-model=spec}: bad", {"spec": "my models/m.py:build"},
     "model='my models/m.py:build': bad", "--model 'my models/m.py:build': bad"),
])
def test_one_message_in_both_terms(template: str, values: dict[str, object], api: str,
                                   cli: str) -> None:
    error = InputError.template(template, **values)
    assert str(error) == api
    assert error.render(FLAGS) == cli


def test_a_plain_message_is_never_a_template() -> None:
    error = InputError("weird {-dim} {name} text")
    assert error.render(FLAGS) == str(error) == "weird {-dim} {name} text"


def test_a_located_error_keeps_its_terms() -> None:
    error = InputError.template("{-dim=dim} does not exist", dim=3).located("m.pt")
    assert str(error) == "m.pt: dim=3 does not exist"
    assert error.render(FLAGS) == "m.pt: --dim 3 does not exist"


def test_a_library_error_reaches_the_user_in_flag_terms(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_file({"w": torch.ones(2)}, str(path))
    result = CliRunner().invoke(app, ["inspect", str(path), "--key", "generator"])
    assert result.exit_code == 2
    assert "--key applies to .pt containers" in result.stderr


def test_a_path_that_looks_like_an_option_is_shown_as_typed(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["inspect", "exp/key=ema/model.pt"])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: exp/key=ema/model.pt: no such file or directory; "
                                     "check the path")
