"""Export to ONNX without weight norm, with parameter names kept, then verification.

Exports are slow-ish (seconds), so each model is exported once per module (module-scoped
fixtures) and several tests look at the result.
"""

from __future__ import annotations

import re
import textwrap
from collections import namedtuple
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from tests.onnx_graph.builders import scaled_copy
from wnconvert import export as ex
from wnconvert.cli.options import FLAGS
from wnconvert.cli.parse import parse_dynamic_axis, parse_input_spec, parse_model_kwargs
from wnconvert.errors import ConversionNotPossible, InputError
from wnconvert.verification import VerifyOptions, verify_onnx_against_torch

GENERATOR = "fixtures/models.py:build_generator"
WEIGHT_NORM_OPS = {"ReduceL2", "LpNormalization", "ReduceSumSquare", "Sqrt"}
LOST_NAME = re.compile(r"^(mul|div|val|onnx::|_v_)")

# A model with every layer type weight norm is used with: Linear, LSTM, Conv1d, ConvTranspose1d,
# a residual block of dilated convolutions, Conv2d; two inputs and a dict of three outputs.
ZOO_SOURCE = '''
import torch
from torch import nn


def wn(module, api, name="weight"):
    if api == "parametrize":
        return nn.utils.parametrizations.weight_norm(module, name=name)
    if api == "legacy":
        return nn.utils.weight_norm(module, name=name)
    return module


class Residual(nn.Module):
    def __init__(self, channels, api):
        super().__init__()
        self.convs = nn.ModuleList(
            wn(nn.Conv1d(channels, channels, 3, dilation=d, padding=d), api) for d in (1, 2))

    def forward(self, x):
        for conv in self.convs:
            x = x + conv(nn.functional.leaky_relu(x, 0.1))
        return x


class Zoo(nn.Module):
    def __init__(self, api):
        super().__init__()
        self.fc = wn(nn.Linear(8, 6), api)
        self.lstm = wn(wn(nn.LSTM(6, 6, batch_first=True), api, "weight_ih_l0"), api,
                       "weight_hh_l0")
        self.conv = wn(nn.Conv1d(6, 4, 3, padding=1), api)
        self.up = wn(nn.ConvTranspose1d(4, 4, 4, stride=2, padding=1), api)
        self.res = Residual(4, api)
        self.conv2d = wn(nn.Conv2d(1, 3, 3, padding=1), api)

    def forward(self, seq, img):
        hidden, (state, _) = self.lstm(torch.tanh(self.fc(seq)))
        audio = self.res(self.up(self.conv(hidden.transpose(1, 2))))
        return {"audio": audio, "state": state, "image": self.conv2d(img)}


def build_zoo(api="parametrize", seed=0):
    torch.manual_seed(seed)
    return Zoo(api).eval()
'''
ZOO_NAMED = {"fc.weight", "fc.bias", "conv.weight", "conv.bias", "up.weight", "up.bias",
             "res.convs.0.weight", "res.convs.0.bias", "res.convs.1.weight", "res.convs.1.bias",
             "conv2d.weight", "conv2d.bias"}
ZOO_INPUTS = [parse_input_spec("2x5x8"), parse_input_spec("1x1x6x6")]


@pytest.fixture(scope="module")
def zoo_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("zoo") / "zoo_models.py"
    path.write_text(ZOO_SOURCE)
    return path


@dataclass
class Exported:
    prepared: ex.PreparedModel
    result: ex.ExportResult
    model: onnx.ModelProto

    @property
    def path(self) -> Path:
        return self.result.path


def _export(prepared: ex.PreparedModel, specs: list[ex.InputSpec], out: Path,
            **kwargs: Any) -> Exported:
    result = ex.export_onnx(prepared.plain, ex.example_inputs(specs), output=out, **kwargs)
    return Exported(prepared, result, onnx.load(out))


# checkpoint API -> module API: both weight-norm APIs, and a plain module given a weight-normed
# checkpoint (the reference then gets weight norm applied).
ZOO_CASES = {"parametrize": ("parametrize", "parametrize"), "legacy": ("legacy", "legacy"),
             "plain-module": ("parametrize", "none")}


