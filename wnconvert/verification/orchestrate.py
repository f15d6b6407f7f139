"""The verification run: reference and every provider on every input case."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..capture import captured_output
from ..dtypes import from_onnx_code
from ..errors import InputError, InputNotFound
from .background import (
    SIDE_BY_SIDE_BYTES,
    AheadRunner,
    ReferenceAhead,
    side_by_side_threads,
)
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
    import onnx
    import torch

    from ..onnx_graph.protoio import LazyModel
    from .ahead import TorchReferenceAhead


ProgressCallback = Callable[[str, int, int], None]


def verify_onnx_against_torch(
    candidate: Path,
    module: torch.nn.Module,
    *,
    options: VerifyOptions,
    reference_weights: Mapping[str, torch.Tensor] | None = None,
    reference_info: Mapping[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    candidate_model: LazyModel | None = None,
    recording: Recording | None = None,
    reference_ahead: TorchReferenceAhead | None = None,
) -> VerificationReport:
    """Verify ``candidate`` (ONNX on each provider) against ``module`` run in PyTorch on CPU.

    ``module`` is the reference as the user built it (weight norm computed at run time when it
    has it). ``reference_weights`` (e.g. the checkpoint's state dict) are compared by name with
    the candidate's initializers. ``candidate_model``: the file as already read, not parsed
    again (ONNX Runtime still loads the file). ``reference_ahead``: the module's outputs on a
    case, computed before the candidate existed (:mod:`wnconvert.verification.ahead`; used for
    that case only).
    """
    with contextlib.suppress(NotImplementedError):  # programs from .pt2 refuse eval()
        module.eval()
    signature = _candidate_signature(candidate, candidate_model)
    names = [sig.name for sig in signature]
    reference = (reference_ahead.runner(module, input_names=names) if reference_ahead is not None
                 else TorchRunner(module, input_names=names))
    weights = None
    if reference_weights is not None and options.weights != "off":
        ref_np = {k: torch_to_numpy(v) for k, v in reference_weights.items()}
        weights = compare_weights(onnx_initializers(candidate_model or candidate), ref_np,
                                  options=options)
    info = {"kind": "pytorch", **(reference_info or {})}
    return _verify(candidate, signature, reference, info, weights, options, progress,
                   recording, candidate_model=candidate_model)


def verify_onnx_against_onnx(
    candidate: Path,
    reference: Path,
    *,
    options: VerifyOptions,
    progress: ProgressCallback | None = None,
    candidate_model: LazyModel | None = None,
    reference_model: LazyModel | None = None,
    recording: Recording | None = None,
    reference_ahead: ReferenceAhead | None = None,
) -> VerificationReport:
    """Verify ``candidate`` on each provider against ``reference`` run on ONNX Runtime CPU.

    Inputs come from ``options`` or, by default, from the candidate's input shapes (symbolic
    axes get ``options.default_dim``, batch axes 1). Initializers with the same name on both
    sides are compared too; weight-norm ``g``/``v`` initializers are folded first, so a
    candidate whose weight norm was folded compares against the reference's pairs.

    ``candidate_model`` and ``reference_model``: the files as already read
    (:func:`wnconvert.onnx_graph.load_model`), so a caller that read them does not pay for
    parsing them again; ONNX Runtime still loads the files themselves. ``reference_ahead``:
    ``reference`` already running in the background (:mod:`.background`), its outputs used
    when they were computed on the very inputs this verification feeds.
    """
    signature = _candidate_signature(candidate, candidate_model)
    quiet_ort_logger(enabled=options.ort_logging)
    # Big weights (or sizes not known without reading the files): one session holds them at a
    # time, and the weight diff (float64 copies of the largest tensors) does not run beside a
    # session either.
    sizes = [model.tensor_nbytes() for model in (reference_model, candidate_model)
             if model is not None]
    one_at_a_time = not sizes or max(sizes) > SIDE_BY_SIDE_BYTES
    threads = None if one_at_a_time else side_by_side_threads(max(sizes))
    ref_runner: Runner | None = None
    if reference_ahead is not None and reference_ahead.path == reference:
        ref_runner = reference_ahead.runner(signature)
        if ref_runner is not None and one_at_a_time:
            reference_ahead.close()
    if ref_runner is None:
        try:
            session = OrtRunner(reference, _spec(CPU, cuda_tf32=False, explicit=True),
                                ort_logging=options.ort_logging, intra_op_threads=threads)
        except ProviderFailed as exc:
            raise InputError(f"{reference}: the reference model does not load: {exc.reason}") \
                from None
        ref_names = [sig.name for sig in session.inputs]
        if sorted(ref_names) != sorted(sig.name for sig in signature):
            raise InputError(
                f"{reference}: inputs {', '.join(ref_names)} differ from the candidate's "
                f"({', '.join(sig.name for sig in signature)}); compare models with the same "
                "inputs")
        ref_runner = session
    info = {"kind": "onnx", "path": str(reference), "provider": CPU}

    def weight_diff() -> WeightsReport:
        return compare_weights(onnx_initializers(candidate_model or candidate),
                               onnx_initializers(reference_model or reference), options=options)

    if options.weights == "off" or one_at_a_time:
        weights = weight_diff() if options.weights != "off" else None
        return _verify(candidate, signature, ref_runner, info, weights, options, progress,
                       recording, candidate_model=candidate_model)
    # The weight diff (Python and numpy) runs while ONNX Runtime runs the candidate (it
    # releases the GIL); its errors come first, as when it ran before the runs.
    with ThreadPoolExecutor(1) as pool:
        diff = pool.submit(weight_diff)
        try:
            report = _verify(candidate, signature, ref_runner, info, None, options, progress,
                             recording, candidate_model=candidate_model,
                             cpu_threads=threads)
        except BaseException:
            diff.result()
            raise
        report.weights = diff.result()
    return report


def verify_onnx_against_outputs(
    candidate: Path,
    outputs: Path,
    *,
    runner: str | None = None,
    options: VerifyOptions,
    progress: ProgressCallback | None = None,
    recording: Recording | None = None,
    candidate_model: LazyModel | None = None,
) -> VerificationReport:
    """Verify ``candidate`` on each provider against outputs Polygraphy saved (``RunResults``,
    e.g. from TensorRT): the iterations of ``runner`` (needed when the file holds several),
    computed from the feeds of ``options.inputs_file``, a Polygraphy inputs file. No weights
    are compared (there are none on that side)."""
    if options.inputs_file is None or options.inputs_file.suffix.lower() != ".json":
        raise InputError.template(
            "{path}: saved outputs need the inputs they were computed from; give them with "
            "{-inputs_file} FILE.json (polygraphy run --save-inputs)", path=outputs)
    signature = _candidate_signature(candidate, candidate_model)
    reference = recorded_reference(outputs, runner)
    if recording is not None:
        recording.reference_name = reference.name
    info = {"kind": "polygraphy", "path": str(outputs), "runner": reference.name}
    return _verify(candidate, signature, reference, info, None, options, progress, recording,
                   candidate_model=candidate_model)


def check_inputs(model: Path, options: VerifyOptions, *, read: LazyModel | None = None
                 ) -> None:
    """Refuse given input shapes, dtypes or dynamic axes that do not fit ``model``'s inputs,
    before any work (the checks verification makes first; an ``.npz`` is read then).
    ``read``: ``model`` as already read, so it is not parsed again."""
    if options.input_specs or options.dynamic_axes:
        CasePlan(_candidate_signature(model, read),
                 dataclasses.replace(options, inputs_file=None))


def _candidate_signature(candidate: Path, read: LazyModel | None = None
                         ) -> list[InputSignature]:
    """The inputs to feed, from ``read`` (the model as already read) or the file."""
    model = read.proto if read is not None else _read_graph(candidate)
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


def _read_graph(candidate: Path) -> onnx.ModelProto:
    # Read with onnx, not a session, so a model that ORT cannot load is reported per provider.
    import onnx

    if not candidate.exists():
        raise InputNotFound(f"{candidate}: no such file; check the path")
    try:
        return onnx.load(str(candidate), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf/IO errors have many types
        raise InputError(f"{candidate}: cannot read as ONNX: {exc}") from None


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
    *,
    candidate_model: LazyModel | None = None,
    cpu_threads: int | None = None,
) -> VerificationReport:
    """``cpu_threads``: ONNX Runtime's thread pool for a candidate on CPU (None: its default);
    see :func:`.background.side_by_side_threads`."""
    quiet_ort_logger(enabled=options.ort_logging)
    plan = plan_providers(options.providers, cuda_tf32=options.cuda_tf32)
    cases = CasePlan(signature, options)  # validates shapes before any session starts
    from ..onnx_graph.precision import computes_in, file_computes_in

    # A float16/bfloat16 candidate: its budget, its types (from the model already read, when
    # the caller has it: initializer types are in the proto without their bytes).
    narrow = (computes_in(candidate_model.proto) if candidate_model is not None
              else file_computes_in(candidate))
    if isinstance(reference, RecordedRunner):
        reference.check_cases(len(cases))
    runs: list[_ProviderRun] = []
    for spec in plan.specs:
        state = _ProviderRun(spec)
        try:
            state.runner = OrtRunner(
                candidate, spec, ort_logging=options.ort_logging,
                intra_op_threads=cpu_threads if spec.name == CPU else None)
            state.applied = state.runner.options
        except ProviderFailed as exc:
            state.fail(exc.reason, exc.messages)
        runs.append(state)
        if state.runner is not None:
            options.check_output_names(state.runner.output_names)
    live = sum(1 for state in runs if state.runner is not None)
    total, done = len(cases) * (1 + live), 0
    matching: Literal["name", "position"] = "name"
    infos: list[CaseInfo] = []
    # Case by case (the reference alongside the providers), so one case's inputs and outputs
    # are in memory at a time however many runs were asked for.
    printed: list[str] = []
    for case in cases:
        infos.append(case.info)
        outs: dict[int, dict[str, np.ndarray] | None] = {}
        seconds: dict[int, float] = {}
        for state in runs:  # an ONNX reference knows its outputs before it runs
            if state.runner is not None and state.mapping is None and reference.output_names:
                matching = _map_outputs(state, reference)
        # ONNX Runtime and PyTorch release the GIL while they compute: the reference runs in a
        # thread while the candidate runs here (ONNX against ONNX measured 0.7x the time of one
        # after the other on 2 busy cores). The reference may print (a user's model): stdout is
        # kept for our own output by one capture around both runs, as a capture redirects the
        # process's file descriptor, which two threads cannot each do.
        with captured_output("stdout") as captured, ThreadPoolExecutor(1) as pool:
            pending = pool.submit(_timed_reference, reference, case, widen=narrow is not None)
            for index, state in enumerate(runs):
                if state.runner is not None:
                    started = time.perf_counter()
                    outs[index] = _run_candidate(state, case)
                    seconds[index] = time.perf_counter() - started
            ref, ref_seconds = pending.result()
        if isinstance(reference, (OrtRunner, AheadRunner)):  # ONNX Runtime's words
            for state in runs:
                if state.runner is not None:
                    state.runner.messages.extend(captured.lines)
        else:
            printed.extend(captured.lines)
        if recording is not None:  # what ran, for Polygraphy: the reference, then each provider
            recording.feeds.append(case.feeds)
            recording.add(recording.reference_name, ref, ref_seconds)
            for index, state in enumerate(runs):
                out = outs.get(index)
                if out is not None:
                    recording.add(provider_runner(state.spec.name), out, seconds[index])
        done += 1
        if progress:
            progress("reference", done, total)
        for index, state in enumerate(runs):
            if index not in outs:
                continue
            if state.mapping is None and state.runner is not None:
                matching = _map_outputs(state, reference)
            out = outs[index]
            if out is None or state.mapping is None:
                continue  # the provider failed on this case (state says why)
            for cand_name, ref_name in state.mapping.items():
                tol = options.tolerance_for(cand_name, dtype_name(ref[ref_name]),
                                            tf32=state.spec.uses_tf32, computes_in=narrow)
                got = out[cand_name]
                if narrow is not None and dtype_name(got) == narrow:
                    got = got.astype(ref[ref_name].dtype)  # exact: float32 holds every value
                state.per_output[cand_name].append(
                    (case.info.label, compare_arrays(got, ref[ref_name], tol,
                                                     options.rule_for(cand_name))))
            done += 1
            if progress:
                progress(state.spec.name, done, total)
    notes = [f"{name} skipped: {why}" for name, why in plan.skipped]
    if narrow is not None:
        notes.append(f"tolerance: {narrow} row for float32 outputs, candidate computes in "
                     f"{narrow}")
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
        rule=options.rule_text(),
        skipped=plan.skipped,
    )


def _map_outputs(state: _ProviderRun, reference: Runner) -> Literal["name", "position"]:
    """Match the provider's outputs to the reference's (once; refuses outputs that do not)."""
    assert state.runner is not None
    state.mapping, matching = _match_outputs(state.runner.output_names, reference.output_names)
    state.per_output = {name: [] for name in state.mapping}
    return matching


def _run_candidate(state: _ProviderRun, case: InputCase) -> dict[str, np.ndarray] | None:
    """The candidate's outputs on ``case``, or None when the run failed (``state`` says why;
    no more runs on that provider). The caller captures stdout."""
    runner = state.runner
    assert runner is not None
    try:
        return runner.run_uncaptured(case.feeds)
    except ProviderFailed as exc:
        state.fail(f"{exc.reason} (on {case.info.label})", runner.messages)
    except Exception as exc:  # noqa: BLE001 - an ORT failure is a failed check
        state.fail(f"ONNX Runtime failed on {case.info.label}: {first_line(exc)}",
                   runner.messages)
    return None


def _timed_reference(reference: Runner, case: InputCase, *, widen: bool = False
                     ) -> tuple[dict[str, np.ndarray], float]:
    """:func:`_run_reference` and the seconds it took (for a Polygraphy outputs file)."""
    started = time.perf_counter()
    outputs = _run_reference(reference, case, widen=widen)
    if isinstance(reference, AheadRunner):  # it ran earlier, in the background
        return outputs, reference.last_seconds
    return outputs, time.perf_counter() - started


def _run_reference(reference: Runner, case: InputCase, *, widen: bool = False
                   ) -> dict[str, np.ndarray]:
    """The reference's outputs on ``case`` (the caller captures stdout). ``widen``: the
    candidate computes in float16/bfloat16 and may take such inputs; the float32 reference gets
    them widened to float32 (exactly)."""
    feeds = case.feeds
    if widen:
        import numpy as np

        feeds = {name: a.astype(np.float32) if dtype_name(a) in ("float16", "bfloat16") else a
                 for name, a in feeds.items()}
    try:
        if isinstance(reference, OrtRunner):
            return reference.run_uncaptured(feeds)
        return reference.run(feeds)
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
