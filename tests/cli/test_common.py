"""The library words errors in API terms; the CLI shows the flags (issue 10 §1)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from wnconvert.cli import app
from wnconvert.cli.common import in_flag_terms


@pytest.mark.parametrize(("api", "cli"), [
    ("model='m.py:build': importing failed; check model_kwargs=",
     "--model 'm.py:build': importing failed; check --model-kwargs"),
    ("dim=-1: give a non-negative axis (PyTorch's weight_norm(dim=-1) means the whole tensor)",
     "--dim -1: give a non-negative axis (PyTorch's weight_norm(dim=-1) means the whole tensor)"),
    ("narrow the selection with include=/exclude= or pick another dim=",
     "narrow the selection with --include/--exclude or pick another --dim"),
    ("out.pt: already exists; use force=True to overwrite it",
     "out.pt: already exists; use --force to overwrite it"),
    ("use_tf32=0 and reference_key=x are not flags",
     "use_tf32=0 and reference_key=x are not flags"),
    ("report=/tmp/m.py: unknown report type", "--report /tmp/m.py: unknown report type"),
    ("m.pt2: pass trust_program=True only for a program you trust; even with "
     "trust_program=True", "m.pt2: pass --trust-program only for a program you trust; even "
     "with --trust-program"),
])
def test_api_terms_become_flags(api: str, cli: str) -> None:
    assert in_flag_terms(api) == cli


def test_a_library_error_reaches_the_user_in_flag_terms(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_file({"w": torch.ones(2)}, str(path))
    result = CliRunner().invoke(app, ["inspect", str(path), "--key", "generator"])
    assert result.exit_code == 2
    assert "--key applies to .pt containers" in result.stderr
