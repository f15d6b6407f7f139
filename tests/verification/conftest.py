"""Shared fixtures of the verification tests: a substitute for ONNX Runtime's session layer
that behaves like the CUDA (or TensorRT) provider, including its failure paths, on a CPU-only
machine; and small hand-built ONNX models."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.capi import onnxruntime_pybind11_state as C

from wnconvert.verification.providers import clear_probe_cache

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


@pytest.fixture(autouse=True)
def _fresh_probes() -> Iterator[None]:
    clear_probe_cache()
    yield
    clear_probe_cache()


@dataclass
class FakeGpu:
    """What the substituted provider does. ``fault``:

    * ``None``: run like the GPU would (on CPU underneath)
    * ``"run-epfail"``: ``EPFail`` at run (cuDNN-frontend plan / TensorRT engine failure); with
      fallback enabled it does what ORT's Python layer does: print to stdout, switch to CPU and
      return CPU results
    * ``"load-runtime"``: ``RuntimeError`` about the model at creation (with fallback enabled:
      ORT prints and falls back to CPU inside the constructor)
    * ``"load-fail"``: ``Fail: CUDA failure 2: out of memory`` at creation (ORT does not catch it)
    * ``"probe"``: the provider cannot start at all (the probe session fails too)
    * ``"stdout"``: C++-style output on file descriptor 1 and a print() while creating and running
    * ``"moved"``: the session reports CPU after a run, as if it had fallen back silently
    """

    fault: str | None = None
    created: list[dict[str, Any]] = field(default_factory=list)
    ran_env: list[str | None] = field(default_factory=list)


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> FakeGpu:
    state = FakeGpu()
    real_available = ort.get_available_providers
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: [TRT, CUDA, *real_available()])
    real_session = ort.InferenceSession

    class FakeSession(real_session):  # type: ignore[misc, valid-type]
        def __init__(self, model: Any, sess_options: Any = None, providers: Any = None,
                     **kwargs: Any) -> None:
            chain = [(p, {}) if isinstance(p, str) else (p[0], dict(p[1]))
                     for p in providers or [CPU]]
            self._fake_chain = chain
            self._fake_gpu = chain[0][0] != CPU
            probe = isinstance(model, bytes)
            if self._fake_gpu:
                state.created.append({"chain": chain, "probe": probe,
                                      "env": os.environ.get("NVIDIA_TF32_OVERRIDE"),
                                      "fallback": int(kwargs.get("enable_fallback", 1))})
            fallback = int(kwargs.get("enable_fallback", 1)) == 1
            if self._fake_gpu and (state.fault == "probe"):
                raise RuntimeError("CUDA failure 100: no CUDA-capable device is detected")
            if self._fake_gpu and not probe and state.fault == "load-fail":
                raise C.Fail("[ONNXRuntimeError] : 1 : FAIL : CUDA failure 2: out of memory")
            if self._fake_gpu and not probe and state.fault == "load-runtime":
                if not fallback:
                    raise RuntimeError("Exception during initialization: CUDNN failure 4: "
                                       "CUDNN_STATUS_INTERNAL_ERROR for node Conv_3")
                print("*************** EP Error ***************")
                print(f"EP Error CUDNN failure 4 when using {[n for n, _ in chain]}")
                print("Falling back to ['CPUExecutionProvider'] and retrying.")
                self._fake_gpu = False
            if self._fake_gpu and state.fault == "stdout":
                os.write(1, b"2026-12-01 [W:onnxruntime:, cuda_provider.cc:42] C++ log line\n")
                print("python print from ORT")
            super().__init__(model, sess_options=sess_options, providers=[CPU], **kwargs)

        def get_providers(self) -> list[str]:
            if self._fake_gpu:
                return [name for name, _ in self._fake_chain]
            return list(super().get_providers())

        def get_provider_options(self) -> dict[str, dict[str, str]]:
            applied = dict(super().get_provider_options())
            if self._fake_gpu:
                for name, options in self._fake_chain:
                    if name == CUDA:
                        applied[CUDA] = {"device_id": "0", "use_tf32": "1", **options}
                    elif name == TRT:
                        applied[TRT] = {"device_id": "0"}
            return applied

        def _fake_fault(self) -> bool:
            if not self._fake_gpu:
                return False
            state.ran_env.append(os.environ.get("NVIDIA_TF32_OVERRIDE"))
            if state.fault == "stdout":
                os.write(1, b"C++ run log line\n")
            if isinstance(self._model_bytes, bytes):  # the probe session runs fine
                return False
            if state.fault == "moved":
                self._fake_gpu = False
            if state.fault != "run-epfail":
                return False
            if self._enable_fallback:  # what ORT's Python layer does
                print(f"EP Error: EP_FAIL cuDNN frontend plan using {self.get_providers()}")
                print("Falling back to ['CPUExecutionProvider'] and retrying.")
                self._fake_gpu = False
                return False
            raise C.EPFail("[ONNXRuntimeError] : 11 : EP_FAIL : Non-zero status code returned "
                           "while running Conv node. cuDNN frontend plan failed")

        def run(self, output_names: Any, input_feed: Any, run_options: Any = None) -> Any:
            self._fake_fault()
            return super().run(output_names, input_feed, run_options)

        def run_with_iobinding(self, iobinding: Any, run_options: Any = None) -> Any:
            self._fake_fault()
            return super().run_with_iobinding(iobinding, run_options)

    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    return state


def linear_model(path: Path, weight: np.ndarray, *, bias: float = 0.5,
                 names: tuple[str, str] = ("fc.weight", "fc.bias"),
                 time: str | int = "time") -> Path:
    """y = x @ W + b, input x [1, time, K] float32, W [K, N]."""
    k, n = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", names[0]], ["xw"]),
         helper.make_node("Add", ["xw", names[1]], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, time, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, time, n])],
        [numpy_helper.from_array(weight, names[0]),
         numpy_helper.from_array(np.full(n, bias, np.float32), names[1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, path)
    return path


def cuda_unusable() -> str | None:
    """Why CUDA tests cannot run here (None when they can), decided by a tiny probe session:
    ``get_available_providers()`` lists CUDA on hosts where it cannot start."""
    from wnconvert.verification.providers import _spec, available_providers, probe_provider

    if CUDA not in available_providers():
        return "needs onnxruntime-gpu (CUDAExecutionProvider is not installed)"
    why = probe_provider(_spec(CUDA, cuda_tf32=False, explicit=True))
    return None if why is None else f"CUDA cannot start here: {why}"
