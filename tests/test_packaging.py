"""The package as users install it (issue 21 §2, §3): the wheel's contents and the lint install
(``wnconvert[cpu]``, no torch) in a fresh virtual environment. The pre-commit hook (§5) is
``tests/test_pre_commit_hook.py``, which uses this module's ``run`` and ``registry``: a file of
its own, so that another test worker builds its environments while this one builds the wheel's.

The wheel is built from a copy of the checkout (nothing is written into it). The installs come
from pip's configured index; when that cannot be reached (checked by downloading one base
dependency first) the install tests skip and say so. ``tests/test_requires.py`` is the fast
check of the same jobs without torch, in this environment.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from tests.test_requires import lint_inputs
from wnconvert._version import __version__

REPO = Path(__file__).resolve().parents[1]
# Not part of a checkout: build outputs, caches, environments.
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "__pycache__", "build", "dist",
                                     "*.egg-info", ".pytest_cache", ".ruff_cache", ".mypy_cache",
                                     ".hypothesis", "demo-out", "out")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would make a child import this checkout (or
    this virtual environment) instead of what it installed."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    return {**env, "NO_COLOR": "1", "OMP_NUM_THREADS": "1", **extra}


def run(argv: list[str | Path], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=clean_env(**env),
                          capture_output=True, text=True, timeout=900, check=False)


@pytest.fixture(scope="module")
def wheel(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m build --wheel`` of a copy of the checkout: with this environment's
    setuptools where it has one (Python >= 3.12 venvs do not), else isolated (from the index)."""
    source = tmp_path_factory.mktemp("source") / "wnconvert"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCE)
    out = tmp_path_factory.mktemp("dist")
    isolation = []
    if importlib.util.find_spec("setuptools") is not None:
        isolation = ["--no-isolation"]
    else:
        request.getfixturevalue("registry")
    built = run([sys.executable, "-m", "build", "--wheel", *isolation, "-o", out, source],
                cwd=out)
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = out.glob("*.whl")
    return path


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skip (saying why) when pip's index cannot be reached: one base dependency is
    downloaded, as the installs below would."""
    probe = run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d",
                 tmp_path_factory.mktemp("probe"), "typer>=0.12,<0.29"], cwd=REPO)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"the package registry is unreachable (pip download typer: {last})")


@pytest.fixture(scope="module")
def lint_venv(wheel: Path, registry: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with ``wnconvert[cpu]`` from the wheel; its ``bin``."""
    root = tmp_path_factory.mktemp("lint-venv")
    venv.create(root, with_pip=True)
    bin_dir = root / "bin"
    installed = run([bin_dir / "python", "-m", "pip", "install", "--quiet",
                     f"wnconvert[cpu] @ {wheel.as_uri()}"], cwd=root)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return bin_dir


def test_the_wheel_ships_the_package_typed_and_nothing_else(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "wnconvert/py.typed" in names
    assert "wnconvert/__main__.py" in names
    tops = {name.split("/")[0] for name in names}
    assert tops == {"wnconvert", f"wnconvert-{__version__}.dist-info"}, tops  # no tests/...
    assert not [n for n in names if re.search(r"(^|/)(tests|fixtures|benchmarks)/", n)]


def test_the_wheel_requires_no_torch(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(f"wnconvert-{__version__}.dist-info/METADATA").decode()
    requires = re.findall(r"^Requires-Dist: (.*)$", metadata, re.M)
    base = [r for r in requires if "extra ==" not in r]
    assert base and not [r for r in base if re.match(r"(torch|onnxscript|onnxruntime)\b", r)]
    assert {"torch", "cpu", "gpu"} <= set(re.findall(r"^Provides-Extra: (.*)$", metadata, re.M))
    assert any(re.match(r"torch\b.*extra == \"torch\"", r) for r in requires)
    assert f"\nVersion: {__version__}\n" in metadata  # from wnconvert/_version.py, the one source


@pytest.mark.slow
def test_the_lint_install_checks_and_folds_without_torch(
        lint_venv: Path, tmp_path: Path, fixtures_dir: Path) -> None:
    lint_inputs(tmp_path, fixtures_dir)
    shutil.copyfile(fixtures_dir / "tiny_hifigan_plain.pt", tmp_path / "model.pt")
    python, wnconvert = lint_venv / "python", lint_venv / "wnconvert"

    no_torch = run([python, "-c", "import torch"], tmp_path)
    assert no_torch.returncode == 1 and "No module named 'torch'" in no_torch.stderr

    clean = run([wnconvert, "check", "clean.onnx"], tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    found = run([wnconvert, "check", "wn.onnx"], tmp_path)
    assert found.returncode == 1, found.stdout + found.stderr
    assert "computes weight norm at run time" in found.stderr
    folded = run([wnconvert, "fold", "model.safetensors", "-o", "plain.safetensors"], tmp_path)
    assert folded.returncode == 0, folded.stdout + folded.stderr
    assert (tmp_path / "plain.safetensors").stat().st_size > 0
    onnx_fold = run([wnconvert, "fold", "wn.onnx", "-o", "folded.onnx"], tmp_path)
    assert onnx_fold.returncode == 0, onnx_fold.stdout + onnx_fold.stderr  # ORT verified it

    needs_torch = run([wnconvert, "inspect", "model.pt"], tmp_path)
    assert (needs_torch.returncode, needs_torch.stdout) == (2, "")
    assert needs_torch.stderr == ("error: reading model.pt needs PyTorch, which is not "
                                  "installed: pip install 'wnconvert[torch]'\n")


@pytest.mark.slow
def test_python_m_and_the_version_in_the_installed_wheel(lint_venv: Path, tmp_path: Path) -> None:
    version = run([lint_venv / "python", "-m", "wnconvert", "--version"], tmp_path)
    assert (version.returncode, version.stdout) == (0, f"wnconvert {__version__}\n")
    helped = run([lint_venv / "python", "-m", "wnconvert", "--help"], tmp_path)
    assert helped.returncode == 0 and "Usage: python -m wnconvert" in helped.stdout
    same = run([lint_venv / "python", "-c", "import importlib.metadata as m, wnconvert; "
                "print(m.version('wnconvert'), wnconvert.__version__)"], tmp_path)
    assert same.stdout.split() == [__version__, __version__], same.stderr


def test_the_changelog_has_a_section_for_the_version() -> None:
    heading = rf"^## \[{re.escape(__version__)}\]( - \d{{4}}-\d{{2}}-\d{{2}})?$"
    assert re.search(heading, (REPO / "CHANGELOG.md").read_text(), re.M)
