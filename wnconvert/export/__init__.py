"""Exporting a weight-normalized model to ONNX with no weight norm left in the graph.

The path: build the user's module (``model="MODULE:CALLABLE"`` or ``"path/file.py:CALLABLE"``),
load the checkpoint into it with ``strict=True`` (weight-norm pairs restyled, folded or
decomposed to fit the module's own keys), keep that module as the *reference*, and export a
second instance with weight norm removed whose weights are the exact float64 fold. A
``torch.export`` program (``.pt2``) is also accepted when the caller trusts it
(``trust_program=True``: a program runs code from its file), loaded without unpickling anything
and refused if its graph calls more than core ATen/prims operators or touches files.

One module per job: :mod:`.inputs` (input specs, ``.npz``, the random-input generator, output
flattening), :mod:`.torch_model` (build the user's model, strip/apply/match weight norm),
:mod:`.program` (``.pt2``), :mod:`.onnx_export` (export proper) and :mod:`.names` (initializer
names). torch, onnx and onnx_ir are imported inside functions: importing this package is cheap.
"""

from __future__ import annotations

from .inputs import (
    DTYPES,
    FLOAT_DTYPES,
    MAX_INPUT_BYTES,
    DynamicAxis,
    InputSpec,
    example_inputs,
    flatten_outputs,
    load_inputs_npz,
    output_names,
    random_array,
)
from .names import RenameResult, find_runtime_weight_norm, restore_parameter_names
from .onnx_export import (
    DEFAULT_OPSET,
    EXTERNAL_DATA_THRESHOLD,
    Exporter,
    ExportResult,
    export_onnx,
)
from .program import fold_program_weight_norm, load_program, prepare_program
from .torch_model import (
    PreparedModel,
    apply_weight_norm_like,
    build_model,
    fold_all,
    forward_input_names,
    has_weight_norm,
    load_callable,
    load_strict,
    match_state_dict,
    prepare_model,
    strip_weight_norm,
)

__all__ = [
    "DEFAULT_OPSET", "DTYPES", "EXTERNAL_DATA_THRESHOLD", "FLOAT_DTYPES", "MAX_INPUT_BYTES",
    "DynamicAxis", "ExportResult", "Exporter", "InputSpec", "PreparedModel", "RenameResult",
    "apply_weight_norm_like", "build_model", "example_inputs", "export_onnx",
    "find_runtime_weight_norm", "flatten_outputs", "fold_all", "fold_program_weight_norm",
    "forward_input_names", "has_weight_norm", "load_callable", "load_inputs_npz",
    "load_program", "load_strict", "match_state_dict", "output_names", "prepare_model",
    "prepare_program", "random_array", "restore_parameter_names", "strip_weight_norm",
]
