"""ONNX Runtime execution providers: names, TF32 settings, probing, and sessions without
silent fallback.

ORT's Python layer falls back to other providers on its own: in the constructor when a provider
cannot start, and in ``run()`` when a provider raises ``EPFail`` (it then rebuilds the session
on CPU and returns *those* results). A verification that reports "CUDA passed" on CPU results
is worse than none, so every session here is created with fallback off, ``disable_fallback()``
is called as soon as it exists, and the provider is checked after creation and after each run.

A provider is *skipped* (default run) or *refused* (asked for by name) only when a tiny probe
session shows that it cannot start on this machine at all; any other failure is that
provider's failed result.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from ..capture import Captured, captured_output
from ..errors import InputError
from .tolerance import TF32_TOLERANCE

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
_GPU_TF32 = (CUDA, TENSORRT)  # providers whose float32 math may run in TF32
TF32_ENV = "NVIDIA_TF32_OVERRIDE"

_ALIASES = {
    "cpu": CPU,
    "cuda": CUDA,
    "gpu": CUDA,
    "tensorrt": TENSORRT,
    "trt": TENSORRT,
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "webgpu": "WebGpuExecutionProvider",
}
_GPU_HINT = ("for CUDA install the GPU build: pip install 'wnconvert[gpu]' (onnxruntime-gpu, "
             "without the CPU-only onnxruntime beside it)")


@dataclass(frozen=True)
class ProviderSpec:
    """An execution provider as ONNX Runtime spells it, with the options we pass to it.

    ``chain``: the providers the session is created with, in order (``[TensorRT, CUDA, CPU]``
    for TensorRT, so nodes TensorRT cannot take run on CUDA with our options, not on CPU).
    ``env``: environment variables set while the session is created and runs.
    """

    name: str
    options: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    explicit: bool = True  # asked for by the user (a failure to start is an input error)
    tf32: bool = False  # TF32 allowed: float32 outputs are judged with TF32 tolerances
    chain: tuple[tuple[str, Mapping[str, str]], ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def session_providers(self) -> list[tuple[str, dict[str, str]]]:
        chain = self.chain or ((self.name, self.options),)
        return [(name, dict(options)) for name, options in chain]

    @property
    def uses_tf32(self) -> bool:
        return self.tf32 and self.name in _GPU_TF32


@dataclass(frozen=True)
class ProviderPlan:
    """The providers to run and those a default run skipped, with why."""

    specs: tuple[ProviderSpec, ...]
    skipped: tuple[tuple[str, str], ...] = ()


def ort_module() -> Any:
    """``onnxruntime``, or a clear error saying which package to install."""
    try:
        import onnxruntime
    except ImportError:
        raise InputError("onnxruntime is not installed, so nothing can be verified: pip install "
                         "'wnconvert[cpu]' (or 'wnconvert[gpu]' for CUDA/TensorRT; never both)"
                         ) from None
    return onnxruntime


def available_providers() -> tuple[str, ...]:
    return tuple(ort_module().get_available_providers())


def quiet_ort_logger(*, enabled: bool = False) -> None:
    """ORT's process-wide logger: warnings only with ``enabled`` (``--debug``), else fatal."""
    ort_module().set_default_logger_severity(2 if enabled else 4)


def plan_providers(requested: Sequence[str], *, cuda_tf32: bool = False,
                   probe: bool = True) -> ProviderPlan:
    """Map names/aliases to ORT providers; default: CPU, plus CUDA when it can start here.

    An unknown or uninstalled provider is an :class:`InputError` listing the available ones; so
    is a provider asked for by name that a probe session shows cannot start here. A default
    CUDA that is not installed or cannot start is skipped, with the reason in the plan.
    """
    available = available_providers()
    if not requested:
        specs = [_spec(CPU, cuda_tf32=cuda_tf32, explicit=False)]
        skipped: list[tuple[str, str]] = []
        if CUDA not in available:
            skipped.append((CUDA, f"not installed in this onnxruntime; {_GPU_HINT}"))
        else:
            cuda = _spec(CUDA, cuda_tf32=cuda_tf32, explicit=False)
            why = probe_provider(cuda) if probe else None
            if why is None:
                specs.append(cuda)
            else:
                skipped.append((CUDA, f"cannot start on this machine: {why}"))
        return ProviderPlan(tuple(specs), tuple(skipped))
    specs = []
    for text in requested:
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            name = _canonical_provider(item, available)
            if name not in available:
                hint = f"; {_GPU_HINT}" if name in _GPU_TF32 else ""
                raise InputError(
                    f"provider {item!r}: {name} is not available in this onnxruntime "
                    f"installation; available: {', '.join(available)}{hint}"
                )
            if name not in (s.name for s in specs):
                specs.append(_spec(name, cuda_tf32=cuda_tf32, explicit=True))
    if not specs:
        raise InputError("providers: none named; use e.g. cpu")
    for spec in specs:
        why = probe_provider(spec) if probe and spec.name != CPU else None
        if why is not None:
            raise InputError(f"provider {spec.name} cannot start on this machine: {why}; "
                             f"check the GPU, its driver and CUDA libraries, or drop it")
    return ProviderPlan(tuple(specs))


