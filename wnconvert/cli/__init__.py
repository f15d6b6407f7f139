"""The ``wnconvert`` command line: a view of the library (:mod:`wnconvert.api`).

Each ``*_cmds`` module maps flags onto one library job and renders its result; the commands
are registered on :data:`app` (in :mod:`.app`). None of them imports torch, onnx or
onnxruntime at module level, so ``wnconvert --help`` stays instant.
"""

from __future__ import annotations

# Importing these modules registers their commands on `app` (order = order in --help).
from . import checkpoint_cmds as _checkpoint_cmds  # noqa: F401
from . import export_cmds as _export_cmds  # noqa: F401
from . import graph_cmds as _graph_cmds  # noqa: F401
from .app import app, main

__all__ = ["app", "main"]
