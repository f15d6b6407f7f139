"""The installed entry points, in real subprocesses: ``python -m wnconvert`` and the
``wnconvert`` script next to ``sys.executable``; exit codes and stdout/stderr separation; and
``--help`` without importing torch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wnconvert._version import __version__

SCRIPT = Path(sys.executable).with_name("wnconvert")
ENTRY_POINTS = {
    "python-m": [sys.executable, "-m", "wnconvert"],
    "script": [str(SCRIPT)],
}


def run(argv: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR")}
    env["NO_COLOR"] = "1"
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env, check=False)


@pytest.fixture(params=list(ENTRY_POINTS))
def entry(request) -> list[str]:
    if request.param == "script" and not SCRIPT.exists():
        pytest.fail(f"the console script is not installed next to {sys.executable}")
    return ENTRY_POINTS[request.param]


def test_version(entry, tmp_path):
    proc = run([*entry, "--version"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"wnconvert {__version__}\n"
    assert proc.stderr == ""


@pytest.mark.slow
def test_fold_shipped_fixture(entry, tmp_path, fixtures_dir, fixture_models):
    import torch

    source = tmp_path / "tiny_hifigan_legacy.pt"
    shutil.copyfile(fixtures_dir / "tiny_hifigan_legacy.pt", source)

    proc = run([*entry, "fold", source.name], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no warnings, no progress bar (not a terminal)
    assert "wrote tiny_hifigan_legacy.folded.pt" in proc.stdout
    assert "Traceback" not in proc.stdout
    output = tmp_path / "tiny_hifigan_legacy.folded.pt"
    folded = torch.load(output, map_location="cpu", weights_only=True)
    assert (folded["steps"], folded["epoch"]) == (12500, 7)
    fixture_models.build_generator("none").load_state_dict(folded["generator"], strict=True)

    # An existing output is refused: exit 2, one line on stderr, nothing on stdout.
    # (safetensors in and out: this run does not need torch, so it is quick.)
    shutil.copyfile(fixtures_dir / "tiny_hifigan.safetensors", tmp_path / "g.safetensors")
    (tmp_path / "taken.safetensors").write_bytes(b"keep me")
    proc = run([*entry, "fold", "g.safetensors", "-o", "taken.safetensors"], tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "taken.safetensors" in lines[0] and "--force" in lines[0]
    assert (tmp_path / "taken.safetensors").read_bytes() == b"keep me"


def test_input_error_exit_code_and_streams(entry, tmp_path):
    proc = run([*entry, "inspect", "missing.pt"], tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "error: missing.pt: no such file or directory; check the path"]


def test_usage_error_exit_code(entry, tmp_path):
    proc = run([*entry, "fold"], tmp_path)  # missing PATH
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr


def test_debug_prints_a_traceback(tmp_path):
    proc = run([*ENTRY_POINTS["python-m"], "fold", "missing.pt", "--debug"], tmp_path)
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr
    assert "wnconvert.errors.InputNotFound" in proc.stderr
    assert proc.stdout == ""


def test_python_m_help(tmp_path):
    proc = run([sys.executable, "-m", "wnconvert", "--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout
    for command in ("inspect", "decompose", "fold", "restyle"):
        assert command in proc.stdout
    assert proc.stderr == ""


HELP_WITHOUT_TORCH = """
import sys
from typer.testing import CliRunner
from wnconvert.cli import app
for args in (["--help"], ["--version"], ["fold", "--help"], ["inspect", "--help"],
             ["decompose", "--help"], ["restyle", "--help"]):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (args, result.output)
heavy = sorted(m for m in ("torch", "onnx", "onnxruntime", "safetensors", "numpy")
               if m in sys.modules)
print(",".join(heavy))
"""


def test_help_does_not_import_torch(tmp_path):
    proc = run([sys.executable, "-c", HELP_WITHOUT_TORCH], tmp_path)
    assert proc.returncode == 0, proc.stderr
    heavy = [m for m in proc.stdout.strip().split(",") if m]
    assert "torch" not in heavy
    assert "onnx" not in heavy and "onnxruntime" not in heavy


def test_import_outside_the_repository_gives_the_real_package(tmp_path):
    # An editable install made before wnconvert/__init__.py existed maps ``wnconvert`` to a
    # namespace package: the CLI still runs but ``import wnconvert`` has no API.
    proc = run([sys.executable, "-c", "import wnconvert; print(wnconvert.__version__)"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == __version__


QUIET_FOLD_MODULES = """
import sys
from wnconvert.cli import main
sys.argv = ["wnconvert", "fold", sys.argv[1], "-o", sys.argv[2], "--quiet"]
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
print(",".join(sorted(m for m in ("torch", "onnx", "rich", "pydantic") if m in sys.modules)))
"""


def test_quiet_safetensors_fold_imports_neither_torch_nor_rich(tmp_path):
    # Start-up is most of a small fold's time: a quiet run needs numpy and typer, nothing else.
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"a.weight_g": np.ones((2, 1), np.float32),
               "a.weight_v": np.ones((2, 3), np.float32)}, str(tmp_path / "in.safetensors"))
    proc = run([sys.executable, "-c", QUIET_FOLD_MODULES, "in.safetensors", "out.safetensors"],
               tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""
    assert (tmp_path / "out.safetensors").exists()


def test_a_non_utf8_file_name_is_printed_as_its_bytes(tmp_path):
    """A file name holding the byte 0xFF reaches Python surrogate-escaped; with a strict UTF-8
    stdout (what a UTF-8 locale other than C.UTF-8 gives) writing it raw would crash, and with
    a lenient one the raw byte would reach the terminal. It is printed as ``\\xff`` instead."""
    from safetensors.numpy import save_file

    v = np.arange(24, dtype=np.float32).reshape(3, 8) + 1
    save_file({"a.weight_g": np.linalg.norm(v, axis=1, keepdims=True), "a.weight_v": v},
              str(tmp_path / "plain.safetensors"))
    os.rename(os.fsencode(tmp_path / "plain.safetensors"),
              os.fsencode(tmp_path) + b"/bad\xffname.safetensors")
    env = {**os.environ, "NO_COLOR": "1", "PYTHONIOENCODING": "utf-8:strict"}
    argv = [sys.executable, "-m", "wnconvert", "inspect", b"bad\xffname.safetensors"]
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, timeout=120, env=env,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert b"bad\\xffname.safetensors" in proc.stdout
    assert b"\xff" not in proc.stdout + proc.stderr
