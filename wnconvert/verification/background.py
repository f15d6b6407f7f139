"""An ONNX reference run ahead, in a background thread, while the candidate is still being made.

``wnconvert fold MODEL.onnx`` verifies the folded model against the original on ONNX Runtime
CPU. The original's session and its outputs do not depend on the fold, so they are computed
while the fold works: ONNX Runtime releases the GIL while it loads and runs a model, and the
fold is Python and numpy work on the other core. The session is dropped as soon as its outputs
exist, so the two models' weights are not held by two sessions at once (peak memory).

Nothing here decides a result: :meth:`ReferenceAhead.runner` hands the outputs over only for
the inputs the verification itself generates (same signature, feeds compared array by array),
and anything unexpected (a session that does not load, other inputs, more cases than are worth
keeping) leaves the verification to run the reference itself, as without this module, with
its own error messages.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .cases import CasePlan, same_feeds
from .providers import CPU, _spec, quiet_ort_logger
from .runners import InputSignature, OrtRunner

if TYPE_CHECKING:
    import numpy as np

    from .tolerance import VerifyOptions

#: More input cases than this are not run ahead: their outputs would all be held at once,
#: where the verification holds one case at a time.
MAX_CASES = 4
#: A model with more tensor bytes than this has its candidate session wait for the reference's
#: runs to end and the weight diff (float64 copies of the largest tensors) run before it: each
#: session holds the weights, and peak memory counts more than the time saved (measured on 1 GB
#: of weights: 1.46x the model side by side, 0.3 s faster).
SIDE_BY_SIDE_BYTES = 256 * 2**20


def side_by_side_threads(nbytes: int) -> int | None:
    """ONNX Runtime's CPU threads for a session that runs beside other work (the other session,
    the fold, the weight diff) on a model of ``nbytes`` of tensors: one, as each of those
    takes a core (measured on SpeechT5's vocoder: 0.49 s of CPU per run with one thread, 0.57 s
    with two, and no slower beside other work; the verified fold used 10-15% less CPU). None
    (ORT's default, a thread per core) for a big model, whose sessions run alone."""
    return 1 if nbytes <= SIDE_BY_SIDE_BYTES else None


@dataclass(frozen=True)
class _Outputs:
    feeds: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    seconds: float


class ReferenceAhead:
    """The reference model ``path`` run on ONNX Runtime CPU in a background thread, on the
    input cases ``options`` generates from its own input signature.

    Start it only on a model that was read and validated (``onnx.checker``), as every model
    ONNX Runtime loads here is. :meth:`runner` waits for the thread; :meth:`close` too (call it
    on every way out, e.g. with ``with``).
    """

    def __init__(self, path: Path, options: VerifyOptions, *,
                 intra_op_threads: int | None = None) -> None:
        self.path = Path(path)
        self._options = options
        self._threads = intra_op_threads
        self.signature: list[InputSignature] | None = None
        self.output_names: list[str] = []
        self.messages: list[str] = []
        self._runs: list[_Outputs] = []
        self.unused: str | None = None  # why the outputs cannot be used (None: they can)
        # Set once the session is up and its cases planned (or that failed): the verification
        # can then decide to use the outputs while they are still being computed.
        self._planned = threading.Event()
        self._thread = threading.Thread(target=self._work, name="wnconvert-reference",
                                        daemon=True)
        self._thread.start()

    def __enter__(self) -> ReferenceAhead:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Wait for the thread (a library call leaves no thread behind)."""
        self._thread.join()

    def _work(self) -> None:
        # Any failure only means "not ahead": the verification then builds the reference
        # session itself and reports what goes wrong in its own words.
        try:
            # ORT's process-wide logger as the verification sets it, before this first session.
            quiet_ort_logger(enabled=self._options.ort_logging)
            # Not captured: a capture redirects the process's stdout, which the caller's
            # thread may be using; the CPU provider with ORT's logger at fatal prints nothing.
            runner = OrtRunner(self.path, _spec(CPU, cuda_tf32=False, explicit=True),
                               ort_logging=self._options.ort_logging, capture=False,
                               intra_op_threads=self._threads)
            self.signature = runner.inputs
            self.output_names = list(runner.output_names)
            self.messages = list(runner.messages)
            plan = CasePlan(self.signature, self._options)
            if len(plan) > MAX_CASES:
                self.unused = f"{len(plan)} input cases (more than {MAX_CASES})"
                return
            self._planned.set()
            for case in plan:
                started = time.perf_counter()
                outputs = runner.run_uncaptured(case.feeds)
                self._runs.append(_Outputs(case.feeds, outputs,
                                           time.perf_counter() - started))
        except Exception as exc:  # noqa: BLE001 - see above: the verification reports it
            if not self._planned.is_set():
                self.unused = f"{type(exc).__name__}: {exc}"
            # else: the cases that ran are used, the others run again (AheadRunner.run)
        finally:
            self._planned.set()

    def runner(self, signature: Sequence[InputSignature]) -> AheadRunner | None:
        """The outputs as a :class:`~.runners.Runner`, when they were computed for a model with
        ``signature`` (the candidate's inputs, which the verification generates its cases
        from); else None. Waits until the session is up, not for its runs: the runner waits
        for each case's outputs when they are asked for."""
        self._planned.wait()
        if self.unused is not None:
            return None
        if self.signature != list(signature):
            self.unused = "the candidate's inputs differ from the reference's"
            return None
        return AheadRunner(self)


class AheadRunner:
    """A :class:`~.runners.Runner` that answers with the outputs :class:`ReferenceAhead`
    computed, for the very feeds it ran (compared array by array); other feeds (never expected)
    get a session of their own, built on first need."""

    def __init__(self, ahead: ReferenceAhead) -> None:
        self._ahead = ahead
        self.path = ahead.path
        self.output_names = list(ahead.output_names)
        self.messages = ahead.messages
        self._runs = ahead._runs
        self._options = ahead._options
        self._session: OrtRunner | None = None
        self.last_seconds = 0.0

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._computed(feeds)
        if outputs is None:
            self._ahead.close()  # the background runs are over: all that will come is there
            outputs = self._computed(feeds)
        if outputs is not None:
            return outputs
        if self._session is None:
            # Uncaptured: the verification captures stdout around the runs.
            self._session = OrtRunner(self.path, _spec(CPU, cuda_tf32=False, explicit=True),
                                      ort_logging=self._options.ort_logging, capture=False,
                                      intra_op_threads=self._ahead._threads)
        started = time.perf_counter()
        outputs = self._session.run_uncaptured(feeds)
        self.last_seconds = time.perf_counter() - started
        return outputs

    def _computed(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        for index, done in enumerate(self._runs):
            if same_feeds(done.feeds, feeds):
                del self._runs[index]  # each case is asked for once: free its outputs after
                self.last_seconds = done.seconds
                return done.outputs
        return None

