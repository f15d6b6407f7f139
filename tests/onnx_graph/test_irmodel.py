"""The exporter's check of its in-memory model uses the package's one weight-norm detector."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from tests.onnx_graph.builders import Graph, spectral_norm_model, weight_norm_model
from wnconvert.export import find_runtime_weight_norm
from wnconvert.onnx_graph.irmodel import find_weight_norm_in_ir, runtime_weight_norm


def test_finds_weight_norm_in_an_ir_model_without_copying_large_weights():
    model, _, _ = weight_norm_model((64, 32, 16), 0, order="v*(g/n)")  # v: 32768 elements
    ir_model = ir.serde.deserialize_model(model)
    before = {name: value.const_value for name, value in ir_model.graph.initializers.items()}
    [site] = find_weight_norm_in_ir(ir_model)
    assert (site.parameter, site.dim, site.shape) == ("layer.weight", 0, (64, 32, 16))
    assert runtime_weight_norm(ir_model) == ["layer.weight"]
    assert find_runtime_weight_norm(ir_model) == ["layer.weight"]  # export's entry point
    # The stand-ins are gone again: the model holds its own tensors, untouched.
    after = {name: value.const_value for name, value in ir_model.graph.initializers.items()}
    assert all(after[name] is tensor for name, tensor in before.items())


def test_a_norm_that_is_not_weight_norm_is_not_reported():
    """A norm of a constant alone (no g * v / ||v||) is not weight norm."""
    b = Graph()
    w = b.init("w", np.ones((2, 3), dtype=np.float32))
    model = b.model(b.op("Expand", b.reduce("ReduceL2", w, [0, 1]), b.ints([2, 3])), (2, 3))
    assert runtime_weight_norm(ir.serde.deserialize_model(model)) == []


def test_finds_spectral_norm_in_an_ir_model():
    """The exporter's leftover check sees spectral norm too: an export that keeps it warns."""
    model, *_ = spectral_norm_model((96, 32, 4), 1, style="legacy")  # W: 12288 elements
    ir_model = ir.serde.deserialize_model(model)
    [site] = find_weight_norm_in_ir(ir_model)
    assert (site.kind, site.parameter, site.dim) == ("spectral_norm", "layer.weight", 1)
    assert find_runtime_weight_norm(ir_model) == ["layer.weight"]
