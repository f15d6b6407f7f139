"""Pickled objects whose unpickling would run code (a loader that is safe never runs them):
each leaves a marker file behind if it ever does."""

from __future__ import annotations

import os
from pathlib import Path


class RunsShell:
    """Unpickling this runs a shell command: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class OpensForWriting:
    """Unpickling this calls ``open(marker, "w")``: a builtin, not a shell, creates the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))
