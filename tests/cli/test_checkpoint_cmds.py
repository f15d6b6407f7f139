"""Round trips through the CLI on every layer type weight norm is used with.

State dicts made by ``torch.nn.utils.weight_norm`` (legacy) and
``torch.nn.utils.parametrizations.weight_norm`` (parametrize), saved as .pt and .safetensors:

* ``fold`` output loads with ``strict=True`` into the plain module and gives the same outputs;
* ``decompose --like template.pt`` output loads strictly into the weight-normed module;
* ``restyle`` output loads strictly into the other API's module, tensors bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from tests.checkpoints import read_checkpoint

APIS = ("legacy", "parametrize")
FORMATS = ("pt", "safetensors")


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[], nn.Module]
    example: Callable[[], torch.Tensor]
    name: str = "weight"
    dim: int | None = 0


CASES = [
    Case("linear", lambda: nn.Linear(5, 4), lambda: torch.randn(2, 5)),
    Case("linear-dim-none", lambda: nn.Linear(5, 4), lambda: torch.randn(2, 5), dim=None),
    Case("conv1d", lambda: nn.Conv1d(3, 4, 3), lambda: torch.randn(1, 3, 8)),
    Case("conv2d", lambda: nn.Conv2d(2, 3, 3), lambda: torch.randn(1, 2, 5, 5)),
    Case("conv3d", lambda: nn.Conv3d(2, 3, 2), lambda: torch.randn(1, 2, 3, 3, 3)),
    Case("convtranspose1d", lambda: nn.ConvTranspose1d(3, 2, 4, stride=2),
         lambda: torch.randn(1, 3, 5)),
    Case("convtranspose1d-dim1", lambda: nn.ConvTranspose1d(3, 2, 4, stride=2),
         lambda: torch.randn(1, 3, 5), dim=1),
    Case("convtranspose2d", lambda: nn.ConvTranspose2d(3, 2, 3), lambda: torch.randn(1, 3, 4, 4)),
    Case("lstm", lambda: nn.LSTM(4, 3), lambda: torch.randn(5, 1, 4), name="weight_hh_l0"),
    Case("embedding", lambda: nn.Embedding(10, 4), lambda: torch.tensor([[1, 3, 9, 0, 3]])),
]


def weight_normed(case: Case, api: str, seed: int = 0) -> nn.Module:
    """The case's module with weight norm applied and ``g`` moved away from ``||v||``."""
    torch.manual_seed(seed)
    module = case.build()
    if api == "legacy":
        module = nn.utils.weight_norm(module, name=case.name, dim=case.dim)
    else:
        module = nn.utils.parametrizations.weight_norm(module, name=case.name, dim=case.dim)
    with torch.no_grad():
        for key, param in module.named_parameters():
            if key.endswith(("_g", "original0")):
                param.mul_(torch.linspace(0.5, 1.5, param.numel()).reshape(param.shape))
    return module.eval()


def plain(case: Case, seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return case.build().eval()


def forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = module(x)
    return out[0] if isinstance(out, tuple) else out


def save(state_dict: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.detach().contiguous() for k, v in state_dict.items()}, str(path))
    else:
        torch.save(state_dict, path)
    return path


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    # float32 forward; the folded weight is computed in float64 and rounded once.
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-5)


CASE_PARAMS = [pytest.param(c, id=c.id) for c in CASES]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_fold_round_trip(case, api, fmt, tmp_path, cli, assert_ok, snapshot):
    wn = weight_normed(case, api)
    source = save(wn.state_dict(), tmp_path / f"wn.{fmt}")
    before = snapshot(tmp_path)

    result = assert_ok(cli("fold", source))

    output = tmp_path / f"wn.folded.{fmt}"
    after = snapshot(tmp_path)
    assert set(after) == {*before, output.name}  # the output and nothing else (no temp files)
    assert {k: after[k] for k in before} == before  # input untouched
    assert output.name in result.stdout
    target = plain(case)
    target.load_state_dict(read_checkpoint(output), strict=True)
    x = case.example()
    close(forward(target, x), forward(wn, x))
    close(getattr(target, case.name), getattr(wn, case.name).detach())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_decompose_like_round_trip(case, api, fmt, tmp_path, cli, assert_ok, snapshot):
    template = tmp_path / "template.pt"
    torch.save(weight_normed(case, api, seed=5).state_dict(), template)
    source_module = plain(case)
    source = save(source_module.state_dict(), tmp_path / f"plain.{fmt}")
    before = snapshot(tmp_path)

    assert_ok(cli("decompose", source, "--like", template))

    output = tmp_path / f"plain.decomposed.{fmt}"
    after = snapshot(tmp_path)
    assert set(after) == {*before, output.name}
    assert {k: after[k] for k in before} == before
    state = read_checkpoint(output)
    target = weight_normed(case, api, seed=9)
    target.load_state_dict(state, strict=True)
    x = case.example()
    close(forward(target, x), forward(source_module, x))
    # v is the weight itself, bit for bit.
    v_key = f"{case.name}_v" if api == "legacy" else f"parametrizations.{case.name}.original1"
    assert torch.equal(state[v_key], getattr(source_module, case.name).detach())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_restyle_round_trip(case, api, fmt, tmp_path, cli, assert_ok, snapshot):
    other = "parametrize" if api == "legacy" else "legacy"
    wn = weight_normed(case, api)
    source = save(wn.state_dict(), tmp_path / f"wn.{fmt}")
    before = snapshot(tmp_path)

    assert_ok(cli("restyle", source, "--style", other))

    output = tmp_path / f"wn.{other}.{fmt}"
    after = snapshot(tmp_path)
    assert set(after) == {*before, output.name}
    assert {k: after[k] for k in before} == before
    state = read_checkpoint(output)
    target = weight_normed(case, other, seed=9)
    target.load_state_dict(state, strict=True)
    x = case.example()
    torch.testing.assert_close(forward(target, x), forward(wn, x), atol=0, rtol=0)
    # Every tensor is copied bit for bit, only the names change.
    names = {"legacy": (f"{case.name}_g", f"{case.name}_v"),
             "parametrize": (f"parametrizations.{case.name}.original0",
                             f"parametrizations.{case.name}.original1")}
    rename = dict(zip(names[api], names[other], strict=True))
    original = wn.state_dict()
    assert set(state) == {rename.get(k, k) for k in original}
    for key, tensor in original.items():
        got = state[rename.get(key, key)]
        assert got.dtype == tensor.dtype
        assert got.shape == tensor.shape
        assert torch.equal(got, tensor)
