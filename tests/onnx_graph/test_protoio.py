"""Reading and writing ONNX files lazily: external data, the 2 GB limit, atomic output, bad
input."""

from __future__ import annotations

import os
import re

import numpy as np
import onnx
import pytest

from tests.onnx_graph.builders import (
    Graph,
    expected,
    initializer,
    run,
    save,
    subgraph_external_model,
    weight_norm_model,
    wn_arrays,
)
from wnconvert.errors import InputError
from wnconvert.onnx_graph import FoldJob, check_file, fold_file, load_model, write_model
from wnconvert.onnx_graph.protoio import FileRange


def two_layer_model() -> tuple[onnx.ModelProto, list[tuple[np.ndarray, np.ndarray]]]:
    b = Graph(18)
    arrays = []
    prev = "x"
    for i, shape in enumerate([(4, 4), (4, 4)]):
        g, v = wn_arrays(shape, 0, seed=i)
        arrays.append((g, v))
        g_name = b.init(f"l{i}.parametrizations.weight.original0", g)
        v_name = b.init(f"l{i}.parametrizations.weight.original1", v)
        n = b.reduce("ReduceL2", v_name, [1])
        w = b.op("Mul", v_name, b.op("Div", g_name, n))
        prev = b.op("MatMul", prev, w)
    b.init("bias", np.arange(4, dtype=np.float32))
    model = b.model(b.op("Add", prev, "bias"), (4, 4))
    return model, arrays


