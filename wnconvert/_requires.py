"""The one check for PyTorch, which the base install leaves out.

``pip install 'wnconvert[cpu]'`` (the lint install) reads ONNX graphs and safetensors without
PyTorch; ``.pt``/``.nemo``/``.pt2`` files, the export and PyTorch references need the ``torch``
extra. Each job that needs it calls :func:`require_torch` before it starts, so a lint install
answers with one line naming the extra, not a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import InputError

TORCH_EXTRA = "pip install 'wnconvert[torch]'"


def require_torch(purpose: str) -> ModuleType:
    """``torch``; :class:`InputError` ``"{purpose} needs PyTorch, which is not installed: pip
    install 'wnconvert[torch]'"`` where it is not installed. ``purpose`` names the file and the
    job, e.g. ``"reading model.pt"``."""
    try:
        return importlib.import_module("torch")
    except ModuleNotFoundError as exc:
        # Only torch itself missing: a broken install (one of torch's own imports failing)
        # keeps its traceback, which names what is really wrong.
        if exc.name != "torch":
            raise
        raise InputError(f"{purpose} needs PyTorch, which is not installed: {TORCH_EXTRA}"
                         ) from None