def resolve_providers(requested: Sequence[str], *, cuda_tf32: bool = False,
                      probe: bool = True) -> list[ProviderSpec]:
    """The providers :func:`plan_providers` would run (skipped ones left out)."""
    return list(plan_providers(requested, cuda_tf32=cuda_tf32, probe=probe).specs)


def _canonical_provider(text: str, available: Sequence[str]) -> str:
    lowered = text.lower()
    for name in available:
        if lowered in (name.lower(), name.lower().removesuffix("executionprovider")):
            return name
    return _ALIASES.get(lowered, text)


def _spec(name: str, *, cuda_tf32: bool, explicit: bool) -> ProviderSpec:
    """Options, chain, environment and TF32 note of one provider."""
    # ORT's CUDA provider uses TF32 for float32 matmul/conv on Ampere+ by default, which rounds
    # inputs to 10 significand bits. use_tf32=0 turns that off for ORT's own kernels; the
    # environment variable also covers cuDNN/cuBLAS calls that ignore it (RNN kernels, the
    # cuDNN-frontend ConvTranspose retry) and TensorRT, which has no TF32 option at all.
    cuda_options = {"use_tf32": "1" if cuda_tf32 else "0"}
    env = {} if cuda_tf32 else {TF32_ENV: "0"}
    tol = f"float32 outputs judged with TF32 tolerances (atol {TF32_TOLERANCE.atol:g}, " \
          f"rtol {TF32_TOLERANCE.rtol:g})"
    if name == CUDA:
        note = (f"TF32 allowed (use_tf32=1); {tol}" if cuda_tf32 else
                f"TF32 off (use_tf32=0, {TF32_ENV}=0)")
        return ProviderSpec(name, cuda_options, (note,), explicit, cuda_tf32,
                            ((CUDA, cuda_options), (CPU, {})), env)
    if name == TENSORRT:
        note = (f"TF32 allowed (TensorRT uses it unless {TF32_ENV}=0); {tol}" if cuda_tf32 else
                f"TF32 off ({TF32_ENV}=0: TensorRT has no TF32 option; nodes it cannot take "
                "run on CUDA with use_tf32=0)")
        chain: list[tuple[str, Mapping[str, str]]] = [(TENSORRT, {})]
        if CUDA in available_providers():
            chain.append((CUDA, cuda_options))
        chain.append((CPU, {}))
        return ProviderSpec(name, {}, (note,), explicit, cuda_tf32, tuple(chain), env)
    chain = [(name, {})]
    if name != CPU:
        chain.append((CPU, {}))
    return ProviderSpec(name, {}, (), explicit, False, tuple(chain))


def tf32_state(spec: ProviderSpec, applied: Mapping[str, str] | None = None) -> str:
    """One sentence on the TF32 state the provider runs with (for the report); ``applied``:
    the options ORT applied, which win over what was asked."""
    if spec.name == CUDA and applied is not None and "use_tf32" in applied \
            and applied["use_tf32"] != spec.options.get("use_tf32"):
        return (f"ONNX Runtime applied use_tf32={applied['use_tf32']} although "
                f"use_tf32={spec.options.get('use_tf32')} was asked")
    if spec.name == CUDA and applied is not None and applied and "use_tf32" not in applied:
        return ("this onnxruntime has no use_tf32 option (needs >= 1.18): TF32 may be on; "
                + (f"{TF32_ENV}=0 is set for the session" if not spec.tf32 else "allowed"))
    if spec.name == CPU:
        return "no TF32 (CPU computes float32 in float32)"
    if spec.name not in _GPU_TF32:
        return "TF32 state unknown: wnconvert sets no TF32 option for this provider"
    outside = os.environ.get(TF32_ENV)
    if spec.tf32 and outside == "0":
        return (f"TF32 asked for, but {TF32_ENV}=0 in the environment turns it off; float32 "
                "outputs still get TF32 tolerances")
    return spec.notes[0] if spec.notes else ""


