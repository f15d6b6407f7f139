"""Export: a weight-normalized model to ONNX with no weight norm left, verified by default.

The model comes from a checkpoint loaded strictly into what ``model`` builds (an ``nn.Module``,
a callable, or ``"MODULE:CALLABLE"``), from an ``nn.Module``'s own weights, or from a ``.pt2``
program (run only with ``trust_program=True``). Weight norm is folded in float64 before the
export; the exported file is then checked on ONNX Runtime against the model with weight norm.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._requires import require_torch
from ..errors import CheckFailed, InputError, WeightNormWarning
from .progress import SILENT, Progress
from .verification import (
    check_save_paths,
    check_trust,
    is_program,
    protected_inputs,
    reference_state_dict,
    write_recording,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ..choices import Precision
    from ..export import DynamicAxis, Exporter, ExportResult, InputSpec, PreparedModel
    from ..formats import Checkpoint
    from ..keys import PrefixChange
    from ..onnx_graph.precision import PrecisionReport
    from ..verification import VerificationReport, VerifyOptions
    from .verification import ModelSource


@dataclass
class ExportOutcome:
    """What :func:`export_onnx` wrote (``export``) and how it verified (``report``; None with
    ``verify=False``)."""

    export: ExportResult
    report: VerificationReport | None
    notes: list[str] = field(default_factory=list)  # e.g. how the checkpoint's keys were renamed
    precision: PrecisionReport | None = None  # None: float32, as exported

    @property
    def path(self) -> Path:
        return self.export.path

    @property
    def passed(self) -> bool:
        return self.report is None or self.report.passed

    def failure(self) -> CheckFailed | None:
        """The error a failed verification means (None when it passed)."""
        if self.report is None or self.report.passed:
            return None
        from .onnx_models import verification_failure

        return verification_failure(self.report)

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``wnconvert fold CKPT --to onnx --json``."""
        return {"export": self.export.to_dict(),
                "precision": self.precision.to_dict() if self.precision else None,
                "verification": self.report.to_dict() if self.report else None,
                "passed": self.report.passed if self.report else None}


