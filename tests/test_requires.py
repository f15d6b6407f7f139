"""The lint install (issue 21 §2): every job that reads only ONNX graphs or safetensors runs
without PyTorch; the jobs that need it say so in one line (exit 2) naming the extra.

The jobs run in one child process whose ``import torch`` fails (``sys.modules['torch'] =
None``), as on an install without the ``torch`` extra; ``tests/test_packaging.py`` checks the
same on a real wheel in a fresh virtual environment (slow).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.onnx_graph import builders
from wnconvert._requires import require_torch
from wnconvert.errors import InputError

REPO = Path(__file__).resolve().parents[1]

# Runs each argument list of argv[1] (JSON) through the CLI in-process, with torch unimportable;
# prints [[exit code, stdout, stderr], ...] and whether torch got into sys.modules.
_CHILD = """
import json, sys
sys.modules["torch"] = None  # `import torch` raises ModuleNotFoundError, as when not installed
from typer.testing import CliRunner
from wnconvert.cli import app
runner = CliRunner()
results = [[r.exit_code, r.stdout, r.stderr]
           for r in (runner.invoke(app, args) for args in json.loads(sys.argv[1]))]
print(json.dumps({"results": results, "torch": sys.modules.get("torch") is not None}))
"""


def run_without_torch(cwd: Path, *jobs: list[str]) -> list[tuple[int, str, str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(jobs)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert not answer["torch"]
    return [tuple(r) for r in answer["results"]]


def lint_inputs(folder: Path, fixtures_dir: Path) -> None:
    """``wn.onnx`` (computes weight norm), ``clean.onnx`` (does not), ``model.safetensors``."""
    builders.save(builders.weight_norm_model((8, 4), 0)[0], folder / "wn.onnx")
    clean = builders.Graph()
    clean.init("w", np.ones((8, 4), np.float32))
    builders.save(clean.model("w", (8, 4)), folder / "clean.onnx")
    shutil.copyfile(fixtures_dir / "tiny_hifigan.safetensors", folder / "model.safetensors")


def test_jobs_that_need_no_torch_run_without_it(tmp_path: Path, fixtures_dir: Path) -> None:
    lint_inputs(tmp_path, fixtures_dir)
    jobs = {
        ("check", "clean.onnx"): 0,
        ("check", "wn.onnx"): 1,
        ("inspect", "wn.onnx"): 0,
        ("fold", "wn.onnx", "-o", "folded.onnx"): 0,  # verified on ONNX Runtime
        ("verify", "folded.onnx", "-r", "wn.onnx"): 0,
        ("inspect", "model.safetensors"): 0,
        ("fold", "model.safetensors", "-o", "plain.safetensors"): 0,
        ("decompose", "plain.safetensors", "-o", "pairs.safetensors"): 0,
        ("restyle", "model.safetensors", "--style", "legacy", "-o", "legacy.safetensors"): 0,
    }
    results = run_without_torch(tmp_path, *map(list, jobs))
    for (args, code), (got, out, err) in zip(jobs.items(), results, strict=True):
        assert got == code, f"{args}: exit {got}\n{out}\n{err}"
        assert "PyTorch" not in err
    for name in ("folded.onnx", "plain.safetensors", "pairs.safetensors", "legacy.safetensors"):
        assert (tmp_path / name).stat().st_size > 0


def test_jobs_that_need_torch_say_so_in_one_line(tmp_path: Path, fixtures_dir: Path) -> None:
    lint_inputs(tmp_path, fixtures_dir)
    shutil.copyfile(fixtures_dir / "tiny_hifigan_plain.pt", tmp_path / "model.pt")
    (tmp_path / "program.pt2").write_bytes(b"PK")  # refused for torch before it is read
    model = f"{fixtures_dir / 'models.py'}:build_generator"
    jobs = {
        ("inspect", "model.pt"): "reading model.pt",
        ("fold", "model.pt", "-o", "plain.safetensors"): "reading model.pt",
        ("fold", "model.safetensors", "-o", "plain.pt"): "writing plain.pt",
        ("fold", "model.safetensors", "--to", "onnx", "--model", model, "-o", "m.onnx"):
            "exporting model.safetensors to ONNX",
        ("verify", "wn.onnx", "-r", "model.safetensors", "--model", model):
            "verifying against model.safetensors (a PyTorch reference)",
        ("verify", "wn.onnx", "-r", "program.pt2", "--trust-program"):
            "verifying against program.pt2 (a PyTorch reference)",
        ("fold", "program.pt2", "--to", "onnx", "--trust-program", "-o", "m.onnx"):
            "exporting program.pt2 to ONNX",
    }
    results = run_without_torch(tmp_path, *map(list, jobs))
    for (args, purpose), (code, out, err) in zip(jobs.items(), results, strict=True):
        assert (code, out) == (2, ""), f"{args}: exit {code}\n{out}\n{err}"
        assert err == (f"error: {purpose} needs PyTorch, which is not installed: "
                       "pip install 'wnconvert[torch]'\n"), args
    assert not (tmp_path / "plain.pt").exists() and not (tmp_path / "m.onnx").exists()


def test_require_torch_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(InputError, match=r"^reading a\.pt needs PyTorch, which is not "
                                         r"installed: pip install 'wnconvert\[torch\]'$"):
        require_torch("reading a.pt")


def test_require_torch_keeps_a_broken_install_s_own_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # torch present but one of its own imports missing: that error says what is wrong.
    def broken(name: str) -> None:
        raise ModuleNotFoundError("No module named 'sympy'", name="sympy")

    monkeypatch.setattr("importlib.import_module", broken)
    with pytest.raises(ModuleNotFoundError, match="sympy"):
        require_torch("reading a.pt")
