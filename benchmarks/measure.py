"""Shared by the benchmark scripts: run one command in a child and read its cost from the kernel."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple


class Measured(NamedTuple):
    """One child's cost, as the kernel reports it."""

    wall_s: float
    cpu_s: float  # user + system, every thread: hardly depends on what else the machine runs
    peak_mb: float  # the child's own peak RSS


def run_measured(cmd: Sequence[str], outputs: Sequence[Path] = (),
                 env: Mapping[str, str] | None = None) -> Measured:
    """Wall seconds, CPU seconds and peak RSS (MB) of one child process (via ``os.wait4``).

    ``outputs`` are deleted first and dirty pages flushed (``os.sync``), so no run pays for
    another's write-back. The caller must stay small: a child's peak RSS as the kernel reports
    it starts from its parent's size at fork. A failed run stops the benchmark.
    """
    for stale in outputs:
        stale.unlink(missing_ok=True)
    os.sync()
    start = time.perf_counter()
    proc = subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=None if env is None else dict(env))
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed ({proc.returncode}): {err[-2000:]}")
    return Measured(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)  # KiB