def export_onnx(checkpoint: Path | str | Checkpoint | Mapping[str, torch.Tensor] | None = None,
                output: Path | str | None = None, *, model: ModelSource | None = None,
                model_kwargs: Mapping[str, Any] | None = None, key: str | None = None,
                inputs: Sequence[InputSpec] = (), inputs_file: Path | str | None = None,
                dynamic: Sequence[DynamicAxis] = (), opset: int | None = None,
                exporter: Exporter = "auto", prefix: PrefixChange | None = None,
                verify: bool = True, options: VerifyOptions | None = None,
                reports: Sequence[Path | str] = (), trust_program: bool = False,
                precision: Precision = "fp32", keep_io_types: bool = True,
                save_inputs: Path | str | None = None, save_outputs: Path | str | None = None,
                force: bool = False, progress: Progress = SILENT) -> ExportOutcome:
    """Export to ONNX (``output``, default ``<checkpoint stem>.onnx``) with weight norm folded.

    ``checkpoint``: a file (``.pt``, ``.safetensors``, sharded index; ``key`` picks a nested
    state dict), a loaded :class:`Checkpoint`, a state dict, a ``.pt2`` program, or None to
    export ``model``'s own weights. ``model``: an ``nn.Module`` (copied, never changed), a
    callable returning one (called with ``model_kwargs``), or ``"MODULE:CALLABLE"``.
    ``inputs`` (shapes and dtypes; seeded random data) or ``inputs_file`` (an ``.npz`` of real
    arrays, or a Polygraphy inputs ``.json``: its first feed is traced, every feed verified)
    give the example inputs, used for verification too; ``dynamic`` marks axes whose
    size may change. With ``verify`` (the default) the file is checked on ONNX Runtime
    (``options``: providers, tolerances, seed, runs; ``reports`` written either way): see
    ``.passed`` and ``.failure()`` of the result. ``precision``/``keep_io_types``: as in
    :func:`fold_onnx` (weight-norm weights rounded once from their float64 fold); a
    reduced-precision file is verified against the float32 model with its precision's
    tolerances. ``save_inputs``/``save_outputs``: the verification's inputs and outputs as
    Polygraphy files (see :func:`wnconvert.verify`).
    """
    from .. import export as ex
    from ..export.onnx_export import DEFAULT_OPSET, check_opset
    from ..formats import Checkpoint, check_output
    from ..formats.atomic import check_not_input
    from ..formats.files import require_exists
    from ..onnx_graph.precision import check_precision
    from ..verification import Recording, VerifyOptions, plan_providers
    from ..verification.report import check_report_paths, write_reports

    grid = check_precision(precision, keep_io_types=keep_io_types)
    source_path = Path(checkpoint) if isinstance(checkpoint, (str, Path)) else None
    program_input = is_program(source_path)
    if source_path is not None:
        require_exists(source_path)
    require_torch(f"exporting {source_path or 'a model'} to ONNX")
    if not program_input and model is None:
        raise InputError.template(
            "{what}: ONNX export needs {-model}, what builds the network (MODULE:CALLABLE or "
            "path/to/file.py:CALLABLE), or a .pt2 program as input",
            what=source_path or "export")
    check_trust(source_path, model, trust_program=trust_program)
    if program_input and key is not None:
        raise InputError.template("{path}: {-key} applies to checkpoints, not to .pt2 "
                                  "programs; drop it", path=source_path)
    if program_input and model is not None:
        raise InputError.template("{path}: a .pt2 program is the model itself; drop {-model}",
                                  path=source_path)
    report_paths = [Path(p) for p in reports]
    saving = save_inputs is not None or save_outputs is not None
    if not verify and (report_paths or options is not None or saving):
        what = ("{-reports}" if report_paths else "{-options}" if options is not None
                else "{-save_inputs}/{-save_outputs}")
        raise InputError.template(what + " need(s) verification, which {-no_verify} turns off; "
                                  "drop one of them")
    options = options if options is not None else VerifyOptions()
    if options.input_specs or options.inputs_file or options.dynamic_axes:
        raise InputError.template("give the inputs to export_onnx ({-inputs}, {-inputs_file}, "
                                  "{-dynamic}), not in {-options}: they serve the export and "
                                  "its verification")
    file_of_inputs = Path(inputs_file) if inputs_file is not None else None
    # The feeds of a Polygraphy file are verified at their own sizes: the dynamic axes serve
    # the export only (VerifyOptions refuses them next to such a file).
    polygraphy_feeds = file_of_inputs is not None and file_of_inputs.suffix.lower() == ".json"
    options = dataclasses.replace(options, input_specs=tuple(inputs),
                                  inputs_file=file_of_inputs,
                                  dynamic_axes=() if polygraphy_feeds else tuple(dynamic))
    if output is None:
        if source_path is None:
            raise InputError.template("{-output}: give the .onnx file to write (there is no "
                                      "input file to name it after)")
        output = source_path.with_suffix(".onnx")
    output = Path(output)
    if output.suffix.lower() != ".onnx":
        raise InputError.template("{output}: ONNX output needs a .onnx name; choose another "
                                  "{-output}", output=output)
    # Fail fast on outputs that may not be written, before the slow export.
    protected = protected_inputs(source_path, file_of_inputs,
                                 model=model if isinstance(model, str) else None)
    if isinstance(checkpoint, Checkpoint):
        protected += checkpoint.input_files
    check_output(output, force=force, inputs=protected)
    check_not_input(output.with_name(output.name + ".data"), protected)  # external data
    check_report_paths(report_paths, force=force, inputs=[*protected, output])
    saves = check_save_paths(save_inputs, save_outputs, reports=report_paths, force=force,
                             inputs=[*protected, output])
    check_opset(opset if opset is not None else DEFAULT_OPSET, exporter=exporter)
    if verify:
        # The same probe verification uses: a provider that cannot start here fails before
        # the export writes anything.
        plan_providers(options.providers, cuda_tf32=options.cuda_tf32)

    progress.status(f"loading {source_path or 'the model'}")
    from .verification import prepare_program_source

    if program_input:
        assert source_path is not None
        prepared = prepare_program_source(source_path, trust_program=trust_program)
    else:
        assert model is not None
        name, state_dict = reference_state_dict(checkpoint, model=model, key=key)
        if is_program(model):  # a program given the checkpoint's weights
            if prefix:
                state_dict = ex.torch_model.renamed_state_dict(state_dict, prefix)
            prepared = prepare_program_source(Path(str(model)), trust_program=trust_program,
                                              state_dict=state_dict, source=name)
        else:
            prepared = ex.prepare_model(state_dict, model=model,
                                        model_kwargs=dict(model_kwargs or {}), source=name,
                                        need_plain=True, prefix=prefix)
    notes = [prepared.key_change] if prepared.key_change else []
    for note in notes:
        progress.note(f"note: {note}")
    args, input_names = _export_inputs(prepared, list(inputs), file_of_inputs,
                                       seed=options.seed)
    axes = list(dynamic) if dynamic else list(prepared.dynamic_axes)
    if verify and not inputs and file_of_inputs is None:
        # Verify on the shapes the model is exported with (a .pt2's example inputs).
        options = _with_specs(options, args, input_names)
    ahead = None
    if verify and precision == "fp32":
        from ..verification.ahead import run_reference_ahead

        # The reference's first verification case does not need the exported file: it runs
        # now, in a thread, while the imports the export needs run here (a forward beside the
        # export itself would go through its tracer).
        progress.status("running the reference (PyTorch)")
        ahead = run_reference_ahead(prepared.reference, input_names, args, options,
                                    meanwhile=lambda: _export_imports(exporter))
    progress.status(f"exporting to {output} (torch.onnx, opset {opset or DEFAULT_OPSET})")
    converted: list[PrecisionReport] = []
    convert = None
    if precision != "fp32":
        convert = _precision_step(precision, keep_io_types, prepared.weights,
                                  options if verify else None, converted)
    result = ex.export_onnx(prepared.plain, args, output=output, input_names=input_names,
                            dynamic=axes, opset=opset, exporter=exporter, force=force,
                            convert=convert)
    for line in (converted[0].notes() if converted else []):
        progress.note(f"note: {line}")
    for note in result.notes:
        warnings.warn(note, WeightNormWarning, stacklevel=2)
    report = None
    if verify:
        if grid is not None and not keep_io_types:
            # The file takes the reduced type where the model took float32: so do the checks.
            options = dataclasses.replace(options, input_specs=tuple(
                dataclasses.replace(spec, dtype=grid) if spec.dtype == "float32" else spec
                for spec in options.input_specs))
        progress.status("verifying on ONNX Runtime")
        recording = Recording() if saving else None
        with progress.step("verifying") as callback:
            from ..onnx_graph import load_model
            from ..verification import verify_onnx_against_torch

            # The file just written, read once for the input signature and the weight diff.
            report = verify_onnx_against_torch(
                output, prepared.reference, options=options, reference_weights=prepared.weights,
                reference_info=prepared.description, progress=callback,
                candidate_model=load_model(output), recording=recording,
                reference_ahead=ahead)
        report.reports_written = write_reports(report, report_paths, force=force)
        if recording is not None:
            write_recording(recording, *saves, force=force, progress=progress)
    return ExportOutcome(result, report, notes, converted[0] if converted else None)


