"""The verification run: reference and every provider on every input case."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..capture import captured_output
from ..dtypes import from_onnx_code
from ..errors import InputError, InputNotFound
from .cases import CasePlan, InputCase
from .compare import ArrayComparison, compare_arrays, dtype_name
from .polygraphy import RecordedRunner, Recording, provider_runner, recorded_reference
from .providers import (
    CPU,
    ProviderFailed,
    ProviderSpec,
    _spec,
    first_line,
    plan_providers,
    quiet_ort_logger,
    tf32_state,
)
from .results import CaseInfo, OutputResult, ProviderResult, VerificationReport, WeightsReport
from .runners import FEEDABLE, InputSignature, OrtRunner, Runner, TorchRunner, torch_to_numpy
from .tolerance import VerifyOptions
from .weights import compare_weights, onnx_initializers

if TYPE_CHECKING:
    import numpy as np
    import torch


ProgressCallback = Callable[[str, int, int], None]


def verify_onnx_against_torch(
    candidate: Path,
    module: torch.nn.Module,
    *,
    options: VerifyOptions,
    reference_weights: Mapping[str, torch.Tensor] | None = None,
    reference_info: Mapping[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    recording: Recording | None = None,
) -> VerificationReport:
    """Verify ``candidate`` (ONNX on each provider) against ``module`` run in PyTorch on CPU.

    ``module`` is the reference as the user built it (weight norm computed at run time when it
    has it). ``reference_weights`` (e.g. the checkpoint's state dict) are compared by name with
    the candidate's initializers.
    """
    with contextlib.suppress(NotImplementedError):  # programs from .pt2 refuse eval()
        module.eval()
    signature = _candidate_signature(candidate)
    reference = TorchRunner(module, input_names=[sig.name for sig in signature])
    weights = None
    if reference_weights is not None and options.weights != "off":
        ref_np = {k: torch_to_numpy(v) for k, v in reference_weights.items()}
        weights = compare_weights(onnx_initializers(candidate), ref_np, options=options)
    info = {"kind": "pytorch", **(reference_info or {})}
    return _verify(candidate, signature, reference, info, weights, options, progress, recording)


def verify_onnx_against_onnx(
    candidate: Path,
    reference: Path,
    *,
    options: VerifyOptions,
    progress: ProgressCallback | None = None,
    recording: Recording | None = None,
) -> VerificationReport:
    """Verify ``candidate`` on each provider against ``reference`` run on ONNX Runtime CPU.

    Inputs come from ``options`` or, by default, from the candidate's input shapes (symbolic
    axes get ``options.default_dim``, batch axes 1). Initializers with the same name on both
    sides are compared too; weight-norm ``g``/``v`` initializers are folded first, so a
    candidate whose weight norm was folded compares against the reference's pairs.
    """
    signature = _candidate_signature(candidate)
    quiet_ort_logger(enabled=options.ort_logging)
    try:
        ref_runner = OrtRunner(reference, _spec(CPU, cuda_tf32=False, explicit=True),
                               ort_logging=options.ort_logging)
    except ProviderFailed as exc:
        raise InputError(f"{reference}: the reference model does not load: {exc.reason}") \
            from None
    ref_names = [sig.name for sig in ref_runner.inputs]
    if sorted(ref_names) != sorted(sig.name for sig in signature):
        raise InputError(
            f"{reference}: inputs {', '.join(ref_names)} differ from the candidate's "
            f"({', '.join(sig.name for sig in signature)}); compare models with the same inputs"
        )
    weights = None
    if options.weights != "off":
        weights = compare_weights(onnx_initializers(candidate), onnx_initializers(reference),
                                  options=options)
    info = {"kind": "onnx", "path": str(reference), "provider": CPU}
    return _verify(candidate, signature, ref_runner, info, weights, options, progress, recording)


def verify_onnx_against_outputs(
    candidate: Path,
    outputs: Path,
    *,
    runner: str | None = None,
    options: VerifyOptions,
    progress: ProgressCallback | None = None,
    recording: Recording | None = None,
) -> VerificationReport:
    """Verify ``candidate`` on each provider against outputs Polygraphy saved (``RunResults``,
    e.g. from TensorRT): the iterations of ``runner`` (needed when the file holds several),
    computed from the feeds of ``options.inputs_file``, a Polygraphy inputs file. No weights
    are compared (there are none on that side)."""
    if options.inputs_file is None or options.inputs_file.suffix.lower() != ".json":
        raise InputError.template(
            "{path}: saved outputs need the inputs they were computed from; give them with "
            "{-inputs_file} FILE.json (polygraphy run --save-inputs)", path=outputs)
    signature = _candidate_signature(candidate)
    reference = recorded_reference(outputs, runner)
    if recording is not None:
        recording.reference_name = reference.name
    info = {"kind": "polygraphy", "path": str(outputs), "runner": reference.name}
    return _verify(candidate, signature, reference, info, None, options, progress, recording)


def check_inputs(model: Path, options: VerifyOptions) -> None:
    """Refuse given input shapes, dtypes or dynamic axes that do not fit ``model``'s inputs,
    before any work (the checks verification makes first; an ``.npz`` is read then)."""
    if options.input_specs or options.dynamic_axes:
        CasePlan(_candidate_signature(model), dataclasses.replace(options, inputs_file=None))


def _candidate_signature(candidate: Path) -> list[InputSignature]:
    # Read with onnx, not a session, so a model that ORT cannot load is reported per provider.
    import onnx

    if not candidate.exists():
        raise InputNotFound(f"{candidate}: no such file; check the path")
    try:
        model = onnx.load(str(candidate), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf/IO errors have many types
        raise InputError(f"{candidate}: cannot read as ONNX: {exc}") from None
    init_names = {init.name for init in model.graph.initializer}
    signature = []
    for value in model.graph.input:
        if value.name in init_names:
            continue  # old exporters list initializers as inputs too
        tensor_type = value.type.tensor_type
        elem = from_onnx_code(tensor_type.elem_type)
        if elem is None or elem not in FEEDABLE:
            raise InputError(f"{candidate}: input {value.name!r} has ONNX element type "
                             f"{tensor_type.elem_type}, which wnconvert cannot feed; it feeds "
                             f"{', '.join(FEEDABLE)}")
        dims: list[int | str | None] = []
        for axis, d in enumerate(tensor_type.shape.dim):
            if d.HasField("dim_value"):
                if d.dim_value < 0:
                    # onnx.checker lets it through; numpy would fail deep inside verification.
                    raise InputError(
                        f"{candidate}: input {value.name!r} declares size {d.dim_value} on axis "
                        f"{axis}; a size is >= 0 or a symbolic name, so the model is invalid "
                        "(export it again)")
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or None)
        signature.append(InputSignature(value.name, str(elem), tuple(dims)))
    return signature


@dataclass
class _ProviderRun:
    """One provider's state while the cases run."""

    spec: ProviderSpec
    runner: OrtRunner | None = None
    error: str | None = None
    messages: list[str] = field(default_factory=list)
    mapping: dict[str, str] | None = None
    per_output: dict[str, list[tuple[str, ArrayComparison]]] = field(default_factory=dict)
    applied: dict[str, str] | None = None  # options ORT applied, once a session came up

    def fail(self, reason: str, messages: Sequence[str] = ()) -> None:
        self.error = reason
        self.messages.extend(messages)
        self.runner = None  # no more runs on a provider that failed

    def result(self) -> ProviderResult:
        outputs = tuple(OutputResult(name, (self.mapping or {}).get(name, name), tuple(items))
                        for name, items in self.per_output.items() if items)
        runner_messages = self.runner.messages if self.runner is not None else []
        options = self.applied if self.applied is not None else dict(self.spec.options)
        return ProviderResult(
            self.spec.name, options, self.spec.notes, outputs, self.error,
            tf32=tf32_state(self.spec, self.applied),
            messages=tuple(dict.fromkeys([*self.messages, *runner_messages])),
            chain=tuple(name for name, _ in self.spec.session_providers),
        )


