"""How a job tells its caller what it is doing: an object, never a print.

The library prints nothing. A job takes ``progress=`` (anything with these three methods; the
CLI passes one that draws rich bars on a terminal) and calls it at each stage. The default,
:data:`SILENT`, ignores everything. Warnings about the data (zero norms, NaN/Inf, what an
exporter changed) are Python warnings of category :class:`wnconvert.WeightNormWarning`, so a
caller filters them the usual way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

#: ``callback(item_name, done, total)`` for one stage (tensors written, cases run, ...).
StepCallback = Callable[[str, int, int], None]


class Progress(Protocol):
    """What a job reports while it runs."""

    def status(self, message: str) -> None:
        """A stage begins (``loading model.pt``, ``exporting to model.onnx``)."""

    def note(self, message: str) -> None:
        """Something the user should read in the result (``keys renamed: model.*``)."""

    def step(self, description: str) -> AbstractContextManager[StepCallback | None]:
        """A stage with countable items: yields the callback to advance it (or None)."""


class _Silent:
    def status(self, message: str) -> None:
        pass

    def note(self, message: str) -> None:
        pass

    @contextmanager
    def step(self, description: str) -> Iterator[StepCallback | None]:
        yield None


#: The default: a library call reports nothing.
SILENT: Progress = _Silent()
