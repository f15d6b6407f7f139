"""The PyTorch reference of an export's verification, run ahead of the exported file.

An export's verification runs the reference (the model as the user built it, weight norm
computed at run time) on inputs that do not depend on the exported file, so its first case can
run before the file exists: in a thread while the main thread does the export's imports (onnx,
onnxscript, ONNX Runtime: Python under the GIL, which PyTorch's kernels release). Not beside the
export itself: while torch.export traces, torch.fx patches ``torch.nn.Module.__call__`` for the
whole process (``torch.fx._symbolic_trace._Patcher``), so a forward in another thread would go
through the tracer.

The outputs computed ahead serve only feeds equal, bit for bit, to the ones they were computed
on; any other case runs the reference as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .runners import InputSignature, TorchRunner

if TYPE_CHECKING:
    import numpy as np
    import torch

    from .tolerance import VerifyOptions


class TorchReferenceAhead:
    """The reference's outputs on one case, computed before verification asks for them."""

    def __init__(self, feeds: dict[str, np.ndarray], input_names: Sequence[str]) -> None:
        self.feeds = feeds
        self.input_names = list(input_names)
        self.outputs: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None  # what the reference raised, raised when used
        self.printed: list[str] = []  # what it printed to stdout, printed again when used
        self.output_names: list[str] = []

    def matches(self, feeds: Mapping[str, np.ndarray], input_names: Sequence[str]) -> bool:
        """Whether ``feeds`` are the ones computed on (same names, dtypes, shapes and bits)."""
        from .cases import same_feeds

        return list(input_names) == self.input_names and same_feeds(self.feeds, feeds)

    def runner(self, module: torch.nn.Module, *, input_names: Sequence[str]) -> TorchRunner:
        """The reference runner for verification: these outputs for these feeds (once), the
        module's own run for any other."""
        return _TorchAheadRunner(module, input_names=input_names, ahead=self)


class _TorchAheadRunner(TorchRunner):
    def __init__(self, module: torch.nn.Module, *, input_names: Sequence[str],
                 ahead: TorchReferenceAhead) -> None:
        super().__init__(module, input_names=input_names)
        self._ahead: TorchReferenceAhead | None = ahead

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        ahead = self._ahead
        if ahead is None or not ahead.matches(feeds, self.input_names):
            return super().run(feeds)
        self._ahead = None  # once: the outputs are handed over, not copied
        for line in ahead.printed:  # into the caller's capture, as if printed now
            print(line)
        if ahead.error is not None:
            raise ahead.error
        assert ahead.outputs is not None
        if not self.output_names:
            self.output_names = list(ahead.output_names)
        return ahead.outputs


def run_reference_ahead(module: torch.nn.Module, input_names: Sequence[str],
                        args: Sequence[torch.Tensor], options: VerifyOptions, *,
                        meanwhile: Callable[[], Any]) -> TorchReferenceAhead | None:
    """Run the reference on verification's first case in a thread while ``meanwhile`` runs
    here; return once both are done (None when that case cannot be known before the export:
    ``meanwhile`` has still run).

    ``input_names`` and ``args`` are the export's inputs: the exported file will take them under
    these names, dtypes and ranks, from which verification draws its cases (with its own seed,
    not the export's example values).
    """
    feeds = _first_case(input_names, args, options)
    if feeds is None:
        meanwhile()
        return None
    from ..capture import captured_output

    ahead = TorchReferenceAhead(feeds, input_names)

    def compute() -> None:
        runner = TorchRunner(module, input_names=input_names)
        try:
            ahead.outputs = runner.run(feeds)
            ahead.output_names = runner.output_names
        except BaseException as exc:  # noqa: BLE001 - raised where verification runs it
            ahead.error = exc

    # The reference may print (a user's model): one capture of the process's stdout covers
    # the thread, as verification's capture covers its runs.
    with captured_output("stdout") as captured:
        thread = threading.Thread(target=compute, name="wnconvert-reference-ahead",
                                  daemon=True)
        thread.start()
        try:
            meanwhile()
        finally:
            thread.join()
    ahead.printed = captured.lines
    return ahead


def _first_case(input_names: Sequence[str], args: Sequence[torch.Tensor],
                options: VerifyOptions) -> dict[str, np.ndarray] | None:
    """The feeds of verification's first case, as it will draw them from the exported file's
    inputs (None when that cannot be known beforehand)."""
    import dataclasses

    from ..dtypes import name_of_torch
    from .cases import CasePlan

    signature = [InputSignature(name, name_of_torch(arg.dtype), tuple(arg.shape))
                 for name, arg in zip(input_names, args, strict=True)]
    try:
        # The second size of dynamic axes comes after the first case: not needed for it.
        plan = CasePlan(signature, dataclasses.replace(options, dynamic_axes=()))
        first = next(iter(plan), None)
    except Exception:  # noqa: BLE001 - verification reports what is wrong with its inputs
        return None
    return first.feeds if first is not None else None