def _verify(
    candidate: Path,
    signature: list[InputSignature],
    reference: Runner,
    reference_info: Mapping[str, Any],
    weights: WeightsReport | None,
    options: VerifyOptions,
    progress: ProgressCallback | None,
    recording: Recording | None = None,
) -> VerificationReport:
    quiet_ort_logger(enabled=options.ort_logging)
    plan = plan_providers(options.providers, cuda_tf32=options.cuda_tf32)
    cases = CasePlan(signature, options)  # validates shapes before any session starts
    if isinstance(reference, RecordedRunner):
        reference.check_cases(len(cases))
    runs: list[_ProviderRun] = []
    for spec in plan.specs:
        state = _ProviderRun(spec)
        try:
            state.runner = OrtRunner(candidate, spec, ort_logging=options.ort_logging)
            state.applied = state.runner.options
        except ProviderFailed as exc:
            state.fail(exc.reason, exc.messages)
        runs.append(state)
    live = sum(1 for state in runs if state.runner is not None)
    total, done = len(cases) * (1 + live), 0
    matching: Literal["name", "position"] = "name"
    infos: list[CaseInfo] = []
    # Case by case (reference, then every provider), so one case's inputs and outputs are in
    # memory at a time however many runs were asked for.
    printed: list[str] = []
    for case in cases:
        infos.append(case.info)
        # The reference may print too (a user's model, ORT for an ONNX reference): keep stdout
        # for our own output.
        with captured_output("stdout") as captured:
            started = time.perf_counter()
            ref = _run_reference(reference, case)
            seconds = time.perf_counter() - started
        printed.extend(captured.lines)
        if recording is not None:
            recording.feeds.append(case.feeds)
            recording.add(recording.reference_name, ref, seconds)
        done += 1
        if progress:
            progress("reference", done, total)
        for state in runs:
            if state.runner is None:
                continue
            runner = state.runner
            if state.mapping is None:
                state.mapping, matching = _match_outputs(runner.output_names,
                                                         reference.output_names)
                state.per_output = {name: [] for name in state.mapping}
            try:
                started = time.perf_counter()
                out = runner.run(case.feeds)
                if recording is not None:
                    recording.add(provider_runner(state.spec.name), out,
                                  time.perf_counter() - started)
            except ProviderFailed as exc:
                state.fail(f"{exc.reason} (on {case.info.label})", runner.messages)
                continue
            except Exception as exc:  # noqa: BLE001 - an ORT failure is a failed check
                state.fail(f"ONNX Runtime failed on {case.info.label}: {first_line(exc)}",
                           runner.messages)
                continue
            for cand_name, ref_name in state.mapping.items():
                tol = options.tolerance_for(cand_name, dtype_name(ref[ref_name]),
                                            tf32=state.spec.uses_tf32)
                state.per_output[cand_name].append(
                    (case.info.label, compare_arrays(out[cand_name], ref[ref_name], tol)))
            done += 1
            if progress:
                progress(state.spec.name, done, total)
    notes = [f"{name} skipped: {why}" for name, why in plan.skipped]
    if printed:
        notes.append(f"the reference printed {len(printed)} line(s) to stdout (kept off ours); "
                     f"first: {printed[0][:200]}")
    if options.inputs_file is not None and options.runs > 1:
        notes.append("runs ignored: real inputs from the inputs file are used once")
    return VerificationReport(
        candidate={"kind": "onnx", "path": str(candidate)},
        reference=dict(reference_info),
        cases=tuple(infos),
        providers=tuple(state.result() for state in runs),
        weights=weights,
        output_matching=matching,
        notes=tuple(notes),
        skipped=plan.skipped,
    )