def test_skeleton_holds_no_tensor_bytes(tmp_path):
    model, _ = two_layer_model()
    src = save(model, tmp_path / "m.onnx")
    lazy = load_model(src)
    assert all(not t.raw_data for t in lazy.proto.graph.initializer)
    assert all(isinstance(s, FileRange) and not s.external for s in lazy.sources.values())
    assert lazy.tensor_nbytes() == sum(
        onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


def test_round_trip_is_byte_identical(tmp_path):
    """Without edits the writer reproduces onnx.save's bytes (fields in field order)."""
    model, _ = two_layer_model()
    src = save(model, tmp_path / "m.onnx")
    out = write_model(load_model(src), tmp_path / "copy.onnx")
    assert out.data is None
    assert (tmp_path / "copy.onnx").read_bytes() == src.read_bytes()


def test_external_data_in_and_out(tmp_path):
    model, arrays = two_layer_model()
    # Small tensors (axes, bias) stay inline: ORT cannot infer shapes from external axes.
    src = save(model, tmp_path / "m.onnx", external=True, threshold=80)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    lazy = load_model(src)
    assert lazy.has_external_data and lazy.data_files == ((tmp_path / "m.onnx.data").resolve(),)
    out = tmp_path / "sub" / "folded.onnx"
    out.parent.mkdir()
    outcome = fold_file(src, out, force=False)
    assert outcome.files == [out.parent / "folded.onnx.data", out]
    assert outcome.external_data
    # Every tensor that was external stays external, in the output's own data file.
    folded = onnx.load(str(out), load_external_data=False)
    locations = {
        t.name: {e.key: e.value for e in t.external_data}.get("location")
        for t in folded.graph.initializer
    }
    assert locations == {"l0.weight": "folded.onnx.data", "l1.weight": "folded.onnx.data",
                         "bias": None}
    for i, (g, v) in enumerate(arrays):
        np.testing.assert_array_equal(initializer(out, f"l{i}.weight"), expected(g, v, 0))
    x = np.eye(4, dtype=np.float32)
    np.testing.assert_allclose(run(out, {"x": x})[0], run(src, {"x": x})[0], rtol=1e-6)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_output_alignment_follows_the_input(tmp_path):
    model, _ = two_layer_model()
    src = save(model, tmp_path / "m.onnx", external=True)
    out = tmp_path / "folded.onnx"
    fold_file(src, out, force=False)
    offsets = [int({e.key: e.value for e in t.external_data}["offset"])
               for t in onnx.load(str(out), load_external_data=False).graph.initializer]
    alignment = load_model(src).alignment
    assert all(offset % alignment == 0 for offset in offsets)


def test_inline_model_over_the_limit_moves_to_external_data(tmp_path):
    """Stand-in for a > 2 GB model: the same switch with a tiny inline limit."""
    model, arrays = two_layer_model()
    src = save(model, tmp_path / "m.onnx")
    lazy = load_model(src)
    written = write_model(lazy, tmp_path / "big.onnx", inline_limit=16)
    assert written.data is None
    loaded = onnx.load(str(tmp_path / "big.onnx"), load_external_data=False)
    external = [t.name for t in loaded.graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external == []  # every tensor here is < 1 KB: small ones stay inline
    big = Graph()
    big.init("w", np.ones((64, 64), dtype=np.float32))
    big.init("small", np.ones(3, dtype=np.float32))
    src2 = save(big.model("w", (64, 64)), tmp_path / "w.onnx")
    written = write_model(load_model(src2), tmp_path / "w2.onnx", inline_limit=1000)
    assert written.data == tmp_path / "w2.onnx.data"
    loaded = onnx.load(str(tmp_path / "w2.onnx"), load_external_data=False)
    assert [t.data_location for t in loaded.graph.initializer] == [
        onnx.TensorProto.EXTERNAL, onnx.TensorProto.DEFAULT]
    np.testing.assert_array_equal(initializer(tmp_path / "w2.onnx", "w"), np.ones((64, 64)))


def test_existing_output_needs_force_and_input_is_never_the_output(tmp_path):
    model, _, _ = weight_norm_model((4, 3), 0)
    src = save(model, tmp_path / "m.onnx")
    out = tmp_path / "out.onnx"
    out.write_bytes(b"old")
    with pytest.raises(InputError, match="already exists"):
        fold_file(src, out, force=False)
    assert out.read_bytes() == b"old"
    fold_file(src, out, force=True)
    assert out.read_bytes() != b"old"
    with pytest.raises(InputError, match="input"):
        fold_file(src, src, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "out.onnx"]


def test_output_data_file_cannot_overwrite_the_input_data(tmp_path):
    model, _, _ = weight_norm_model((4, 3), 0)
    src = save(model, tmp_path / "m.onnx", external=True)
    # Writing "m" next to "m.onnx.data"... would need m.onnx as output: refused. A data file
    # named like the output's that already exists needs --force.
    (tmp_path / "out.onnx.data").write_bytes(b"someone else's")
    with pytest.raises(InputError, match="out.onnx.data"):
        fold_file(src, tmp_path / "out.onnx", force=False)
    assert (tmp_path / "out.onnx.data").read_bytes() == b"someone else's"


def test_failure_before_commit_leaves_nothing(tmp_path):
    model, _, _ = weight_norm_model((4, 3), 0)
    src = save(model, tmp_path / "m.onnx", external=True)
    out = tmp_path / "out.onnx"
    with pytest.raises(RuntimeError, match="verification said no"), \
            FoldJob(src, out, force=False) as job:
        staged = job.write()
        assert staged.exists() and staged.with_name("out.onnx.data").exists()
        raise RuntimeError("verification said no")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]


@pytest.mark.parametrize("content,message", [
    (b"", "empty"),
    (b"PK\x03\x04 this is a zip file, not a model", "not a valid ONNX model"),
    (b"\x08\x07", "not an ONNX model"),
])
def test_unreadable_inputs(tmp_path, content, message):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        check_file(path)


def test_truncated_model_and_missing_or_escaping_external_data(tmp_path):
    model, _, _ = weight_norm_model((4, 3), 0)
    src = save(model, tmp_path / "m.onnx")
    data = src.read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="malformed or truncated"):
        check_file(tmp_path / "cut.onnx")

    ext = save(model, tmp_path / "e.onnx", external=True)
    (tmp_path / "e.onnx.data").unlink()
    with pytest.raises(InputError, match="missing"):
        check_file(ext)

    escaping = onnx.load(str(src))
    tensor = escaping.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../secret.bin"
    (tmp_path.parent / "secret.bin").write_bytes(b"\0" * 64)
    onnx.save(escaping, str(tmp_path / "esc.onnx"))
    with pytest.raises(InputError, match="outside the model's folder"):
        check_file(tmp_path / "esc.onnx")


def test_truncated_external_data(tmp_path):
    model, _, _ = weight_norm_model((4, 3), 0)
    ext = save(model, tmp_path / "e.onnx", external=True)
    data = tmp_path / "e.onnx.data"
    data.write_bytes(data.read_bytes()[:10])
    with pytest.raises(InputError, match="truncated"):
        fold_file(ext, tmp_path / "out.onnx", force=False)


