"""How long ``make test`` takes (issue 22 goal 4: pytest, ruff and mypy in 60 s or less on 2
cores, from a warm ``.venv``, nothing dropped), and where the CPU seconds go.

Each round runs ``make test``'s three commands in child processes, as the Makefile does (the
pytest command is read from the Makefile's ``PYTEST`` line, so the two cannot drift), and, with
``--tiers all,fast``, ``make test-fast``'s (``-m "not slow"``) interleaved with it round by
round, so that both see the same background load. For each command it reads the wall time and
the CPU seconds (user + system) of the child and of everything it started (xdist workers, the
subprocesses of the tests), from ``getrusage(RUSAGE_CHILDREN)``: on a shared machine the CPU
seconds are the figure that does not depend on the load, and ``CPU / cores`` is the best wall
time those cores could give.

Prints each round, then min / median / max of the wall time, of the CPU seconds and of the
ratio to the 60 s goal (the goal is the floor of this job: there is no other tool to compare
with). ``--per-file`` adds the pytest CPU seconds per test file (in-process and in the test's
own subprocesses) of the last round of each tier, longest first: the profile that says what a
faster suite would have to change.

A round of ``make test`` takes minutes (every test, the slow ones too), so this script is not
in ``make bench``'s list. From the repository root, with the ``.venv`` of ``make setup``:

    .venv/bin/python benchmarks/bench_test_suite.py [--repeat 3] [--tiers all,fast] [--per-file]
        [--pytest-args '-n 3']
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL_S = 60.0  # issue 22: pytest + ruff + mypy
TIER_MARKS = {"all": [], "fast": ["-m", "not slow"]}

# Loaded into every pytest process with -p: CPU seconds per test file, in the test's process
# and in the subprocesses it waited for. Written next to the results, one JSON per process.
PER_FILE_PLUGIN = '''
import json, os, resource, time
from collections import defaultdict
import pytest

_cpu = defaultdict(float)


def _children():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    own, children = time.process_time(), _children()
    yield
    _cpu[item.location[0]] += time.process_time() - own + _children() - children


def pytest_unconfigure(config):
    if _cpu:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        folder = os.environ["BENCH_PER_FILE_DIR"]
        with open(os.path.join(folder, worker + ".json"), "w") as out:
            json.dump(_cpu, out)
'''


@dataclass
class Step:
    name: str
    wall: float
    cpu: float


def makefile_commands(bin_dir: Path) -> dict[str, list[str]]:
    """``make test``'s commands, from the Makefile (``PYTEST := ...`` and the ruff/mypy lines)."""
    text = (REPO / "Makefile").read_text()
    pytest_line = re.search(r"^PYTEST := (.*)$", text, re.M)
    ruff_line = re.search(r"^\t\$\(BIN\)/ruff (.*)$", text, re.M)
    if pytest_line is None or ruff_line is None:
        raise SystemExit("the Makefile has no `PYTEST := ...` or `$(BIN)/ruff ...` line")
    words = shlex.split(pytest_line[1].replace("$(BIN)", str(bin_dir)))
    env_words = [w for w in words if re.match(r"^[A-Z_]+=", w)]
    pytest_cmd = [w for w in words if w not in env_words]
    ruff_cmd = [str(bin_dir / "ruff"), *shlex.split(ruff_line[1])]
    return {"pytest": ["env", *env_words, *pytest_cmd], "ruff": ruff_cmd,
            "mypy": [str(bin_dir / "mypy")]}


