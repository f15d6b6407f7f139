"""Runners: the candidate on ONNX Runtime, the reference on ONNX Runtime CPU or PyTorch CPU."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..capture import captured_output
from ..dtypes import from_ort_type, numpy_dtype, numpy_to_tensor, tensor_to_numpy
from ..errors import InputError
from ..export.inputs import flatten_outputs, output_names
from .compare import dtype_name
from .providers import (
    ProviderSpec,
    applied_options,
    check_session_provider,
    create_session,
    provider_environment,
)

if TYPE_CHECKING:
    import numpy as np
    import torch


class Runner(Protocol):
    """Something that maps named input arrays to named output arrays."""

    output_names: list[str]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class InputSignature:
    """One ONNX model input: its name, element type and dims (str/None for symbolic)."""

    name: str
    dtype: str
    dims: tuple[int | str | None, ...]


class OrtRunner:
    """The candidate (or an ONNX reference) on one ONNX Runtime provider.

    Inputs and outputs go through IO binding with ``OrtValue``s of an explicit element type, so
    bfloat16 (which numpy feeds cannot carry) works on every provider like float16 does.
    Raises :class:`ProviderFailed` when the session does not come up on the provider asked for,
    and after any run that ended on another provider.
    """

    def __init__(self, path: Path, provider: ProviderSpec, *, ort_logging: bool = False,
                 capture: bool = True, intra_op_threads: int | None = None) -> None:
        self.path = path
        self.provider = provider
        self.session, messages = create_session(str(path), provider, ort_logging=ort_logging,
                                                capture=capture,
                                                intra_op_threads=intra_op_threads)
        self.messages: list[str] = list(messages)
        self.options = applied_options(self.session, provider)
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def inputs(self) -> list[InputSignature]:
        return [
            InputSignature(i.name, ort_type_to_dtype(i.type), tuple(i.shape))
            for i in self.session.get_inputs()
        ]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        captured = None
        try:
            with provider_environment(self.provider), captured_output("stdout") as captured:
                outputs = _run_bound(self.session, feeds, self.output_names)
        finally:
            if captured is not None:
                self.messages.extend(captured.lines)
        assert captured is not None
        check_session_provider(self.session, self.provider, captured.lines, when="after a run")
        return outputs


    def run_uncaptured(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """:meth:`run` for a caller that captures stdout around it: a capture redirects the
        process's file descriptor, so runs in threads must not each take one."""
        with provider_environment(self.provider):
            outputs = _run_bound(self.session, feeds, self.output_names)
        check_session_provider(self.session, self.provider, (), when="after a run")
        return outputs


def _run_bound(session: Any, feeds: Mapping[str, np.ndarray],
               names: Sequence[str]) -> dict[str, np.ndarray]:
    """One run through IO binding; outputs come back on the CPU as numpy arrays."""
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_ortvalue_input(name, to_ortvalue(array))
    for name in names:
        binding.bind_output(name)
    session.run_with_iobinding(binding)
    return {name: from_ortvalue(value)
            for name, value in zip(names, binding.get_outputs(), strict=True)}


def to_ortvalue(array: np.ndarray) -> Any:
    """An ``OrtValue`` of ``array``; bfloat16 goes as its uint16 bits with the ONNX type."""
    import numpy as np
    import onnxruntime as ort

    array = np.ascontiguousarray(array)
    if dtype_name(array) == "bfloat16":
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array.view(np.uint16),
                                                               _ONNX_BFLOAT16)
    return ort.OrtValue.ortvalue_from_numpy(array)


def from_ortvalue(value: Any) -> np.ndarray:
    """A numpy copy of a CPU ``OrtValue``; bfloat16 comes back as ml_dtypes.bfloat16."""
    import numpy as np

    if value.data_type() == "tensor(bfloat16)":
        import torch

        # ORT cannot hand bfloat16 to numpy; DLPack to torch keeps the bits.
        bits = torch.from_dlpack(value).view(torch.int16).numpy().view(np.uint16)
        return bits.copy().view(numpy_dtype("bfloat16"))
    return np.array(value.numpy(), copy=True)


_ONNX_BFLOAT16 = 16  # onnx.TensorProto.BFLOAT16


class TorchRunner:
    """A PyTorch module run on CPU in float32 math: positional inputs in the candidate's input
    order. TF32 is switched off for the run too, in case the module was moved to a GPU."""

    def __init__(self, module: torch.nn.Module, *, input_names: Sequence[str],
                 output_names: Sequence[str] | None = None) -> None:
        self.module = module
        self.input_names = list(input_names)
        self.output_names = list(output_names or [])

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        args = [numpy_to_tensor(feeds[name]) for name in self.input_names]
        with torch.inference_mode(), torch_tf32_off():
            result = self.module(*args)
        flat = flatten_outputs(result)
        names = output_names(flat, self.input_names)
        if not self.output_names:
            self.output_names = names
        return {name: torch_to_numpy(tensor) for name, (_, tensor) in zip(names, flat, strict=True)}


@contextlib.contextmanager
def torch_tf32_off() -> Iterator[None]:
    """``torch.backends.cuda.matmul.allow_tf32`` and ``cudnn.allow_tf32`` off for the block."""
    import torch

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


#: Element types wnconvert generates and feeds (float8/complex/uint32... are not).
FEEDABLE = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8",
            "uint8", "bool")


def ort_type_to_dtype(ort_type: str) -> str:
    name = from_ort_type(ort_type)
    if name is None or name not in FEEDABLE:
        raise InputError(f"model input of type {ort_type}: wnconvert can only feed tensors of "
                         f"{', '.join(FEEDABLE)}")
    return name


def torch_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A CPU numpy copy; bfloat16 becomes ml_dtypes.bfloat16 (bit-identical)."""
    return tensor_to_numpy(tensor).copy()