def test_initializers_listed_as_inputs(tmp_path):
    """IR 3 models list initializers as graph inputs: folded ones leave the input list too."""
    model, g, v = weight_norm_model((4, 3), 0, opset=8)
    model.ir_version = 3
    for tensor in list(model.graph.initializer):
        model.graph.input.append(onnx.helper.make_tensor_value_info(
            tensor.name, tensor.data_type, list(tensor.dims)))
    src = save(model, tmp_path / "m.onnx")
    out = tmp_path / "out.onnx"
    fold_file(src, out, force=False)
    folded = onnx.load(str(out))
    assert [i.name for i in folded.graph.input] == ["x"]
    np.testing.assert_array_equal(initializer(out, "layer.weight"), expected(g, v, 0))
    assert os.path.getsize(out) > 0


def _sparse_file(path, size: int):
    """A file of ``size`` bytes that takes no disk space (and no time to write)."""
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


@pytest.fixture
def no_bulk_reads(monkeypatch):
    """Reading a nested external tensor fails the test: every check comes before the read."""
    def refuse(self):
        raise AssertionError(f"read {self.length} bytes of {self.path}")
    monkeypatch.setattr(FileRange, "read", refuse)


@pytest.mark.usefixtures("no_bulk_reads")
@pytest.mark.parametrize("case,message", [
    # 64 GiB declared for a [4, 3] float tensor (48 bytes), in an If body / a Constant there.
    ("initializer", "has 68719476736 bytes of external data for shape [4, 3] (48 needed)"),
    ("constant", "has 68719476736 bytes of external data for shape [4, 3] (48 needed)"),
    # The shape says 64 GiB too: it would have to be inlined, which no ONNX file can hold.
    ("declared-huge", "more than fits inline in an ONNX file"),
    # Constant values were not checked at all: the same checks as for initializers.
    ("outside", "points outside the model's folder"),
    ("beyond-the-file", "(needs bytes 0..68719476737, has 68719476736)"),
])
def test_subgraph_external_data_is_checked_before_it_is_read(tmp_path, cli, case, message):
    folder = tmp_path / "model"
    folder.mkdir()
    _sparse_file(folder / "c.bin", 64 * 2**30)
    _sparse_file(tmp_path / "secret.bin", 64 * 2**30)
    location, length, dims = "c.bin", 64 * 2**30, [4, 3]
    if case == "declared-huge":
        dims = [2**34]
    elif case == "outside":
        location = "../secret.bin"
    elif case == "beyond-the-file":
        length = 64 * 2**30 + 1
    model = subgraph_external_model(location, length=length, dims=dims,
                                    in_constant=case in ("constant", "outside", "beyond-the-file"))
    path = save(model, folder / "m.onnx")
    for read in (load_model, check_file,
                 lambda p: fold_file(p, tmp_path / "out.onnx", force=False)):
        with pytest.raises(InputError, match=re.escape(message)):
            read(path)
    result = cli("check", path)
    assert result.exit_code == 2, result.output
    [line] = result.stderr.strip().splitlines()
    assert message in line and "Traceback" not in result.output


def test_small_external_tensors_in_subgraphs_and_constants_are_inlined(tmp_path):
    """Checked, then read: the output holds them inline (it does not share the input's data
    file) and computes what the input computes."""
    values = np.arange(12, dtype=np.float32)
    values.tofile(tmp_path / "c.bin")
    feeds = {"x": np.ones((4, 3), np.float32), "cond": np.array(True)}
    for in_constant in (False, True):
        path = save(subgraph_external_model("c.bin", length=48, in_constant=in_constant),
                    tmp_path / "m.onnx")
        out = tmp_path / f"out{in_constant}.onnx"
        fold_file(path, out, force=False)
        [tensor] = _all_tensors(onnx.load(str(out), load_external_data=False))
        assert tensor.data_location == onnx.TensorProto.DEFAULT and not tensor.external_data
        np.testing.assert_array_equal(run(out, feeds)[0], 1 + values.reshape(4, 3))


def _all_tensors(model):
    """The initializers and Constant values of the main graph's subgraphs."""
    found = []
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                found.extend(attr.g.initializer)
                found.extend(a.t for inner in attr.g.node for a in inner.attribute
                             if a.HasField("t"))
    return found
