"""Graphs exported by PyTorch, under both weight-norm APIs and both exporters.

The dynamo exporter (torch.onnx.export's default) constant-folds a weight-norm chain only when
``v`` has at most 8192 elements (onnxscript's constant-folding input limit); larger layers keep
``ReduceL2 -> Div -> Mul`` and their weights go to external data. The legacy TorchScript
exporter (``dynamo=False``) keeps the chain at every size. The model has one layer of each kind:
a Conv1d just over the limit (dim 0), a Linear with one norm over the whole tensor (dim=None,
also over the limit), and a small Linear the dynamo exporter folds into ``mul_N``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from tests.onnx_graph.builders import initializer, run
from wnconvert import numerics
from wnconvert.onnx_graph import check_file, fold_file, inspect_file

APIS = {"parametrize": nn.utils.parametrizations.weight_norm, "legacy": nn.utils.weight_norm}
CHAIN_LAYERS = ("big.weight", "whole.weight")  # over the dynamo exporter's folding limit


class Net(nn.Module):
    def __init__(self, api: str) -> None:
        super().__init__()
        wn = APIS[api]
        self.big = wn(nn.Conv1d(8, 32, 33, padding=16))  # v: 32*8*33 = 8448 > 8192 elements
        self.whole = wn(nn.Linear(96, 96), dim=None)  # 9216 elements, one norm
        self.small = wn(nn.Linear(96, 4))  # 384 elements: folded by the dynamo exporter
        self.proj = nn.Linear(32, 96)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.small(self.whole(self.proj(self.big(x).mean(-1))))


def state(api: str, params: dict[str, torch.Tensor], weight: str) -> tuple[np.ndarray, ...]:
    layer = weight.removesuffix(".weight")
    if api == "parametrize":
        base = f"{layer}.parametrizations.weight"
        return params[f"{base}.original0"].numpy(), params[f"{base}.original1"].numpy()
    return params[f"{layer}.weight_g"].numpy(), params[f"{layer}.weight_v"].numpy()


@pytest.fixture(scope="module", params=[(api, dynamo) for api in APIS for dynamo in (True, False)],
                ids=lambda p: f"{p[0]}-{'dynamo' if p[1] else 'torchscript'}")
def exported(request, tmp_path_factory):
    api, dynamo = request.param
    folder = tmp_path_factory.mktemp(f"{api}{int(dynamo)}")
    path = folder / "net.onnx"
    with warnings.catch_warnings():
        # The legacy weight_norm API's deprecation, and exporter chatter (torchvision, ...).
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        net = Net(api).eval()
        torch.onnx.export(net, (torch.randn(2, 8, 20),), str(path), dynamo=dynamo,
                          input_names=["x"], output_names=["y"])
    params = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return api, dynamo, path, params


def test_chains_are_found_with_parameter_names(exported):
    api, dynamo, path, _ = exported
    sites = check_file(path).sites
    found = {site.parameter: site.dim for site in sites}
    want = {"big.weight": 0, "whole.weight": None}
    if not dynamo:
        want["small.weight"] = 0  # the TorchScript exporter leaves every chain in place
    assert found == want
    assert all(site.foldable for site in sites)


def test_fold_is_the_checkpoint_fold_and_runs_the_same(exported, tmp_path):
    api, dynamo, path, params = exported
    out = tmp_path / "folded.onnx"
    outcome = fold_file(path, out, force=False)
    names = [layer.name for layer in outcome.result.layers]
    assert names == (list(CHAIN_LAYERS) if dynamo else ["big.weight", "whole.weight",
                                                          "small.weight"])
    for layer in names:
        g, v = state(api, params, layer)
        dim = None if layer == "whole.weight" else 0
        want = numerics.fold(g, v, dim)[0]
        np.testing.assert_array_equal(initializer(out, layer), want)
    assert check_file(out).clean
    for op in ("ReduceL2", "Div"):
        assert op not in outcome.result.ops_after
    assert outcome.external_data == dynamo  # the dynamo exporter writes external data
    x = np.random.default_rng(0).standard_normal((2, 8, 20)).astype(np.float32)
    np.testing.assert_allclose(run(out, {"x": x})[0], run(path, {"x": x})[0], rtol=1e-5,
                               atol=1e-6)
    onnx.checker.check_model(str(out))


def test_inspect_reports_pairs_and_names_lost_by_folding(exported):
    api, dynamo, path, _ = exported
    info = inspect_file(path)
    computed = {pair.parameter: pair.computed_by is not None for pair in info.pairs}
    if dynamo:
        # The exporter folded the small layer into "mul_N": its g/v are gone, but the
        # exporter's metadata still says where it came from.
        assert computed == {"big.weight": True, "whole.weight": True}
        assert [(lost.parameter, lost.shape) for lost in info.lost_names] == [
            ("small.weight", (4, 96))]
        assert lost_is_folded_name(info.lost_names[0].initializer)
    else:
        assert computed == {"big.weight": True, "whole.weight": True, "small.weight": True}
        assert info.lost_names == []
    assert info.external_data == dynamo


def lost_is_folded_name(name: str) -> bool:
    return name.startswith("mul")


@pytest.fixture(scope="module")
def small_export(tmp_path_factory) -> tuple[nn.Module, Path]:
    """One Linear under the limit, exported by dynamo (which folds it into ``mul_N``), shared by
    the tests below: they only read the model and write their outputs elsewhere."""
    torch.manual_seed(0)
    net = nn.Sequential(APIS["parametrize"](nn.Linear(8, 4))).eval()
    path = tmp_path_factory.mktemp("small") / "small.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 8),), str(path), dynamo=True)
    return net, path


def test_small_model_fully_folded_by_the_exporter_is_clean(small_export):
    """Under the limit the dynamo exporter folds everything: check passes, inspect names it."""
    _, path = small_export
    assert check_file(path).clean
    [lost] = inspect_file(path).lost_names
    assert lost.parameter == "0.weight"


def test_fold_gives_exporter_folded_weights_their_names(exported, tmp_path):
    """The dynamo exporter folded the small layer into ``mul_N``: fold names it small.weight."""
    api, dynamo, path, _ = exported
    out = tmp_path / "named.onnx"
    outcome = fold_file(path, out, force=False)
    renamed = {(r.new, r.how) for r in outcome.result.renamed}
    assert renamed == ({("small.weight", "folded_from")} if dynamo else set())
    folded = onnx.load(str(out))
    names = {t.name for t in folded.graph.initializer}
    assert "small.weight" in names and not any(lost_is_folded_name(n) for n in names)
    x = np.random.default_rng(0).standard_normal((2, 8, 20)).astype(np.float32)
    np.testing.assert_allclose(run(out, {"x": x})[0], run(path, {"x": x})[0], rtol=1e-5,
                               atol=1e-6)
    again = fold_file(out, tmp_path / "again.onnx", force=False)
    assert not again.result.changed  # already clean: a pipeline may fold twice


def test_fully_prefolded_model_gets_names_from_metadata_or_reference(small_export, tmp_path):
    """A model the exporter folded completely: fold names its weight (exit 0, not "nothing to
    fold"); without the exporter's metadata, --reference with the g/v checkpoint does."""
    net, path = small_export
    outcome = fold_file(path, tmp_path / "named.onnx", force=False)
    assert [(r.new, r.how) for r in outcome.result.renamed] == [("0.weight", "folded_from")]
    bare = onnx.load(str(path))
    for info in [*bare.graph.value_info, *bare.graph.initializer]:
        del info.metadata_props[:]
    bare_path = tmp_path / "bare.onnx"
    onnx.save(bare, str(bare_path))
    assert not fold_file(bare_path, tmp_path / "bare_out.onnx", force=False).result.changed
    ckpt = tmp_path / "net.pt"
    torch.save(net.state_dict(), ckpt)
    outcome = fold_file(bare_path, tmp_path / "ref_out.onnx", force=False, reference=ckpt)
    [renamed] = outcome.result.renamed
    assert renamed.new == "0.weight" and renamed.how in ("reference", "reference-fold")
