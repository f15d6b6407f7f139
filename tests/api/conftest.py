"""Fixtures shared by the API tests."""

from __future__ import annotations

import builtins
from pathlib import Path

import pytest


@pytest.fixture
def model_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The model files Python parses during the test, one entry per read, in order: protoio's
    scan of a file (it opens the model itself) and ``onnx.load`` / ``onnx.load_model``. ONNX
    Runtime's own loading of a file for its session is not counted."""
    import onnx

    from wnconvert.onnx_graph import protoio

    reads: list[Path] = []
    real_load = onnx.load

    def counting_open(file, *args, **kwargs):  # protoio opens a model to scan it
        reads.append(Path(file))
        return builtins.open(file, *args, **kwargs)

    def counting_load(file, *args, **kwargs):
        reads.append(Path(file))
        return real_load(file, *args, **kwargs)

    monkeypatch.setattr(protoio, "open", counting_open, raising=False)
    monkeypatch.setattr(onnx, "load", counting_load)
    monkeypatch.setattr(onnx, "load_model", counting_load)
    return reads
