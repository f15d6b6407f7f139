"""Options shared by several commands, declared once so ``fold`` and ``verify`` cannot drift.

Choices are typed (``Enum``), so typer refuses an unknown value (``--weights bogus``: exit 2)
for every command alike, and the help text is the same wherever an option appears.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

#: Upper bound of --runs (the library's MAX_RUNS; kept literal so --help imports nothing).
MAX_RUNS = 1000


class WeightsChoice(str, Enum):
    """``--weights``: what a weight mismatch (or no weight matched at all) does."""

    fail = "fail"
    report = "report"
    off = "off"


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
    int, typer.Option("--seed", min=0, max=2**63 - 1, help="Seed of the random inputs (>= 0).")
]
RunsOpt = Annotated[
    int, typer.Option("--runs", min=1, max=MAX_RUNS,
                      help=f"Number of random input draws (1..{MAX_RUNS}).")
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
WeightsOpt = Annotated[
    WeightsChoice,
    typer.Option("--weights", help="Compare weights (by name, wrapper prefix, or value for "
                 "renamed initializers): fail (a difference, or no weight matched, fails the "
                 "check), report (only report it) or off."),
]
Tf32Opt = Annotated[
    bool,
    typer.Option("--tf32/--no-tf32", help="Let CUDA/TensorRT use TF32 for float32 math (off by "
                 "default: use_tf32=0 and NVIDIA_TF32_OVERRIDE=0, so float32 results compare); "
                 "with it, float32 outputs there get TF32 tolerances."),
]
ReportOpt = Annotated[
    list[Path] | None,
    typer.Option("--report", help="Write the verification report: .json or .xml (JUnit); "
                 "repeatable."),
]


class ExporterChoice(str, Enum):
    """``--exporter``: typed, so an unknown value is a usage error (exit 2)."""

    auto = "auto"
    dynamo = "dynamo"
    legacy = "legacy"


class StyleChoice(str, Enum):
    """``--style``: typed, so an unknown value is a usage error (exit 2)."""

    parametrize = "parametrize"
    legacy = "legacy"


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
    typer.Option("--inputs", help=".npz file with real input arrays (named after the inputs, or "
                 "in order)."),
]
DynamicOpt = Annotated[
    list[str] | None,
    typer.Option("--dynamic", help="Dynamic axis [INPUT:]AXIS[=NAME], e.g. 0:2=time (axis 2 of "
                 "the first input, named time); repeatable. Verification also checks it at a "
                 "second size (symbolic axes of the model are checked automatically)."),
]
TrustProgramOpt = Annotated[
    bool,
    typer.Option("--trust-program", help="Allow loading a .pt2 program (the input, verify's "
                 "--reference, or --model). A .pt2 is code: loading it evaluates text from the "
                 "file, so without this flag it is refused (as transformers' "
                 "trust_remote_code). Give it only for programs you would run as Python. Even "
                 "then, a graph that calls operators outside PyTorch's core ATen/prims set, or "
                 "touches files (aten.from_file), is refused."),
]
