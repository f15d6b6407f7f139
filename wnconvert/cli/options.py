"""Every flag, declared once: its type and help, the library parameter it sets, and the jobs
that use it.

* :data:`FLAGS` maps library parameter names to flag names; error messages of the library name
  parameters as template fields and are rendered with this table (never rewritten).
* :data:`USED_BY` says which jobs use each flag; :func:`refuse_unused` refuses, with one line
  saying why, a flag the chosen job would ignore (``fold x.pt --atol 5``).
* Values are validated by the library, where the parameter is declared (``VerifyOptions``,
  ``InputSpec``, the job functions): the CLI only turns strings into typed values.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..choices import EXPORTERS, PRECISIONS, STYLES, WEIGHTS_MODES
from ..errors import InputError

# --------------------------------------------------------------------------------------------
# Library parameter -> flag (for messages)

FLAGS: dict[str, str] = {
    "output": "-o", "to": "--to", "key": "--key", "force": "--force", "style": "--style",
    "dim": "--dim", "include": "--include", "exclude": "--exclude", "like": "--like",
    "prefix": "--strip-prefix/--add-prefix", "reference": "--reference",
    "reference_key": "--key", "model": "--model", "model_kwargs": "--model-kwargs",
    "inputs": "--input", "input": "--input", "input_specs": "--input",
    "inputs_file": "--load-inputs", "dynamic": "--dynamic",
    "reference_outputs": "--load-outputs", "reference_runner": "--runner",
    "save_inputs": "--save-inputs", "save_outputs": "--save-outputs",
    "opset": "--opset", "exporter": "--exporter", "trust_program": "--trust-program",
    "no_verify": "--no-verify", "verify": "--verify", "options": "the verification flags",
    "providers": "--provider", "seed": "--seed", "runs": "--runs", "atol": "--atol",
    "rtol": "--rtol", "output_tolerances": "--tol", "weights": "--weights",
    "cuda_tf32": "--tf32", "reports": "--report", "report": "--report", "sn_dim": "--sn-dim",
    "precision": "--precision", "keep_io_types": "--keep-io-types",
    "no_keep_io_types": "--no-keep-io-types",
    "check_error_stat": "--check-error-stat", "output_error_stats": "--check-error-stat",
    "error_quantile": "--error-quantile", "output_error_quantiles": "--error-quantile",
    "min_snr": "--min-snr", "output_min_snrs": "--min-snr",
}

# --------------------------------------------------------------------------------------------
# Jobs and the flags they use

#: What each job is, for "this job does not use it" messages.
JOBS: dict[str, str] = {
    "inspect": "inspecting a checkpoint",
    "inspect-onnx": "inspecting an .onnx model",
    "fold": "fold to a checkpoint (no export, no verification)",
    "fold-onnx": "fold of an .onnx model",
    "export": "fold --to onnx",
    "decompose": "decompose",
    "restyle": "restyle",
    "verify": "verify",
    "check": "check",
}
#: Jobs that run a verification (unless --no-verify).
VERIFYING = frozenset({"fold-onnx", "export", "verify"})
_CHECKPOINT_READERS = frozenset({"inspect", "fold", "decompose", "restyle", "export",
                                 "verify", "fold-onnx"})

#: Parameter name -> (jobs that use it, what it is for). "verification" means: a job in
#: VERIFYING, with verification on.
USED_BY: dict[str, tuple[frozenset[str], str]] = {
    "output": (frozenset({"fold", "fold-onnx", "export", "decompose", "restyle"}),
               "the file a job writes"),
    "to": (frozenset({"fold", "export", "fold-onnx", "decompose", "restyle"}),
           "the output format"),
    "key": (_CHECKPOINT_READERS, "picking the state dict in a .pt container"),
    "dim": (frozenset({"decompose"}), "choosing what decompose splits"),
    "include": (frozenset({"decompose"}), "choosing what decompose splits"),
    "exclude": (frozenset({"decompose"}), "choosing what decompose splits"),
    "like": (frozenset({"decompose"}), "choosing what decompose splits"),
    "sn_dim": (frozenset({"fold"}), "the dim of spectral norm in a checkpoint fold"),
    "style": (frozenset({"decompose", "restyle"}), "the key style written"),
    "reference": (frozenset({"fold-onnx", "verify"}),
                  "naming the initializers of an .onnx input from a checkpoint"),
    "strip_prefix": (frozenset({"fold", "decompose", "export", "verify"}),
                     "renaming checkpoint keys"),
    "add_prefix": (frozenset({"fold", "decompose", "export", "verify"}),
                   "renaming checkpoint keys"),
    "model": (frozenset({"export", "verify"}),
              "building the network (fold --to onnx; verify with a checkpoint reference)"),
    "model_kwargs": (frozenset({"export", "verify"}), "building the network with --model"),
    "input_shapes": (frozenset({"export", "verification"}), "the inputs of export and "
                     "verification"),
    "inputs_file": (frozenset({"export", "verification"}), "the inputs of export and "
                    "verification"),
    "dynamic": (frozenset({"export", "verification"}), "dynamic axes of export and "
                "verification"),
    "reference_outputs": (frozenset({"verify"}), "a reference saved by Polygraphy (verify)"),
    "reference_runner": (frozenset({"verify"}), "picking the runner of --load-outputs (verify)"),
    "save_inputs": (frozenset({"verification"}), "saving what verification ran (Polygraphy "
                    "data), which runs with fold --to onnx, fold of an .onnx model and verify"),
    "save_outputs": (frozenset({"verification"}), "saving what verification ran (Polygraphy "
                     "data), which runs with fold --to onnx, fold of an .onnx model and verify"),
    "opset": (frozenset({"export"}), "the ONNX export (fold --to onnx)"),
    "exporter": (frozenset({"export"}), "the ONNX export (fold --to onnx)"),
    "trust_program": (frozenset({"export", "verify"}), "running a .pt2 program"),
    "precision": (frozenset({"export", "fold-onnx"}),
                  "the float type of an ONNX output (fold --to onnx, fold of an .onnx model)"),
    "keep_io_types": (frozenset({"export", "fold-onnx"}),
                      "the input/output types of a reduced-precision ONNX output"),
    "verify": (frozenset(VERIFYING), "verification (fold --to onnx, fold of an .onnx model)"),
    **{name: (frozenset({"verification"}),
              "verification, which runs with fold --to onnx, fold of an .onnx model and verify")
       for name in ("provider", "seed", "runs", "atol", "rtol", "output_tol", "weights",
                    "tf32", "check_error_stat", "error_quantile", "min_snr")},
    # With --no-verify the library itself refuses reports (reports= needs verification).
    "report": (frozenset({*VERIFYING, "check"}), "the report file (check; the verification "
               "report of fold --to onnx, fold of an .onnx model, verify)"),
}


def refuse_unused(ctx: typer.Context, job: str, *, verifying: bool) -> None:
    """Refuse (exit 2, one line) a flag given on the command line that ``job`` would ignore."""
    for param in ctx.command.params:
        name = param.name or ""
        source = ctx.get_parameter_source(name)
        # typer vendors click: compare the source by name, not with click's own enum.
        if name not in USED_BY or source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):
            continue
        jobs, purpose = USED_BY[name]
        if job in jobs or ("verification" in jobs and verifying and job in VERIFYING):
            continue
        flag = param.opts[0] if getattr(param, "opts", None) else "--" + name
        if "verification" in jobs and job in VERIFYING:
            why = "--no-verify turns verification off"
        else:
            why = f"{JOBS[job]} does not use it"
        raise InputError(f"{flag} applies to {purpose}; {why} (drop it)")


# --------------------------------------------------------------------------------------------
# Option types, shared by the commands that take them

# Choices: typer types built from the library's declarations (wnconvert.choices), so an unknown
# value is a usage error listing them, and the list cannot drift from what the library takes.
if TYPE_CHECKING:
    class StyleChoice(str, Enum): ...

    class ExporterChoice(str, Enum): ...

    class WeightsChoice(str, Enum): ...

    class PrecisionChoice(str, Enum): ...
else:
    StyleChoice = Enum("StyleChoice", {value: value for value in STYLES}, type=str)
    ExporterChoice = Enum("ExporterChoice", {value: value for value in EXPORTERS}, type=str)
    WeightsChoice = Enum("WeightsChoice", {value: value for value in WEIGHTS_MODES}, type=str)
    PrecisionChoice = Enum("PrecisionChoice", {value: value for value in PRECISIONS}, type=str)


def chosen(value: Enum | str) -> str:
    """The library's value of a choice option."""
    return str(value.value) if isinstance(value, Enum) else value


