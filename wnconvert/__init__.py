"""wnconvert: fold, decompose, export and verify weight-normalized checkpoints.

Every job the command line runs is one typed function here (see :mod:`wnconvert.api`)::

    import wnconvert
    result = wnconvert.fold_checkpoint("generator.pt", "generator.folded.safetensors")
    outcome = wnconvert.export_onnx("generator.pt", "generator.onnx", model=my_module,
                                    inputs=[wnconvert.InputSpec((1, 80, 200))])
    assert outcome.passed

``import wnconvert`` is fast and imports neither torch nor onnx: the names below are imported
on first use (and seen with their real types by type checkers).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    CheckFailed,
    ConversionNotPossible,
    InputError,
    InputNotFound,
    WeightNormWarning,
    WnConvertError,
)

if TYPE_CHECKING:
    from .api import (
        SILENT,
        CheckBatch,
        CheckpointInspection,
        ConversionResult,
        ExportOutcome,
        FileBatch,
        ModuleFoldResult,
        OnnxFoldResult,
        Progress,
        check_onnx,
        check_onnx_files,
        decompose_checkpoint,
        export_onnx,
        fold_checkpoint,
        fold_module,
        fold_onnx,
        fold_onnx_files,
        inspect_checkpoint,
        inspect_files,
        inspect_onnx,
        onnx_files,
        restyle_checkpoint,
        save_checkpoint,
        verify,
    )
    from .convert import (
        Pair,
        decompose_state_dict,
        find_pairs,
        fold_state_dict,
        restyle_state_dict,
    )
    from .export import DynamicAxis, InputSpec
    from .formats import Checkpoint, load_checkpoint
    from .keys import PrefixChange
    from .numerics import decompose, fold, infer_dim
    from .onnx_graph import CheckResult, Inspection
    from .verification import (
        ToleranceOverride,
        VerificationReport,
        VerifyOptions,
    )

#: Public name -> the module that defines it (imported on first use).
_LAZY = {
    # checkpoint files
    "load_checkpoint": "formats",
    "Checkpoint": "formats",
    "inspect_checkpoint": "api",
    "fold_checkpoint": "api",
    "decompose_checkpoint": "api",
    "restyle_checkpoint": "api",
    "save_checkpoint": "api",
    "CheckpointInspection": "api",
    "ConversionResult": "api",
    # in memory
    "find_pairs": "convert",
    "Pair": "convert",
    "fold_state_dict": "convert",
    "decompose_state_dict": "convert",
    "restyle_state_dict": "convert",
    "PrefixChange": "keys",
    # live modules
    "fold_module": "api",
    "ModuleFoldResult": "api",
    # ONNX models
    "inspect_onnx": "api",
    "check_onnx": "api",
    "fold_onnx": "api",
    "OnnxFoldResult": "api",
    "onnx_files": "api",
    "check_onnx_files": "api",
    "CheckBatch": "api",
    "inspect_files": "api",
    "fold_onnx_files": "api",
    "FileBatch": "api",
    "Inspection": "onnx_graph",
    "CheckResult": "onnx_graph",
    # export and verification
    "export_onnx": "api",
    "ExportOutcome": "api",
    "InputSpec": "export",
    "DynamicAxis": "export",
    "verify": "api",
    "VerifyOptions": "verification",
    "ToleranceOverride": "verification",
    "VerificationReport": "verification",
    # following a job
    "Progress": "api",
    "SILENT": "api",
    # numerics on numpy arrays
    "fold": "numerics",
    "decompose": "numerics",
    "infer_dim": "numerics",
}

__all__ = [
    "__version__", "CheckFailed", "ConversionNotPossible", "InputError", "InputNotFound",
    "WeightNormWarning", "WnConvertError", "load_checkpoint", "Checkpoint", "inspect_checkpoint",
    "fold_checkpoint", "decompose_checkpoint", "restyle_checkpoint", "save_checkpoint",
    "CheckpointInspection", "ConversionResult", "find_pairs", "Pair", "fold_state_dict",
    "decompose_state_dict", "restyle_state_dict", "PrefixChange", "fold_module",
    "ModuleFoldResult", "inspect_onnx", "check_onnx", "onnx_files", "check_onnx_files",
    "CheckBatch", "inspect_files", "fold_onnx_files", "FileBatch",
    "fold_onnx", "OnnxFoldResult", "Inspection", "CheckResult", "export_onnx", "ExportOutcome",
    "InputSpec", "DynamicAxis", "verify", "VerifyOptions", "ToleranceOverride",
    "VerificationReport", "Progress", "SILENT", "fold", "decompose", "infer_dim",
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