def _export_imports(exporter: Exporter) -> None:
    """Import what the export and its verification will import (Python work under the GIL).

    Only a head start: a module that is missing, or private and moved in another torch
    version, is left for the step that needs it (which says what is wrong).
    """
    import contextlib
    import importlib

    modules = ["onnx", "onnxruntime", "wnconvert.onnx_graph", "wnconvert.verification.orchestrate"]
    if exporter != "legacy":  # the dynamo exporter and its op table
        modules += ["onnxscript.function_libs.torch_lib.ops",
                    "torch.onnx._internal.exporter._compat"]
    for name in modules:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def _precision_step(precision: Precision, keep_io_types: bool,
                    weights: Mapping[str, torch.Tensor], options: VerifyOptions | None,
                    out: list[PrecisionReport]) -> Any:
    """The exporter's ``convert`` step: the graph to ``precision``, weight-norm weights
    rounded from their float64 fold, bf16 checked against the verification providers."""
    from ..onnx_graph.precision import apply_precision
    from ..verification import plan_providers

    providers: list[str] = []
    if options is not None:
        plan = plan_providers(options.providers, cuda_tf32=options.cuda_tf32)
        providers = [spec.session_providers[0][0] for spec in plan.specs]
    float64 = _float64_folds(weights)

    def convert(proto: Any) -> None:
        out.append(apply_precision(proto, precision, keep_io_types=keep_io_types,
                                   float64=float64, providers=providers))

    return convert


