"""The public Python API: one typed function per job, the same jobs the CLI runs.

Checkpoints: :func:`inspect_checkpoint`, :func:`fold_checkpoint`, :func:`decompose_checkpoint`,
:func:`restyle_checkpoint` (files in, files out, streaming and atomic) and
:func:`save_checkpoint`; the ``*_state_dict`` functions of :mod:`wnconvert` do the conversions
in memory. ONNX models: :func:`inspect_onnx`, :func:`check_onnx`, :func:`fold_onnx` (verified
before it is written); many at once: :func:`onnx_files`, :func:`check_onnx_files`,
:func:`inspect_files`, :func:`fold_onnx_files`. Live
modules: :func:`fold_module`. Export and verification: :func:`export_onnx`, :func:`verify`.

Options are keyword-only and validated where they are declared; results are typed and have
``to_dict()`` (the JSON the CLI prints). Errors are :class:`wnconvert.InputError` (a
``ValueError``) and :class:`wnconvert.ConversionNotPossible` (a ``RuntimeError``); a failed
verification is a result with ``passed == False``, not an exception. The library prints nothing:
pass ``progress=`` (see :class:`Progress`) to follow a job. Importing this module imports neither
torch nor onnx.
"""

from __future__ import annotations

from .checkpoints import (
    CheckpointFormat,
    CheckpointInspection,
    ConversionResult,
    KeyStyle,
    decompose_checkpoint,
    fold_checkpoint,
    inspect_checkpoint,
    open_checkpoint,
    restyle_checkpoint,
    save_checkpoint,
)
from .export import ExportOutcome, export_onnx
from .many import (
    CheckBatch,
    CheckedFile,
    FileBatch,
    FileOutcome,
    SkippedFile,
    check_onnx_files,
    fold_onnx_files,
    inspect_files,
    onnx_files,
)
from .modules import ModuleFoldResult, fold_module
from .onnx_models import (
    OnnxFoldResult,
    check_failure,
    check_onnx,
    fold_onnx,
    inspect_onnx,
    verification_failure,
)
from .progress import SILENT, Progress, StepCallback
from .verification import check_candidate, load_reference, protected_inputs, verify

__all__ = [
    "CheckBatch", "CheckedFile", "FileBatch", "FileOutcome", "SkippedFile", "check_onnx_files",
    "fold_onnx_files", "inspect_files", "onnx_files",
    "SILENT", "CheckpointFormat", "CheckpointInspection", "ConversionResult", "ExportOutcome",
    "KeyStyle", "ModuleFoldResult", "OnnxFoldResult", "Progress", "StepCallback",
    "check_candidate", "check_failure", "check_onnx", "decompose_checkpoint", "export_onnx",
    "fold_checkpoint", "fold_module", "fold_onnx", "inspect_checkpoint", "inspect_onnx",
    "load_reference", "open_checkpoint", "protected_inputs", "restyle_checkpoint",
    "save_checkpoint", "verification_failure", "verify",
]
