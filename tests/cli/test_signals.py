"""How a real ``wnconvert`` process ends, in subprocesses: SIGINT/SIGTERM mid-write and a
stdout closed by its reader.

* A signal while an output is being written: the temp file or staging folder is removed, the
  exit code is 130 (SIGINT) or 143 (SIGTERM), one ``error:`` line, no traceback, and the folder
  holds exactly what it held before. The harness below makes the first write of the output
  block (in the child process only, by wrapping ``open``/``os.fdopen`` for binary writes),
  so the signal lands mid-write every time; for ``.pt`` outputs it lands inside
  ``torch.save``'s C++ writer, which would turn it into an "enforce fail".
* ``wnconvert inspect x.pt | head -1``: the closed pipe is not an error; the command's exit code
  is its own (0 for inspect, 1 for a check that fails), with nothing on stderr but that check's
  line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and pipes")

HARNESS = '''
import builtins, os, sys, time

ready, block_at = sys.argv[1], int(sys.argv[2])
real_open = builtins.open
writes = 0


class Blocking:
    """An output file whose `block_at`-th write signals `ready`, then waits for the signal."""

    def __init__(self, file):
        self._file = file

    def write(self, data):
        global writes
        written = self._file.write(data)
        writes += 1
        if writes == block_at:
            self._file.flush()
            real_open(ready, "w").close()
            go = ready + ".go"
            for _ in range(12000):  # the signal arrives here, or the test says go
                if os.path.exists(go):
                    break
                time.sleep(0.01)
        return written

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._file.close()


def _writes_bytes(mode):
    return isinstance(mode, str) and "b" in mode and ("w" in mode or "x" in mode)


def blocking_open(file, mode="r", *args, **kwargs):
    handle = real_open(file, mode, *args, **kwargs)
    return Blocking(handle) if _writes_bytes(mode) else handle


real_fdopen = os.fdopen


def blocking_fdopen(fd, mode="r", *args, **kwargs):
    handle = real_fdopen(fd, mode, *args, **kwargs)
    return Blocking(handle) if _writes_bytes(mode) else handle


# Every binary file opened for writing from here on is an output being written.
builtins.open = blocking_open
os.fdopen = blocking_fdopen

from wnconvert.cli import main

sys.argv = ["wnconvert", *sys.argv[3:]]
main()
'''


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR")}
    env["NO_COLOR"] = "1"
    return env


def _listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _hidden(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]


def _wait_until_writing(proc: subprocess.Popen, ready: Path) -> None:
    """Until the harness in ``proc`` has created ``ready`` (it blocks in its write then)."""
    deadline = time.monotonic() + 90
    while not ready.exists():
        assert proc.poll() is None, f"exited early: {proc.communicate()}"
        assert time.monotonic() < deadline, "the writer never started"
        time.sleep(0.02)


def _checkpoint(folder: Path) -> Path:
    path = folder / "in.pt"
    torch.manual_seed(0)
    torch.save({"a.weight_g": torch.rand(64, 1) + 0.5, "a.weight_v": torch.randn(64, 256),
                "b.weight": torch.randn(64, 64)}, path)
    return path


def _onnx_model(folder: Path) -> Path:
    import onnx

    from tests.onnx_graph.builders import weight_norm_model

    model, _, _ = weight_norm_model((64, 32), 0)
    path = folder / "m.onnx"
    onnx.save(model, str(path))
    return path


# input, arguments, signal, exit code, the write that blocks: torch.save's second write is
# inside its C++ zip writer, which turns an exception there into an "enforce fail".
CASES = {
    "pt-sigint": ("checkpoint", ["fold", "{src}", "-o", "{work}/out.pt"], signal.SIGINT, 130, 2),
    "pt-sigterm": ("checkpoint", ["fold", "{src}", "-o", "{work}/out.pt"], signal.SIGTERM, 143,
                   2),
    "safetensors-sigterm": ("checkpoint", ["fold", "{src}", "-o", "{work}/out.safetensors"],
                            signal.SIGTERM, 143, 1),
    "onnx-sigterm": ("onnx", ["fold", "{src}", "-o", "{work}/out.onnx", "--no-verify"],
                     signal.SIGTERM, 143, 1),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_signal_while_writing_leaves_nothing(case, tmp_path):
    kind, argv, signum, code, block_at = CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    src = _checkpoint(work) if kind == "checkpoint" else _onnx_model(work)
    harness = tmp_path / "harness.py"
    harness.write_text(HARNESS)
    ready = tmp_path / "ready"
    before = _listing(work)
    args = [a.format(src=src, work=work) for a in argv]
    proc = subprocess.Popen([sys.executable, str(harness), str(ready), str(block_at), *args],
                            cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_until_writing(proc, ready)
        assert _hidden(work), "nothing staged: the signal would not land mid-write"
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code, stderr
    line, = stderr.strip().splitlines()
    assert line.startswith("error: ")
    assert ("interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)") in line
    assert "enforce" not in stderr and "Traceback" not in stderr
    assert _hidden(work) == []
    assert _listing(work) == before


def _closed_stdout(argv: list[str], cwd: Path) -> tuple[int, str]:
    """Run ``wnconvert argv`` with its stdout pipe closed before it writes anything."""
    proc = subprocess.Popen([sys.executable, "-m", "wnconvert", *argv], cwd=cwd, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.close()  # like `| head -1` once it has its line: later writes get EPIPE
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr


@pytest.mark.slow
@pytest.mark.parametrize("flag", [[], ["--json"]], ids=["table", "json"])
def test_closed_stdout_is_not_an_error(flag, tmp_path):
    source = _checkpoint(tmp_path)
    code, stderr = _closed_stdout(["inspect", str(source), *flag], tmp_path)
    assert (code, stderr) == (0, "")


@pytest.mark.slow
def test_closed_stdout_keeps_a_failed_check_failed(tmp_path):
    model = _onnx_model(tmp_path)  # computes weight norm at run time: `check` fails
    code, stderr = _closed_stdout(["check", str(model)], tmp_path)
    assert code == 1
    line, = stderr.strip().splitlines()
    assert "computes weight norm at run time" in line


def test_closed_stdout_on_help(tmp_path):
    code, stderr = _closed_stdout(["--help"], tmp_path)
    assert (code, stderr) == (0, "")


@pytest.mark.slow
def test_two_runs_writing_one_output(tmp_path):
    """The run that finishes second keeps the first one's output and exits 2."""
    work = tmp_path / "work"
    work.mkdir()
    src = _checkpoint(work)
    output = work / "out.safetensors"
    harness = tmp_path / "harness.py"
    harness.write_text(HARNESS)
    ready = tmp_path / "ready"
    slow = subprocess.Popen([sys.executable, str(harness), str(ready), "1", "fold", str(src),
                             "-o", str(output)], cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_until_writing(slow, ready)
        fast = subprocess.run([sys.executable, "-m", "wnconvert", "fold", str(src), "-o",
                               str(output)], cwd=tmp_path, env=_env(), capture_output=True,
                              text=True, timeout=120, check=False)
        assert fast.returncode == 0, fast.stderr
        first = output.read_bytes()
        (tmp_path / "ready.go").touch()
        _, stderr = slow.communicate(timeout=60)
    finally:
        if slow.poll() is None:
            slow.kill()
            slow.communicate()
    assert slow.returncode == 2, stderr
    line, = stderr.strip().splitlines()
    assert "out.safetensors: appeared while writing" in line and "--force" in line
    assert output.read_bytes() == first
    assert _hidden(work) == []


def test_later_signals_wait_for_the_cleanup_then_end_the_process(monkeypatch):
    from wnconvert.cli import lifecycle

    monkeypatch.setattr(lifecycle, "_received", None)
    clock = {"now": 100.0}
    monkeypatch.setattr(lifecycle.time, "monotonic", lambda: clock["now"])
    kills: list[int] = []
    monkeypatch.setattr(lifecycle.os, "kill", lambda pid, signum: kills.append(signum))
    monkeypatch.setattr(lifecycle.signal, "signal", lambda signum, handler: None)
    with pytest.raises(lifecycle.Terminated) as caught:
        lifecycle._on_signal(signal.SIGTERM, None)
    assert caught.value.exit_code == 143 and lifecycle.received_signal() == signal.SIGTERM
    clock["now"] += 1
    lifecycle._on_signal(signal.SIGINT, None)  # ignored: the cleanup is running
    assert kills == []
    clock["now"] += lifecycle._GRACE_S
    lifecycle._on_signal(signal.SIGINT, None)  # something hangs: the default action
    assert kills == [signal.SIGINT]
