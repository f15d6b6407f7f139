"""Verification: execution providers by name, alias and TF32 settings."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from wnconvert.errors import InputError
from wnconvert.verification import (
    resolve_providers,
)

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def test_default_providers_are_cpu_plus_cuda_when_installed() -> None:
    names = [p.name for p in resolve_providers([])]
    assert names[0] == "CPUExecutionProvider"
    assert ("CUDAExecutionProvider" in names) is HAS_CUDA
    assert "AzureExecutionProvider" not in names


def test_provider_aliases_resolve_to_ort_names() -> None:
    assert [p.name for p in resolve_providers(["cpu"])] == ["CPUExecutionProvider"]
    assert [p.name for p in resolve_providers(["CPUExecutionProvider", "cpu"])] == [
        "CPUExecutionProvider"
    ]


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is available here")
def test_unavailable_provider_is_an_input_error_listing_available_ones() -> None:
    with pytest.raises(InputError) as info:
        resolve_providers(["cuda"])
    message = str(info.value)
    assert "CUDAExecutionProvider is not available" in message
    assert "CPUExecutionProvider" in message


def test_unknown_provider_is_an_input_error() -> None:
    with pytest.raises(InputError, match="available: .*CPUExecutionProvider"):
        resolve_providers(["warp-drive"])


def test_cuda_spec_turns_tf32_off_unless_asked() -> None:
    from wnconvert.verification.providers import _spec

    off = _spec("CUDAExecutionProvider", cuda_tf32=False, explicit=True)
    assert off.options == {"use_tf32": "0"}
    assert "TF32 off" in off.notes[0]
    assert _spec("CUDAExecutionProvider", cuda_tf32=True, explicit=True).options == {
        "use_tf32": "1"
    }