@pytest.fixture(scope="module")
def zoo_exports(zoo_file: Path, tmp_path_factory: pytest.TempPathFactory,
                fixture_models: Any) -> dict[str, Exported]:
    out_dir = tmp_path_factory.mktemp("zoo_out")
    spec = f"{zoo_file}:build_zoo"
    exported = {}
    for case, (ckpt_api, module_api) in ZOO_CASES.items():
        state = ex.build_model(spec, {"api": ckpt_api, "seed": 1}).state_dict()
        prepared = ex.prepare_model(state, model=spec, model_kwargs={"api": module_api},
                                    source=f"{case}.pt")
        exported[case] = _export(prepared, ZOO_INPUTS, out_dir / f"{case}.onnx",
                                 dynamic=[parse_dynamic_axis("0:1=frames")])
    return exported


@pytest.mark.slow
@pytest.mark.parametrize("case", list(ZOO_CASES))
def test_zoo_export_verifies_on_onnx_runtime(zoo_exports: dict[str, Exported], case: str) -> None:
    item = zoo_exports[case]
    report = verify_onnx_against_torch(
        item.path, item.prepared.reference, options=VerifyOptions(input_specs=tuple(ZOO_INPUTS)),
        reference_weights=item.prepared.weights,
    )
    assert report.passed, report.failures()
    assert [o.name for o in report.providers[0].outputs] == ["audio", "state", "image"]
    assert [c.label for c in report.cases] == ["run 0", "second size frames=10"]
    assert report.weights is not None
    assert {w.name for w in report.weights.compared} >= ZOO_NAMED
    assert report.weights.worst is not None and report.weights.worst.max_abs == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("case", list(ZOO_CASES))
def test_zoo_graph_has_no_weight_norm_and_keeps_parameter_names(
        zoo_exports: dict[str, Exported], case: str) -> None:
    item = zoo_exports[case]
    ops = {node.op_type for node in item.model.graph.node}
    assert not ops & WEIGHT_NORM_OPS, ops
    assert item.result.runtime_weight_norm == []
    names = {init.name for init in item.model.graph.initializer}
    assert names >= ZOO_NAMED
    # Only the LSTM's packed gate tensors keep exporter names (they are not one parameter).
    assert item.result.parameters_named == len(ZOO_NAMED)
    assert "fc.weight" in item.result.untransposed
    assert [o.name for o in item.model.graph.output] == ["audio", "state", "image"]
    assert [i.name for i in item.model.graph.input] == ["seq", "img"]


@pytest.mark.slow
def test_zoo_weights_are_the_exact_fold(zoo_exports: dict[str, Exported], zoo_file: Path) -> None:
    from wnconvert.convert import fold_state_dict

    state = ex.build_model(f"{zoo_file}:build_zoo", {"api": "parametrize", "seed": 1}).state_dict()
    folded = fold_state_dict(state)
    inits = {i.name: numpy_helper.to_array(i) for i in
             zoo_exports["parametrize"].model.graph.initializer}
    for name in ZOO_NAMED:
        np.testing.assert_array_equal(inits[name], folded[name].numpy(), err_msg=name)


@pytest.mark.slow
def test_reference_keeps_weight_norm_and_export_module_has_none(
        zoo_exports: dict[str, Exported]) -> None:
    for case in ZOO_CASES:
        prepared = zoo_exports[case].prepared
        assert ex.has_weight_norm(prepared.reference), case
        assert not ex.has_weight_norm(prepared.plain), case
    assert any("applied" in note for note in zoo_exports["plain-module"].prepared.notes)


# --------------------------------------------------------------------------- the generator