def run(name: str, cmd: list[str], env: dict[str, str]) -> Step:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stdout[-4000:]}")
    if name == "pytest":
        summary = done.stdout.strip().splitlines()[-1]
        print(f"    {summary}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Step(name, wall, cpu)


def per_file(folder: Path) -> dict[str, float]:
    totals: dict[str, float] = {}
    for path in folder.glob("*.json"):
        for file, cpu in json.loads(path.read_text()).items():
            totals[file] = totals.get(file, 0.0) + cpu
    return totals


def spread(values: list[float], fmt: str = "{:.1f}") -> str:
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values),
                                                max(values)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1, help="rounds (default 1)")
    parser.add_argument("--tiers", default="all",
                        help="comma-separated: all (make test), fast (make test-fast)")
    parser.add_argument("--per-file", action="store_true",
                        help="also print the pytest CPU seconds per test file")
    parser.add_argument("--top", type=int, default=25, help="files shown by --per-file")
    parser.add_argument("--pytest-args", default="",
                        help="appended to the Makefile's pytest command, to try a variant "
                             "(e.g. '-n 3'; the last -n wins)")
    args = parser.parse_args()
    tiers = args.tiers.split(",")
    if unknown := [t for t in tiers if t not in TIER_MARKS]:
        raise SystemExit(f"unknown tier(s) {unknown}: choose from {sorted(TIER_MARKS)}")

    bin_dir = Path(sys.executable).parent
    commands = makefile_commands(bin_dir)
    cores = os.cpu_count() or 1
    print(f"make test's commands on {cores} cores (load average now "
          f"{os.getloadavg()[0]:.1f}):")
    for name, cmd in commands.items():
        print(f"  {name}: {' '.join(cmd)}")

    results: dict[str, list[list[Step]]] = {tier: [] for tier in tiers}
    files: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        plugin_dir = Path(scratch) / "plugin"
        plugin_dir.mkdir()
        (plugin_dir / "bench_per_file.py").write_text(PER_FILE_PLUGIN)
        for round_no in range(1, args.repeat + 1):
            for tier in tiers:
                env = dict(os.environ)
                pytest_cmd = [*commands["pytest"], *TIER_MARKS[tier], "-q",
                              *shlex.split(args.pytest_args)]
                per_file_dir = Path(scratch) / f"{tier}-{round_no}"
                if args.per_file:
                    per_file_dir.mkdir()
                    env["PYTHONPATH"] = os.pathsep.join(
                        filter(None, [str(plugin_dir), env.get("PYTHONPATH", "")]))
                    env["BENCH_PER_FILE_DIR"] = str(per_file_dir)
                    pytest_cmd += ["-p", "bench_per_file"]
                print(f"round {round_no}, make {'test' if tier == 'all' else 'test-fast'}"
                      f" (load average {os.getloadavg()[0]:.1f}):")
                steps = [run("pytest", pytest_cmd, env), run("ruff", commands["ruff"], env),
                         run("mypy", commands["mypy"], env)]
                results[tier].append(steps)
                total_wall = sum(s.wall for s in steps)
                print("    " + ", ".join(f"{s.name} {s.wall:.1f} s ({s.cpu:.1f} CPU s)"
                                         for s in steps)
                      + f"; total {total_wall:.1f} s = {total_wall / GOAL_S:.2f}x the goal")
                if args.per_file:
                    files[tier] = per_file(per_file_dir)

    print()
    print("| job | wall s min / median / max | CPU s min / median / max "
          "| ratio to the 60 s goal min / median / max |")
    print("| --- | ---: | ---: | --- |")
    for tier, rounds in results.items():
        walls = [sum(s.wall for s in steps) for steps in rounds]
        cpus = [sum(s.cpu for s in steps) for steps in rounds]
        label = "`make test`" if tier == "all" else "`make test-fast`"
        print(f"| {label} (pytest + ruff + mypy) | {spread(walls)} | {spread(cpus)} "
              f"| {spread([w / GOAL_S for w in walls], '{:.2f}')} |")
        for index, name in enumerate(("pytest", "ruff", "mypy")):
            print(f"| &nbsp; {name} | {spread([r[index].wall for r in rounds])} "
                  f"| {spread([r[index].cpu for r in rounds])} | |")
    print(f"\nCPU seconds / {cores} cores is the wall time a quiet machine could reach.")

    for tier, totals in files.items():
        print(f"\npytest CPU seconds per file, {tier} (last round; {sum(totals.values()):.0f} "
              "s in tests, the rest is start-up and collection):")
        for file, cpu in sorted(totals.items(), key=lambda kv: -kv[1])[:args.top]:
            print(f"  {cpu:7.1f}  {file}")


if __name__ == "__main__":
    main()