def _float64_folds(weights: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Weight name -> its weight-norm fold in float64 (not rounded), from the g/v pairs of
    the reference's state dict: what a reduced-precision export rounds once."""
    from ..dtypes import tensor_to_numpy
    from ..keys import find_pair_keys
    from ..numerics import as_float64, check_pair_shapes, fold

    folds = {}
    for pair in find_pair_keys(weights):
        g, v = tensor_to_numpy(weights[pair.g_key]), tensor_to_numpy(weights[pair.v_key])
        dim = check_pair_shapes(pair.weight_key, tuple(g.shape), tuple(v.shape))
        folds[pair.weight_key] = fold(g, as_float64(v), dim)[0]
    return folds


def _with_specs(options: VerifyOptions, args: list[Any], names: list[str]) -> VerifyOptions:
    from ..dtypes import name_of_torch
    from ..export import InputSpec

    specs = tuple(InputSpec(tuple(a.shape), name_of_torch(a.dtype), name, name)
                  for a, name in zip(args, names, strict=True))
    return dataclasses.replace(options, input_specs=specs)


def _export_inputs(prepared: PreparedModel, specs: list[InputSpec], inputs_file: Path | None,
                   *, seed: int) -> tuple[list[Any], list[str]]:
    """Example tensors for tracing and the ONNX input names."""
    from ..dtypes import numpy_to_tensor
    from ..export import example_inputs, forward_input_names, load_inputs_npz

    if inputs_file is not None and inputs_file.suffix.lower() == ".json":
        from ..formats.polygraphy_json import load_feeds

        arrays = load_feeds(inputs_file)[0]  # named after the inputs, as Polygraphy saves them
        args = [numpy_to_tensor(a) for a in arrays.values()]
        names = list(arrays)
    elif inputs_file is not None:
        arrays = load_inputs_npz(inputs_file)
        args = [numpy_to_tensor(a) for a in arrays.values()]
        names = list(arrays)
        if all(n.startswith("arr_") for n in names):
            names = []  # positional np.savez: name inputs after forward()'s parameters
    elif specs:
        args = example_inputs(specs, seed=seed)
        names = [s.name or "" for s in specs] if all(s.name for s in specs) else []
    elif prepared.example_inputs is not None:
        args = list(prepared.example_inputs)
        names = []
    else:
        raise InputError.template("no inputs to export with: give {-inputs} (a shape and "
                                  "dtype per positional input, e.g. 1x80x200) or "
                                  "{-inputs_file} (an .npz)")
    names = names or prepared.input_names or forward_input_names(prepared.plain, len(args))
    if len(names) != len(args):
        names = forward_input_names(prepared.plain, len(args))
    return args, names
