"""wnconvert: fold, decompose, export and verify weight-normalized checkpoints.

The public API (one typed function per job, see :mod:`wnconvert.api`) is re-exported here
lazily, so ``import wnconvert`` does not import torch::

    import wnconvert
    ckpt = wnconvert.load_checkpoint("generator.pt")
    folded = wnconvert.fold_state_dict(ckpt.state_dict)
    wnconvert.save_checkpoint(folded, "generator.folded.safetensors")
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ._version import __version__
from .errors import (
    CheckFailed,
    ConversionNotPossible,
    InputError,
    InputNotFound,
    WeightNormWarning,
    WnConvertError,
)

_LAZY = {
    # checkpoints
    "load_checkpoint": "formats",
    "save_checkpoint": "api",
    "Checkpoint": "formats",
    "inspect_checkpoint": "inspection",
    "find_pairs": "convert",
    "Pair": "convert",
    "fold_state_dict": "convert",
    "decompose_state_dict": "convert",
    "restyle_state_dict": "convert",
    "PrefixChange": "keys",
    # ONNX graphs
    "fold_onnx": "api",
    "check_onnx": "api",
    # export and verification
    "export_onnx": "api",
    "InputSpec": "export",
    "DynamicAxis": "export",
    "verify": "api",
    "VerifyOptions": "verify",
    "VerificationReport": "verify",
    # numerics on numpy arrays
    "fold": "numerics",
    "decompose": "numerics",
    "infer_dim": "numerics",
}

__all__ = [
    "__version__",
    "CheckFailed",
    "ConversionNotPossible",
    "InputError",
    "InputNotFound",
    "WeightNormWarning",
    "WnConvertError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'wnconvert' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