def _run_reference(reference: Runner, case: InputCase) -> dict[str, np.ndarray]:
    try:
        return reference.run(case.feeds)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's model may raise anything
        shapes = ", ".join(f"{n} {list(s)} {d}" for n, (s, d) in case.info.inputs.items())
        raise InputError(
            f"the reference model failed on inputs {shapes} ({case.info.label}): "
            f"{type(exc).__name__}: {exc}; check the input shapes or the inputs file"
        ) from None


def _match_outputs(candidate: Sequence[str], reference: Sequence[str]
                   ) -> tuple[dict[str, str], Literal["name", "position"]]:
    """Candidate output -> reference output: by name when the names are the same set, else by
    position when the counts are equal. A candidate with fewer outputs is refused: the
    outputs it lacks would go unchecked, and a gate may not pass on what it never compared."""
    if set(candidate) == set(reference) and len(candidate) == len(reference):
        return {name: name for name in candidate}, "name"
    missing = [name for name in reference if name not in candidate]
    if set(candidate) < set(reference):
        raise InputError(
            f"the candidate lacks {len(missing)} of the reference's outputs ({', '.join(missing)}"
            f"; it has {', '.join(candidate)}), so they could not be checked; verify the model "
            "exported with every output, or a reference that returns only these (for a PyTorch "
            "reference, a model callable that wraps the network)"
        )
    if len(candidate) == len(reference):
        return dict(zip(candidate, reference, strict=True)), "position"
    raise InputError(
        f"the candidate's outputs ({', '.join(candidate)}) do not match the reference's "
        f"({', '.join(reference)}) by name or by count; verify against the model that was "
        "exported"
    )