@contextlib.contextmanager
def provider_environment(spec: ProviderSpec) -> Iterator[None]:
    """Set the spec's environment variables for the block, then restore the old values."""
    saved = {key: os.environ.get(key) for key in spec.env}
    os.environ.update(spec.env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class ProviderFailed(Exception):
    """A session on a provider failed to come up on the provider asked for (or ran elsewhere)."""

    def __init__(self, reason: str, messages: Sequence[str] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.messages = tuple(messages)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def create_session(model: str | bytes, spec: ProviderSpec, *, ort_logging: bool = False,
                   capture: bool = True, intra_op_threads: int | None = None
                   ) -> tuple[Any, tuple[str, ...]]:
    """An ``InferenceSession`` on ``spec`` with fallback off; returns it and what ORT printed
    (with ``capture``, the default: a caller in a background thread may not redirect the
    process's stdout, which another thread may be using). ``intra_op_threads``: the size of
    ORT's CPU thread pool (None: ORT's default, one per core).

    Raises :class:`ProviderFailed` when ORT raises (any type: ``RuntimeError``, ``Fail``,
    ``EPFail`` are unrelated classes) or the session's first provider is not the one asked for.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Fatal only unless --debug: ORT's warnings are about performance, and its errors reach the
    # report as the failure reason (printing them twice is noise).
    options.log_severity_level = 2 if ort_logging else 4
    # Verification runs the reference alongside the candidate: threads that spin while they
    # wait for work take the cores the other session needs (and other processes' on a busy
    # machine). Spinning changes no result.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
    session = None
    with provider_environment(spec), (captured_output("stdout") if capture
                                      else contextlib.nullcontext(Captured())) as captured:
        try:
            # enable_fallback=0 keeps the constructor from retrying on other providers.
            session = ort.InferenceSession(model, sess_options=options,
                                           providers=spec.session_providers, enable_fallback=0)
            session.disable_fallback()
        except Exception as exc:  # noqa: BLE001 - ORT raises several unrelated types
            error: BaseException | None = exc
        else:
            error = None
    messages = tuple(captured.lines)
    if error is not None:
        raise ProviderFailed(f"ONNX Runtime could not create a session on {spec.name}: "
                             f"{first_line(error)}", messages)
    check_session_provider(session, spec, messages, when="after creating the session")
    return session, messages


def check_session_provider(session: Any, spec: ProviderSpec, messages: Sequence[str], *,
                           when: str) -> None:
    got = list(session.get_providers())
    if not got or got[0] != spec.name:
        detail = f"; ONNX Runtime said: {messages[0]}" if messages else ""
        raise ProviderFailed(f"{when}, ONNX Runtime runs on {', '.join(got) or 'nothing'} "
                             f"instead of {spec.name} (it fell back){detail}", messages)


def applied_options(session: Any, spec: ProviderSpec) -> dict[str, str]:
    """What ORT applied for ``spec`` (``get_provider_options()``), as strings."""
    try:
        applied = session.get_provider_options().get(spec.name, {})
    except Exception:  # noqa: BLE001 - a substituted or old session may not have it
        return dict(spec.options)
    return {str(k): str(v) for k, v in applied.items()}


_PROBED: dict[tuple[object, ...], str | None] = {}


def probe_provider(spec: ProviderSpec) -> str | None:
    """None when a tiny session starts and runs on ``spec``; else why not (ORT's words).

    Remembered per provider chain for the process (a CUDA start costs seconds, and export and
    verification both ask).
    """
    key = (tuple((n, tuple(sorted(o.items()))) for n, o in spec.session_providers),
           tuple(sorted(spec.env.items())))
    if key not in _PROBED:
        _PROBED[key] = _probe(spec)
    return _PROBED[key]


def clear_probe_cache() -> None:
    _PROBED.clear()


def _probe(spec: ProviderSpec) -> str | None:
    import numpy as np

    try:
        session, _ = create_session(_probe_model(), spec)
        with provider_environment(spec), captured_output("stdout"):
            session.run(None, {"x": np.ones((1, 4), np.float32)})
        check_session_provider(session, spec, (), when="after a run")
    except ProviderFailed as exc:
        return exc.reason + (f" ({exc.messages[0]})" if exc.messages else "")
    except Exception as exc:  # noqa: BLE001 - ORT raises several unrelated types
        return f"a probe run failed: {first_line(exc)}"
    return None


@cache
def _probe_model() -> bytes:
    """y = x @ w: one MatMul, so the provider must take a node (not leave all to CPU)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()
