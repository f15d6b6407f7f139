"""A user's type checker sees real signatures for every public name (issue 17 §3): ``mypy
--strict`` on a script that uses ``wnconvert`` reveals each public callable's signature, never
``Any`` (the lazy ``__getattr__`` alone would hide them).

mypy keeps its cache for this run in ``.mypy_cache/strict-user-script`` (beside the project's own,
which ``make test`` keeps too): a cold run analyses wnconvert, torch and numpy (about 30 CPU s),
a warm one re-reads what did not change (about 1 s). mypy checks each cached module against
its source, so what it reveals is the same as from nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import wnconvert

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mypy_strict_sees_every_public_name(tmp_path: Path) -> None:
    names = [name for name in wnconvert.__all__ if name != "__version__"]
    script = tmp_path / "user_script.py"
    script.write_text("import wnconvert\n\n" + "".join(
        f"reveal_type(wnconvert.{name})\n" for name in names)
        + "result = wnconvert.fold_checkpoint('generator.pt')\nreveal_type(result.output)\n")
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
         "--cache-dir", str(REPO / ".mypy_cache" / "strict-user-script"), str(script)],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    revealed = [line for line in done.stdout.splitlines() if "Revealed type" in line]
    assert len(revealed) == len(names) + 1, done.stdout + done.stderr
    for name, line in zip([*names, "result.output"], revealed, strict=True):
        assert '"Any"' not in line, (name, line)
    assert 'Revealed type is "pathlib.Path"' in revealed[-1]
    assert "Success: no issues found" in done.stdout, done.stdout