ForceOpt = Annotated[bool, typer.Option("--force", "-f", help="Overwrite an existing output.")]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="Print only errors (and --json output).")
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
OutputOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Output path (default: next to the input, new name)."),
]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--key",
        help="Where the state dict sits in a nested .pt container (e.g. state_dict, generator, "
        "model.ema). Found automatically when unambiguous.",
    ),
]
VerifyFlagOpt = Annotated[
    bool, typer.Option("--verify/--no-verify", help="Check the result on ONNX Runtime.")
]
ProviderOpt = Annotated[
    list[str] | None,
    typer.Option("--provider", help="ONNX Runtime provider to check on: cpu, cuda, tensorrt, ... "
                 "(repeatable; default cpu, plus cuda when it can start here). A provider that "
                 "fails to load or run the model is a failed check."),
]
SeedOpt = Annotated[
    int, typer.Option("--seed", help="Seed of the random inputs (>= 0).")
]
RunsOpt = Annotated[
    int, typer.Option("--runs", help="Number of random input draws (1..1000).")
]
AtolOpt = Annotated[
    float | None,
    typer.Option("--atol", help="Absolute tolerance for every output (default by dtype: 1e-5 "
                 "float32, 1e-3 float16, 1e-2 bfloat16; 1e-2 for float32 with --tf32)."),
]
RtolOpt = Annotated[
    float | None,
    typer.Option("--rtol", help="Relative tolerance (default by dtype: 1e-4 float32, 1e-2 "
                 "float16, 5e-2 bfloat16; 1e-2 for float32 with --tf32)."),
]
TolOpt = Annotated[
    list[str] | None,
    typer.Option("--tol", help="Per-output tolerance NAME=ATOL[:RTOL] (repeatable)."),
]
CheckErrorStatOpt = Annotated[
    list[str] | None,
    typer.Option("--check-error-stat", metavar="[NAME:]STAT",
                 help="What must stay within atol/rtol: elemwise (every element, the default), "
                 "or the max, mean, median or quantile (--error-quantile) of the absolute error "
                 "<= atol or of the relative error <= rtol (Polygraphy's rule). NAME:STAT for one "
                 "output (repeatable)."),
]
ErrorQuantileOpt = Annotated[
    list[str] | None,
    typer.Option("--error-quantile", metavar="[NAME:]Q",
                 help="The quantile of the errors reported and checked by --check-error-stat "
                 "quantile, in (0, 1] (default 0.99); NAME:Q for one output (repeatable)."),
]
MinSnrOpt = Annotated[
    list[str] | None,
    typer.Option("--min-snr", metavar="[NAME:]DB",
                 help="Also fail an output whose signal-to-noise ratio 10*log10(sum(ref^2) / "
                 "sum((onnx-ref)^2)) is below DB; NAME:DB for one output (repeatable)."),
]
WeightsOpt = Annotated[
    WeightsChoice,
    typer.Option("--weights",
                 help="Compare weights (by name, wrapper prefix, or value for renamed "
                 "initializers): fail (a difference, or no weight matched, fails the check), "
                 "report (only report it) or off."),
]
Tf32Opt = Annotated[
    bool,
    typer.Option("--tf32/--no-tf32", help="Let CUDA/TensorRT use TF32 for float32 math (off by "
                 "default: use_tf32=0 and NVIDIA_TF32_OVERRIDE=0, so float32 results compare); "
                 "with it, float32 outputs there get TF32 tolerances."),
]
ReportOpt = Annotated[
    list[Path] | None,
    typer.Option("--report", help="Write the verification report: .json, .xml (JUnit) or .md "
                 "(Markdown, for a CI job summary); repeatable."),
]
CheckReportOpt = Annotated[
    list[Path] | None,
    typer.Option("--report", help="Write a report covering every model: .json, .xml (JUnit, "
                 "one test case per file) or .md (Markdown, one row per file); repeatable."),
]
StripPrefixOpt = Annotated[
    str | None,
    typer.Option("--strip-prefix", help="Remove this prefix from the checkpoint's keys first "
                 "(e.g. 'model.' of a Lightning checkpoint); keys without it are left out. "
                 "Without --strip-prefix/--add-prefix, a common prefix that makes the keys fit "
                 "the model or template is found and reported."),
]
AddPrefixOpt = Annotated[
    str | None,
    typer.Option("--add-prefix", help="Add this prefix to the checkpoint's keys (after "
                 "--strip-prefix)."),
]
# Model and inputs: shared by `fold --to onnx` (export, then verification) and `verify` (a
# checkpoint reference). The same words in both commands' help.
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", help="MODULE:CALLABLE or path/to/file.py:CALLABLE that returns the "
                 "nn.Module to load a checkpoint into (fold --to onnx; verify with a checkpoint "
                 "reference)."),
]
ModelKwargsOpt = Annotated[
    str | None,
    typer.Option("--model-kwargs", help="JSON object of keyword arguments for --model."),
]
InputOpt = Annotated[
    list[str] | None,
    typer.Option("--input", help="[NAME=]SHAPE[:DTYPE] of an input, e.g. 1x80x200 or "
                 "mel=1x80x200:float16, once per input (verify's default: the model's input "
                 "shapes, symbolic axes 16, batch 1)."),
]
InputsOpt = Annotated[
    Path | None,
    typer.Option("--load-inputs", "--inputs",
                 help="Real input data: an .npz file (one array per input, named after it or in "
                 "order), or a Polygraphy inputs file (.json, polygraphy run --save-inputs): "
                 "each of its feeds is one run."),
]
SaveInputsOpt = Annotated[
    Path | None,
    typer.Option("--save-inputs", help="Write the inputs of every verification run as a "
                 "Polygraphy inputs file (.json; polygraphy run --load-inputs reads it)."),
]
SaveOutputsOpt = Annotated[
    Path | None,
    typer.Option("--save-outputs", help="Write the reference's and each provider's outputs as "
                 "Polygraphy RunResults (.json; polygraphy run --load-outputs compares against "
                 "them)."),
]
DynamicOpt = Annotated[
    list[str] | None,
    typer.Option("--dynamic", help="Dynamic axis [INPUT:]AXIS[=NAME], e.g. 0:2=time (axis 2 of "
                 "the first input, named time); repeatable. Verification also checks it at a "
                 "second size (symbolic axes of the model are checked automatically)."),
]
TrustProgramOpt = Annotated[
    bool,
    typer.Option("--trust-program", help="Run a .pt2 program: loading one evaluates code "
                 "stored in it, so only pass this for a file you trust as you would a script."),
]
PrecisionOpt = Annotated[
    PrecisionChoice,
    typer.Option("--precision", help="[onnx] Float type the model computes in: fp32, fp16 or "
                 "bf16 (weights folded in float64 and rounded once; overflow refused, "
                 "underflow counted; some ops stay float32, see docs/export_verify.md)."),
]
KeepIoTypesOpt = Annotated[
    bool,
    typer.Option("--keep-io-types/--no-keep-io-types", help="[onnx, with --precision fp16/"
                 "bf16] Keep float32 inputs and outputs (Casts at the edges; default), or make "
                 "them the reduced type."),
]
