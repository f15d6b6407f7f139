"""Spectral norm in graphs PyTorch exports (issue 19 §3), under both spectral-norm APIs.

Models are trained a few steps (u and v are not their initial values) and exported in eval
mode, as users do. The dynamo exporter constant-folds a chain only when the weight has at most
8192 elements (onnxscript's folding limit), so the net has three layers over it: a Conv1d
(dim 0), a ConvTranspose1d (dim 1: ``Transpose`` before the ``Reshape``) and a Linear; the
small Linear under the limit arrives folded. The TorchScript exporter keeps every chain, but
only for the legacy hook: it cannot export ``torch.nn.utils.parametrizations.spectral_norm``
(``aten::vdot`` is not supported), so that combination is not here.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from tests.onnx_graph.builders import initializer, run
from tests.test_numerics import ulp_distance
from wnconvert import numerics
from wnconvert.api import check_failure
from wnconvert.onnx_graph import check_file, fold_file

APIS = {"parametrize": nn.utils.parametrizations.spectral_norm, "legacy": nn.utils.spectral_norm}
DIMS = {"big.weight": 0, "up.weight": 1, "whole.weight": 0, "small.weight": 0}


class Net(nn.Module):
    def __init__(self, api: str) -> None:
        super().__init__()
        sn = APIS[api]
        self.big = sn(nn.Conv1d(8, 32, 33, padding=16))  # 8448 elements > 8192
        self.up = sn(nn.ConvTranspose1d(32, 8, 33, padding=16))  # spectral norm on dim 1
        self.whole = sn(nn.Linear(96, 96))  # 9216 elements
        self.small = sn(nn.Linear(96, 4))  # 384 elements: folded by the dynamo exporter
        self.proj = nn.Linear(8, 96)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.small(self.whole(self.proj(self.up(self.big(x)).mean(-1))))


def sn_state(api: str, params: dict[str, torch.Tensor], weight: str) -> tuple[np.ndarray, ...]:
    layer = weight.removesuffix(".weight")
    if api == "parametrize":
        base = f"{layer}.parametrizations.weight"
        keys = (f"{base}.original", f"{base}.0._u", f"{base}.0._v")
    else:
        keys = (f"{layer}.weight_orig", f"{layer}.weight_u", f"{layer}.weight_v")
    return tuple(params[key].numpy() for key in keys)


@pytest.fixture(scope="module",
                params=[("parametrize", True), ("legacy", True), ("legacy", False)],
                ids=lambda p: f"{p[0]}-{'dynamo' if p[1] else 'torchscript'}")
def exported(request, tmp_path_factory):
    api, dynamo = request.param
    path = tmp_path_factory.mktemp(f"sn{api}{int(dynamo)}") / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter (torchvision, ...)
        torch.manual_seed(0)
        net = Net(api)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        for _ in range(3):  # training mode: each forward runs a power iteration on u and v
            optimizer.zero_grad()
            net(torch.randn(2, 8, 20)).square().mean().backward()
            optimizer.step()
        net.eval()
        torch.onnx.export(net, (torch.randn(2, 8, 20),), str(path), dynamo=dynamo,
                          input_names=["x"], output_names=["y"])
    with torch.no_grad():
        net(torch.randn(1, 8, 20))  # the legacy hook sets .weight on a forward
        eval_weights = {name: getattr(net, name.removesuffix(".weight")).weight.numpy().copy()
                        for name in DIMS}
    params = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return api, dynamo, path, params, eval_weights


def chain_layers(dynamo: bool) -> list[str]:
    return ["big.weight", "up.weight", "whole.weight"] + ([] if dynamo else ["small.weight"])


def test_u_and_v_are_trained(exported):
    api, _, _, params, _ = exported
    torch.manual_seed(0)
    fresh = {k: v for k, v in Net(api).state_dict().items()}
    for name in DIMS:
        _, u, _ = sn_state(api, params, name)
        assert not np.array_equal(u, sn_state(api, fresh, name)[1])


def test_check_reports_spectral_norm_with_parameter_names(exported):
    _, dynamo, path, _, _ = exported
    result = check_file(path)
    assert {site.parameter: (site.kind, site.dim) for site in result.sites} == {
        name: ("spectral_norm", DIMS[name]) for name in chain_layers(dynamo)}
    assert all(site.foldable for site in result.sites)
    failure = check_failure(result)
    assert failure is not None and "spectral norm at run time" in str(failure)


def test_fold_is_pytorchs_eval_weight_in_float64_rounded_once(exported, tmp_path):
    api, dynamo, path, params, eval_weights = exported
    out = tmp_path / "folded.onnx"
    outcome = fold_file(path, out, force=False)
    assert [layer.name for layer in outcome.result.layers] == chain_layers(dynamo)
    for name in chain_layers(dynamo):
        weight, u, v = sn_state(api, params, name)
        got = initializer(out, name)
        np.testing.assert_array_equal(got, numerics.spectral_fold(weight, u, v, DIMS[name])[0])
        truth = weight.astype(np.float64) / numerics.spectral_sigma(weight, u, v, DIMS[name])
        assert np.all(np.abs(got - truth) <= np.abs(np.spacing(got)) / 2)  # rounded once
        # PyTorch rounds σ to float32 (a dot product of a matrix-vector product) and then
        # divides: its eval weight is a few ulp off float64 (3 at most here, 1.5 on average
        # for the 4x96 Linear); ours is the float64 result rounded once.
        assert ulp_distance(got, eval_weights[name]).max() <= 4
    assert check_file(out).clean
    for op in ("MatMul", "Div", "Transpose"):
        assert op not in outcome.result.ops_after
    x = np.random.default_rng(0).standard_normal((2, 8, 20)).astype(np.float32)
    np.testing.assert_allclose(run(out, {"x": x})[0], run(path, {"x": x})[0], rtol=1e-5,
                               atol=1e-6)
    onnx.checker.check_model(str(out))


def test_fold_through_the_cli_verifies_on_onnx_runtime(exported, cli, assert_ok, tmp_path):
    _, dynamo, path, _, _ = exported
    out = tmp_path / "net.clean.onnx"
    result = assert_ok(cli("fold", path, "-o", out))
    assert "verification PASSED" in result.stdout
    assert f"folded {len(chain_layers(dynamo))} spectral-norm computation(s)" in result.stdout
    assert_ok(cli("check", out))
    dirty = cli("check", path)
    assert dirty.exit_code == 1 and "spectral norm at run time: up.weight" in dirty.stdout