@pytest.fixture(scope="module")
def generator_export(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    state = ex.build_model(GENERATOR, {"weight_norm": "legacy", "seed": 2}).state_dict()
    prepared = ex.prepare_model(state, model=GENERATOR, model_kwargs={"weight_norm": "none"},
                                source="legacy.pt")
    out = tmp_path_factory.mktemp("gen") / "generator.onnx"
    return _export(prepared, [parse_input_spec("1x16x12")], out,
                   dynamic=[parse_dynamic_axis("2=time")])


@pytest.mark.slow
def test_dynamic_time_axis_is_verified_at_two_lengths(generator_export: Exported) -> None:
    report = verify_onnx_against_torch(
        generator_export.path, generator_export.prepared.reference,
        options=VerifyOptions(input_specs=(parse_input_spec("1x16x12"),)),
    )
    assert report.passed, report.failures()
    shapes = [case.inputs["mel"][0] for case in report.cases]
    assert shapes == [(1, 16, 12), (1, 16, 24)]
    assert [c[1].shape for c in report.providers[0].outputs[0].cases] == [(1, 1, 96), (1, 1, 192)]
    dims = generator_export.model.graph.input[0].type.tensor_type.shape.dim
    assert dims[2].dim_param == "time"
    assert generator_export.result.input_shapes == {"mel": [1, 16, "time"]}


@pytest.mark.slow
def test_onnx_model_runs_at_any_length(generator_export: Exported) -> None:
    session = ort.InferenceSession(str(generator_export.path), providers=["CPUExecutionProvider"])
    mel = np.random.default_rng(0).standard_normal((1, 16, 7)).astype(np.float32)
    [audio] = session.run(None, {"mel": mel})
    with torch.inference_mode():
        expected = generator_export.prepared.reference(torch.from_numpy(mel)).numpy()
    np.testing.assert_allclose(audio, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_perturbed_onnx_weight_fails_and_names_output_and_weight(
        generator_export: Exported, tmp_path: Path) -> None:
    bad = scaled_copy(generator_export.path, tmp_path / "bad.onnx", "conv_pre.weight", 1.01)
    report = verify_onnx_against_torch(
        bad, generator_export.prepared.reference,
        options=VerifyOptions(input_specs=(parse_input_spec("1x16x12"),)),
        reference_weights=generator_export.prepared.weights,
    )
    assert not report.passed
    failures = report.failures()
    assert any(line.startswith("CPUExecutionProvider: output 'output'") for line in failures)
    assert report.weights is not None and [w.name for w in report.weights.failed] == [
        "conv_pre.weight"]


@pytest.mark.slow
def test_existing_output_is_not_overwritten_without_force(generator_export: Exported) -> None:
    before = generator_export.path.read_bytes()
    with pytest.raises(InputError, match="already exists"):
        ex.export_onnx(generator_export.prepared.plain,
                       ex.example_inputs([parse_input_spec("1x16x12")]),
                       output=generator_export.path)
    assert generator_export.path.read_bytes() == before


@pytest.mark.slow
def test_large_models_use_external_data(tmp_path: Path, generator_export: Exported,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend the 2 GB limit is 0 bytes so the tiny generator takes the external-data path.
    monkeypatch.setattr("wnconvert.export.onnx_export.EXTERNAL_DATA_THRESHOLD", 0)
    out = tmp_path / "big.onnx"
    result = ex.export_onnx(generator_export.prepared.plain,
                            ex.example_inputs([parse_input_spec("1x16x12")]), output=out)
    assert result.external_data == tmp_path / "big.onnx.data"
    assert result.external_data.stat().st_size > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert out.stat().st_size < result.external_data.stat().st_size
    report = verify_onnx_against_torch(
        out, generator_export.prepared.reference,
        options=VerifyOptions(input_specs=(parse_input_spec("1x16x12"),)),
        reference_weights=generator_export.prepared.weights)
    assert report.passed, report.failures()
    assert report.weights is not None and len(report.weights.compared) == 16


# --------------------------------------------------------------------------- .pt2 programs


@pytest.fixture(scope="module")
def program_file(tmp_path_factory: pytest.TempPathFactory, fixture_models: Any) -> Path:
    model = fixture_models.build_generator(weight_norm="parametrize", seed=4)
    program = torch.export.export(model, (torch.randn(1, 16, 10),),
                                  dynamic_shapes=({2: torch.export.Dim("frames")},))
    path = tmp_path_factory.mktemp("pt2") / "generator.pt2"
    torch.export.save(program, str(path))
    return path


@pytest.mark.slow
def test_program_is_folded_exported_and_verified(program_file: Path, tmp_path: Path) -> None:
    prepared = ex.prepare_program(program_file, trust_program=True)
    assert prepared.input_names == ["mel"]
    assert prepared.example_inputs is not None
    assert [d.axis for d in prepared.dynamic_axes] == [2]
    out = tmp_path / "program.onnx"
    result = ex.export_onnx(prepared.plain, prepared.example_inputs, output=out,
                            input_names=prepared.input_names, dynamic=prepared.dynamic_axes)
    model = onnx.load(out)
    names = {i.name for i in model.graph.initializer}
    assert {"conv_pre.weight", "ups.0.weight", "conv_post.weight"} <= names
    assert not {n.op_type for n in model.graph.node} & WEIGHT_NORM_OPS
    assert result.parameters_named == result.parameters_total == 16
    report = verify_onnx_against_torch(out, prepared.reference, options=VerifyOptions(),
                                       reference_weights=prepared.weights)
    assert report.passed, report.failures()
    assert len(report.cases) == 2  # the program's dynamic axis is checked at a second size


# --------------------------------------------------------------------------- exporters


class Branchy(nn.Module):
    """Data-dependent Python control flow: torch.export cannot capture it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.abs().sum() >= 0:  # always true, but decided on data
            return self.fc(x)
        return -self.fc(x)


@pytest.mark.slow
def test_legacy_exporter_is_the_fallback_for_uncapturable_models(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = Branchy().eval()
    args = [torch.randn(2, 4)]
    result = ex.export_onnx(module, args, output=tmp_path / "branchy.onnx")
    assert result.exporter == "legacy"
    assert "legacy TorchScript exporter" in result.notes[0]
    names = {i.name for i in onnx.load(tmp_path / "branchy.onnx").graph.initializer}
    assert {"fc.weight", "fc.bias"} <= names
    with pytest.raises(ConversionNotPossible, match="torch.export-based exporter failed"):
        ex.export_onnx(module, args, output=tmp_path / "strict.onnx", exporter="dynamo")


@pytest.mark.slow
def test_opset_override_is_written(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 3)).eval()
    ex.export_onnx(module, [torch.randn(1, 4)], output=tmp_path / "o.onnx", opset=20)
    model = onnx.load(tmp_path / "o.onnx")
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {20}


def test_restore_parameter_names_renames_bit_identical_and_untransposes() -> None:
    import onnx_ir as ir
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 4)).astype(np.float32)  # a Linear weight (out, in)
    conv = rng.standard_normal((2, 1, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "val_0"], ["y"]),
         helper.make_node("Identity", ["mul_3"], ["z"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 1, 3])],
        [numpy_helper.from_array(np.ascontiguousarray(w.T), "val_0"),
         numpy_helper.from_array(conv, "mul_3"),
         numpy_helper.from_array(np.arange(3, dtype=np.int64), "val_9")],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    params = {"fc.weight": torch.from_numpy(w), "conv.weight": torch.from_numpy(conv)}
    result = ex.restore_parameter_names(model, params)
    assert result.renamed == {"mul_3": "conv.weight"}
    assert result.untransposed == ["fc.weight"]
    assert result.named == result.total == 2
    proto = ir.to_proto(model)
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    assert set(inits) == {"fc.weight", "conv.weight", "val_9"}
    np.testing.assert_array_equal(inits["fc.weight"], w)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((1, 4)).astype(np.float32)
    y, z = session.run(None, {"x": x})
    np.testing.assert_allclose(y, x @ w.T, rtol=1e-6)
    np.testing.assert_array_equal(z, conv)


# --------------------------------------------------------------------------- model loading


def test_load_callable_from_a_file_that_imports_its_sibling(tmp_path: Path) -> None:
    (tmp_path / "sibling_blocks.py").write_text("from torch import nn\nBLOCK = nn.Linear\n")
    (tmp_path / "net_file.py").write_text(textwrap.dedent("""
        from sibling_blocks import BLOCK

        def build(width=3):
            return BLOCK(2, width)
    """))
    module = ex.build_model(f"{tmp_path / 'net_file.py'}:build", {"width": 5})
    assert isinstance(module, nn.Linear) and module.out_features == 5
    assert not module.training


def test_load_callable_from_a_module_in_the_current_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cwd_models_for_test.py").write_text(
        "from torch import nn\nclass Factory:\n    @staticmethod\n"
        "    def make():\n        return nn.Linear(2, 2)\n")
    monkeypatch.chdir(tmp_path)
    assert isinstance(ex.build_model("cwd_models_for_test:Factory.make", {}), nn.Linear)


@pytest.mark.parametrize(
    ("spec", "kwargs", "message"),
    [
        ("no_colon", {}, "expected MODULE:CALLABLE"),
        ("missing/file.py:build", {}, "does not exist"),
        ("wnconvert_no_such_module:build", {}, "importing wnconvert_no_such_module failed"),
        ("fixtures/models.py:nothing_here", {}, "has no attribute 'nothing_here'"),
        ("fixtures/models.py:WEIGHT_NORM_APIS", {}, "is not callable"),
        ("fixtures/models.py:build_generator", {"bogus": 1}, "raised TypeError"),
        ("fixtures/models.py:apply_weight_norm", {"module": None, "api": "none"},
         "not a torch.nn.Module"),
    ],
)
def test_model_errors_are_one_line_input_errors(spec: str, kwargs: dict[str, Any],
                                                message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)) as info:
        ex.build_model(spec, kwargs)
    assert "\n" not in str(info.value)


def test_model_kwargs_must_be_a_json_object() -> None:
    assert parse_model_kwargs('{"a": 1}') == {"a": 1}
    assert parse_model_kwargs(None) == {}
    for bad in ("{a: 1}", "[1]"):
        with pytest.raises(InputError, match="--model-kwargs"):
            parse_model_kwargs(bad)


# --------------------------------------------------------------------------- state dicts


@pytest.mark.parametrize(("ckpt_api", "module_api"),
                         [("legacy", "parametrize"), ("parametrize", "legacy"),
                          ("none", "parametrize"), ("parametrize", "none")])
def test_checkpoint_is_matched_to_the_module_keys(ckpt_api: str, module_api: str) -> None:
    source = ex.build_model(GENERATOR, {"weight_norm": ckpt_api, "seed": 5})
    target = ex.build_model(GENERATOR, {"weight_norm": module_api, "seed": 6})
    ex.load_strict(target, source.state_dict(), source="ckpt.pt", model=GENERATOR)
    mel = torch.randn(1, 16, 9)
    with torch.inference_mode():
        torch.testing.assert_close(target(mel), source(mel), atol=1e-6, rtol=1e-5)


def test_checkpoint_that_does_not_fit_names_the_keys() -> None:
    state = ex.build_model(GENERATOR, {"weight_norm": "none"}).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["conv_post.bias"]
    module = ex.build_model(GENERATOR, {"weight_norm": "none"})
    with pytest.raises(InputError, match=r"ckpt.pt: does not fit model=.*conv_post.bias.*"
                                         r"extra.weight"):
        ex.load_strict(module, state, source="ckpt.pt", model=GENERATOR)
    wrong = ex.build_model(GENERATOR, {"weight_norm": "none", "channels": 16})
    with pytest.raises(InputError, match="model_kwargs="):
        ex.load_strict(wrong, ex.build_model(GENERATOR, {"weight_norm": "none"}).state_dict(),
                       source="ckpt.pt", model=GENERATOR)


def test_strip_weight_norm_removes_both_apis_and_keeps_other_parametrizations() -> None:
    pw = nn.utils.parametrizations
    with pytest.warns(FutureWarning, match="weight_norm"):
        legacy = nn.utils.weight_norm(nn.Linear(3, 3))
    module = nn.Sequential(pw.weight_norm(nn.Linear(3, 3)), legacy,
                           pw.spectral_norm(nn.Linear(3, 3)))
    assert ex.has_weight_norm(module)
    ex.strip_weight_norm(module)
    assert not ex.has_weight_norm(module)
    assert set(module.state_dict()) >= {"0.weight", "1.weight"}
    assert "2.parametrizations.weight.original" in module.state_dict()


# --------------------------------------------------------------------------- specs and outputs


def test_parse_input_spec() -> None:
    assert parse_input_spec("1x80x200") == ex.InputSpec((1, 80, 200), "float32", None,
                                                           "1x80x200")
    spec = parse_input_spec("mel=1x80x200:fp16")
    assert (spec.name, spec.shape, spec.dtype) == ("mel", (1, 80, 200), "float16")
    assert parse_input_spec("3:int64").dtype == "int64"
    for bad in ("", "1xax2", "1x-1", "1x2:complex7"):
        with pytest.raises(InputError) as info:
            parse_input_spec(bad)
        assert "--input" in info.value.render(FLAGS)


def test_parse_dynamic_axis() -> None:
    assert parse_dynamic_axis("2") == ex.DynamicAxis(2, 0, None, "2")
    assert parse_dynamic_axis("0:2") == ex.DynamicAxis(2, 0, None, "0:2")
    assert parse_dynamic_axis("mel:2=time") == ex.DynamicAxis(2, "mel", "time", "mel:2=time")
    assert parse_dynamic_axis("0:2").symbol(["mel"]) == "mel_dim2"
    for bad in ("x", "0:-1", "0:2=not valid"):
        with pytest.raises(InputError) as info:
            parse_dynamic_axis(bad)
        assert "--dynamic" in info.value.render(FLAGS)
    with pytest.raises(InputError, match="no input 'audio'"):
        parse_dynamic_axis("audio:1").input_name(["mel"])


@dataclass
class DataclassOut:
    logits: torch.Tensor
    extra: torch.Tensor | None = None


Pair = namedtuple("Pair", ["mean", "std"])


@pytest.mark.parametrize(
    ("value", "names"),
    [
        (lambda t: t, ["output"]),
        (lambda t: (t, t), ["output_0", "output_1"]),
        (lambda t: {"a": t, "b": [t, None, t]}, ["a", "b_0", "b_2"]),
        (lambda t: DataclassOut(t), ["logits"]),
        (lambda t: Pair(t, t), ["mean", "std"]),
        (lambda t: {"x": {"y": t}}, ["x.y"]),
    ],
)
def test_flatten_outputs_names(value: Callable[[torch.Tensor], Any], names: list[str]) -> None:
    assert [name for name, _ in ex.flatten_outputs(value(torch.zeros(1)))] == names


def test_output_names_never_clash_with_inputs_or_each_other() -> None:
    t = torch.zeros(1)
    assert ex.output_names([("img", t), ("y", t)], ["img"]) == ["img_out", "y"]
    assert ex.output_names([("a", t), ("a", t)], []) == ["output_0", "output_1"]
    with pytest.raises(InputError, match="only tensors"):
        ex.flatten_outputs({"n": 3})


@pytest.mark.slow
def test_dict_outputs_become_named_onnx_outputs(tmp_path: Path) -> None:
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 1)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"scores": self.a(x), "value": self.b(x)}

    torch.manual_seed(0)
    module = TwoHeads().eval()
    result = ex.export_onnx(module, [torch.randn(2, 3)], output=tmp_path / "heads.onnx")
    assert result.output_names == ["scores", "value"]
    session = ort.InferenceSession(str(tmp_path / "heads.onnx"),
                                   providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["scores", "value"]
    assert {"a.weight", "a.bias", "b.weight", "b.bias"} <= {
        i.name for i in onnx.load(tmp_path / "heads.onnx").graph.initializer}


class _LstmHead(nn.Module):
    """nn.LSTM feeding a Linear on a 3-D tensor: torch.export marks the time axis dynamic at the
    input but bakes its example size into the Linear's Reshape (seen with torch 2.13)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 12, batch_first=True)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.lstm(x)
        return self.head(hidden)


@pytest.mark.slow
def test_auto_exporter_falls_back_when_the_dynamic_axis_does_not_work(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = _LstmHead().eval()
    output = tmp_path / "lstm.onnx"
    result = ex.export_onnx(module, [torch.randn(2, 5, 8)], output=output,
                            dynamic=[parse_dynamic_axis("0:1=time")])
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    for length in (5, 7, 11):
        x = torch.randn(2, length, 8)
        (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(got, module(x).numpy(), atol=1e-5, rtol=1e-4)
    # torch 2.13's dynamo graph fails at other lengths here, so auto must have fallen back.
    assert result.exporter == "legacy"
    assert any("changes size" in note for note in result.notes)


class _CountsEagerCalls(nn.Module):
    """Two outputs; counts the forwards that ran on real tensors (not under the tracer)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.eager_calls = 0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from torch._subclasses.fake_tensor import FakeTensor

        if not isinstance(x, FakeTensor):
            self.eager_calls += 1
        y = self.proj(x)
        return y, y.sum(-1)


def test_the_dynamo_export_learns_the_outputs_from_its_trace_not_an_extra_forward(
        tmp_path: Path) -> None:
    """Issue 22: the model ran once eagerly before the export only to learn its outputs'
    structure (a whole forward of a vocoder); the trace records it, with the same names."""
    torch.manual_seed(0)
    module = _CountsEagerCalls().eval()
    x = torch.randn(2, 4)
    result = ex.export_onnx(module, [x], output=tmp_path / "two.onnx", exporter="dynamo")
    assert module.eager_calls == 0
    assert result.exporter == "dynamo"
    assert result.output_names == ["output_0", "output_1"]
    session = ort.InferenceSession(str(tmp_path / "two.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["output_0", "output_1"]
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = module(x)
    for array, tensor in zip(got, expected, strict=True):
        np.testing.assert_allclose(array, tensor.numpy(), atol=1e-6)


def test_a_model_that_fails_under_the_exporter_and_eagerly_is_an_input_error(
        tmp_path: Path) -> None:
    class Fails(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("bad input")

    with pytest.raises(InputError, match="the model fails on example inputs .*bad input"):
        ex.export_onnx(Fails(), [torch.randn(2, 4)], output=tmp_path / "f.onnx")
    assert not (tmp_path / "f.onnx").exists()
