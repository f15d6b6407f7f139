"""Verification with Polygraphy's data: a reference read from its saved outputs, and what a
verification ran recorded for its files (inputs and ``RunResults``).

Runner names in the ``RunResults`` wnconvert writes: :data:`REFERENCE_RUNNER` first (or the
name of the Polygraphy runner that served as reference), then one runner per provider,
``wnconvert-onnxrt-<Provider>``, each with one iteration per input case. ``polygraphy run
--load-outputs`` compares each runner with the next one and the last with its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:
    import numpy as np

REFERENCE_RUNNER = "wnconvert-reference"


def provider_runner(provider: str) -> str:
    """The runner name of one provider's results (``wnconvert-onnxrt-CPUExecutionProvider``)."""
    return f"wnconvert-onnxrt-{provider}"


class RecordedRunner:
    """A reference that replays outputs saved by Polygraphy: one iteration per case, in order
    (the cases are the feeds of the Polygraphy inputs file they were computed from)."""

    def __init__(self, path: Path, name: str,
                 iterations: Sequence[Mapping[str, np.ndarray]]) -> None:
        self.path = path
        self.name = name
        self.iterations = [dict(outputs) for outputs in iterations]
        self.output_names = list(self.iterations[0])
        self._next = 0

    def check_cases(self, count: int) -> None:
        """Refuse a number of input cases other than the saved iterations' (before running)."""
        if count != len(self.iterations):
            raise InputError.template(
                "{path}: runner {name!r} has {saved} iteration(s) but {-inputs_file} gives "
                "{count} feed(s); load the inputs file these outputs were computed from",
                path=self.path, name=self.name, saved=len(self.iterations), count=count)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        index = self._next
        self._next += 1
        outputs = self.iterations[index]
        if list(outputs) != self.output_names:
            raise InputError(
                f"{self.path}: runner {self.name!r} iteration {index} has outputs "
                f"{', '.join(outputs)}, iteration 0 has {', '.join(self.output_names)}; every "
                "iteration must have the same outputs")
        return outputs


def recorded_reference(path: Path, runner: str | None) -> RecordedRunner:
    """The reference runner picked from a Polygraphy outputs file: the only one, or ``runner``
    (refused, listing the runners, when several are saved and none or an unknown one is
    named)."""
    from ..formats.polygraphy_json import load_run_results

    runners = load_run_results(path)
    names = [name for name, _ in runners]
    if runner is None and len(runners) == 1:
        return RecordedRunner(path, *runners[0])
    if runner is None:
        raise InputError.template(
            "{path}: holds {count} runners ({names}); pick the reference with "
            "{-reference_runner} NAME", path=path, count=len(names), names=", ".join(names))
    for name, iterations in runners:
        if name == runner:
            return RecordedRunner(path, name, iterations)
    raise InputError.template("{-reference_runner=runner}: {path} has no such runner; its "
                              "runners are {names}", runner=runner, path=path,
                              names=", ".join(names))


@dataclass
class Recording:
    """What a verification ran, for Polygraphy files: every case's feeds, and each runner's
    outputs and run time per case (kept in memory until written)."""

    reference_name: str = REFERENCE_RUNNER
    feeds: list[dict[str, np.ndarray]] = field(default_factory=list)
    outputs: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=dict)
    runtimes: dict[str, list[float]] = field(default_factory=dict)

    def add(self, runner: str, outputs: Mapping[str, np.ndarray], seconds: float) -> None:
        self.outputs.setdefault(runner, []).append(dict(outputs))
        self.runtimes.setdefault(runner, []).append(seconds)

    def runners(self) -> list[tuple[str, list[dict[str, np.ndarray]]]]:
        """The runners that ran every case, reference first (a provider that failed midway is
        left out: Polygraphy compares iteration by iteration)."""
        return [(name, outputs) for name, outputs in self.outputs.items()
                if len(outputs) == len(self.feeds)]
