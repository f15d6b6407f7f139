"""Numerical verification of an ONNX model against a reference (PyTorch or another ONNX model).

The rule, element-wise for every output::

    |candidate - reference| <= atol + rtol * |reference|

NaN or Inf on either side fails unless both sides agree (NaN with NaN, +Inf with +Inf, -Inf with
-Inf). Defaults depend on the reference output's dtype (:data:`DEFAULT_TOLERANCES`); float32
outputs of a provider running with TF32 allowed get :data:`TF32_TOLERANCE`; ``atol`` / ``rtol``
override them for every output and per-output overrides win over both.

Inputs are seeded random draws (``numpy.random.default_rng([seed, run])``, standard normal for
floating inputs) of the shapes given or read from the model, or real data from an ``.npz`` file.
When the model has dynamic axes, one more case runs at a second size of those axes.

The reference runs on CPU in float32 math. The candidate runs on ONNX Runtime once per
execution provider, with ORT's silent fallback off: a provider that fails (at load or at run
time) is that provider's failed result; CUDA/TensorRT run with TF32 off unless asked.

One module per job: :mod:`.tolerance` (rule, defaults, options), :mod:`.compare`,
:mod:`.providers` and :mod:`.runners` (sessions), :mod:`.cases` (inputs), :mod:`.weights`,
:mod:`.results` and :mod:`.report` (JSON, JUnit), :mod:`.orchestrate` (the run),
:mod:`.background` (an ONNX reference run ahead while its candidate is made).
"""

from __future__ import annotations

from .cases import CasePlan, InputCase, build_cases
from .compare import (
    REL_EPSILON,
    ArrayComparison,
    ErrorStats,
    compare_arrays,
    describe,
    dtype_name,
    json_number,
)
from .orchestrate import (
    ProgressCallback,
    verify_onnx_against_onnx,
    verify_onnx_against_outputs,
    verify_onnx_against_torch,
)
from .polygraphy import REFERENCE_RUNNER, RecordedRunner, Recording, provider_runner
from .providers import (
    CPU,
    CUDA,
    TENSORRT,
    ProviderFailed,
    ProviderPlan,
    ProviderSpec,
    available_providers,
    plan_providers,
    probe_provider,
    resolve_providers,
)
from .report import check_report_paths, to_json, to_junit_xml, write_reports
from .results import (
    CaseInfo,
    OutputResult,
    ProviderResult,
    VerificationReport,
    WeightComparison,
    WeightsReport,
)
from .runners import InputSignature, OrtRunner, Runner, TorchRunner
from .tolerance import (
    DEFAULT_QUANTILE,
    DEFAULT_TOLERANCES,
    EXACT,
    MAX_RUNS,
    REPORT_SCHEMA,
    RULE,
    TF32_TOLERANCE,
    WEIGHTS_MODES,
    PassRule,
    Tolerance,
    ToleranceOverride,
    VerifyOptions,
    WeightsMode,
    default_tolerance,
)
from .weights import compare_weights, onnx_initializers

__all__ = [
    "CPU", "CUDA", "DEFAULT_QUANTILE", "DEFAULT_TOLERANCES", "EXACT", "MAX_RUNS",
    "REL_EPSILON", "REPORT_SCHEMA", "RULE", "ErrorStats", "PassRule",
    "TENSORRT", "TF32_TOLERANCE", "WEIGHTS_MODES", "ArrayComparison", "CaseInfo", "CasePlan",
    "InputCase", "InputSignature", "OrtRunner", "OutputResult", "ProgressCallback",
    "ProviderFailed", "ProviderPlan", "ProviderResult", "ProviderSpec", "Runner", "Tolerance",
    "ToleranceOverride", "TorchRunner", "VerificationReport", "VerifyOptions",
    "WeightComparison", "WeightsMode", "WeightsReport", "available_providers", "build_cases",
    "check_report_paths", "compare_arrays", "compare_weights", "default_tolerance", "describe",
    "dtype_name", "json_number", "onnx_initializers", "plan_providers", "probe_provider",
    "resolve_providers", "to_json", "to_junit_xml", "verify_onnx_against_onnx",
    "verify_onnx_against_outputs", "verify_onnx_against_torch", "write_reports",
    "REFERENCE_RUNNER", "RecordedRunner", "Recording", "provider_runner",
]
