"""Matching initializers to a reference checkpoint by value: cheap first, unique, every dtype."""

from __future__ import annotations

import numpy as np
import pytest

from tests.onnx_graph.builders import Graph, expected, save, wn_arrays
from wnconvert.formats.source import DictSource
from wnconvert.onnx_graph import load_model
from wnconvert.onnx_graph import names as names_module
from wnconvert.onnx_graph.names import match_reference, names_in_use


def _model(tmp_path, arrays: dict[str, np.ndarray]):
    b = Graph()
    for name, array in arrays.items():
        b.init(name, array)
    first = next(iter(arrays))
    out = b.op("Identity", first)
    for name in list(arrays)[1:]:
        b.op("Identity", name)  # every initializer is used
    return load_model(save(b.model(out, arrays[first].shape, arrays[first].dtype),
                           tmp_path / "m.onnx"))


class _Tensors(DictSource):
    """A reference of numpy arrays (DictSource wants torch tensors)."""

    def info(self, key):
        from wnconvert.formats.source import TensorInfo

        array = self._tensors[key]
        return TensorInfo(tuple(array.shape), "bfloat16" if array.dtype.name == "bfloat16"
                          else str(array.dtype))

    def load(self, key):
        return self._tensors[key]


def _match(model, reference: dict[str, np.ndarray]):
    taken = names_in_use(model.proto.graph)
    return {(r.old, r.new, r.how) for r in match_reference(model, _Tensors(reference), taken)}


def test_reads_only_groups_whose_dtype_and_shape_occur_on_both_sides(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(7)
    model = _model(tmp_path, {"mul": a, "other": b.astype(np.float32)})
    read: list[str] = []
    real = names_module.read_initializer

    def counting(model_, tensor):
        read.append(tensor.name)
        return real(model_, tensor)

    monkeypatch.setattr(names_module, "read_initializer", counting)
    assert _match(model, {"fc.weight": a, "bias": np.zeros(9, np.float32)}) == {
        ("mul", "fc.weight", "reference")}
    assert read == ["mul"]  # "other" (shape 7) has no reference of its shape: never read


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_the_exporters_rounding_of_a_fold_matches_and_ambiguity_names_nothing(tmp_path, dtype):
    from wnconvert.dtypes import numpy_dtype

    np_dtype = numpy_dtype(dtype)
    g, v = wn_arrays((4, 3), 0, seed=1)
    folded = expected(g, v, 0).astype(np_dtype)
    bits = folded.view(np.uint16 if np_dtype.itemsize == 2 else np.uint32).copy()
    bits[0, 0] += 1  # one unit in the last place: what float32 arithmetic may give
    off_by_one = bits.view(np_dtype)
    reference = {"layer.parametrizations.weight.original0": g.astype(np_dtype),
                 "layer.parametrizations.weight.original1": v.astype(np_dtype)}
    model = _model(tmp_path, {"mul": off_by_one})
    assert _match(model, reference) == {("mul", "layer.weight", "reference-fold")}
    (tmp_path / "m.onnx").unlink()
    twins = _model(tmp_path, {"mul": off_by_one, "mul_1": off_by_one.copy()})
    assert _match(twins, reference) == set()  # two fit equally: no guess
    (tmp_path / "m.onnx").unlink()
    eps = {"float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}[dtype]
    far = (folded.astype(np.float64) * (1 + 64 * eps)).astype(np_dtype)  # 64 ULP away
    assert _match(_model(tmp_path, {"mul": far}), reference) == set()
