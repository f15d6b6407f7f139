"""The pre-commit hook (issue 21 §5), run by the real ``pre-commit try-repo`` on this checkout.

One ``.onnx`` file per repository: pre-commit passes every matching file to one ``wnconvert
check``. Each ``try-repo`` builds its own hook environment (its store is a temporary folder,
whatever ``PRE_COMMIT_HOME`` says), which is mostly pip waiting on the package index: the two
runs start together, the first time a test of this module asks for one, and each test waits for
its own. The installs come from pip's configured index; when that cannot be reached the tests
skip and say so (``registry``, from ``tests/test_packaging.py``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.test_packaging import REPO, clean_env, registry, run  # noqa: F401 - registry: a fixture
from tests.test_requires import lint_inputs

# file name, exit code of the hook, what its output says
CASES = [
    ("wn.onnx", 1, "computes weight norm at run time in 1 place(s)"),
    ("clean.onnx", 0, "Passed"),
]
Wait = Callable[[], subprocess.CompletedProcess[str]]
IDENTITY = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}


@pytest.fixture(scope="module")
def hook_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
              fixtures_dir: Path) -> Iterator[dict[str, Wait]]:
    """{file name: wait()}: ``pre-commit try-repo <this checkout> wnconvert-check --all-files``
    started in a new git repository holding only that file (and a pre-commit home of its own);
    ``wait()`` returns the finished run."""
    request.getfixturevalue("registry")
    if run(["git", "rev-parse", "HEAD"], REPO).returncode != 0:
        pytest.skip("pre-commit try-repo needs this checkout to be a git repository")
    inputs = tmp_path_factory.mktemp("inputs")
    lint_inputs(inputs, fixtures_dir)
    started: dict[str, tuple[subprocess.Popen[str], Path]] = {}
    try:
        for name, _, _ in CASES:
            case = tmp_path_factory.mktemp("hook")
            repo, home = case / "repo", case / "pre-commit-home"
            repo.mkdir()
            shutil.copyfile(inputs / name, repo / name)
            for git in (["init", "--quiet"], ["add", name]):
                assert run(["git", *git], repo, **IDENTITY).returncode == 0
            argv = [sys.executable, "-m", "pre_commit", "try-repo", str(REPO),
                    "wnconvert-check", "--all-files"]
            # Files, not pipes: two children writing while the test waits on one cannot block.
            with open(case / "stdout", "w") as out, open(case / "stderr", "w") as err:
                proc = subprocess.Popen(argv, cwd=repo, stdout=out, stderr=err, text=True,
                                        env=clean_env(PRE_COMMIT_HOME=str(home), **IDENTITY))
            started[name] = (proc, case)

        def waiter(name: str) -> Wait:
            def wait() -> subprocess.CompletedProcess[str]:
                proc, case = started[name]
                code = proc.wait(timeout=900)
                return subprocess.CompletedProcess(proc.args, code, (case / "stdout").read_text(),
                                                   (case / "stderr").read_text())
            return wait

        yield {name: waiter(name) for name in started}
    finally:
        for proc, _ in started.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize(("name", "code", "says"), CASES)
def test_the_pre_commit_hook(hook_runs: dict[str, Wait], name: str, code: int, says: str,
                             ) -> None:
    result = hook_runs[name]()
    assert result.returncode == code, result.stdout + result.stderr
    assert says in result.stdout
    assert "wnconvert-check" in result.stdout
