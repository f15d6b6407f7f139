"""wnconvert.fold_module: every weight norm and spectral norm of a live module, folded in place."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import wnconvert
from tests.spectral_models import APIS, gan_generator, hifigan_discriminator, spectral, ulps
from tests.spectral_models import weight_normed as wn
from wnconvert.errors import InputError

MODELS = {"hifigan_discriminator": (hifigan_discriminator, lambda: torch.randn(2, 1, 64)),
          "gan_generator": (gan_generator, lambda: torch.randn(3, 8))}


def _reparametrized(model: nn.Module):
    """(name, kind, float64 ground truth, PyTorch's own eval weight) of every site, computed
    here from the module's tensors, independently of wnconvert."""
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    def f64(t):
        return t.detach().double().numpy()

    out = []
    for path, sub in model.named_modules():
        for hook in sub._forward_pre_hooks.values():
            name = f"{path}.{hook.name}"
            if isinstance(hook, SpectralNorm):
                w, u, v = (f64(getattr(sub, hook.name + s)) for s in ("_orig", "_u", "_v"))
                mat = np.moveaxis(w, hook.dim, 0).reshape(w.shape[hook.dim], -1)
                torch_w = hook.compute_weight(sub, do_power_iteration=False)
                out.append((name, "spectral_norm", w / (u @ mat @ v), torch_w))
            elif isinstance(hook, WeightNorm):
                g, v = f64(getattr(sub, hook.name + "_g")), f64(getattr(sub, hook.name + "_v"))
                norm = np.sqrt((v * v).reshape(v.shape[0], -1).sum(1)).reshape(g.shape)
                out.append((name, "weight_norm", g * v / norm, hook.compute_weight(sub)))
        if hasattr(sub, "parametrizations"):
            for pname, plist in sub.parametrizations.items():
                name = f"{path}.{pname}"
                if type(plist[0]).__name__ == "_SpectralNorm":
                    sn = plist[0]
                    w, u, v = f64(plist.original), f64(sn._u), f64(sn._v)
                    mat = np.moveaxis(w, sn.dim, 0).reshape(w.shape[sn.dim], -1)
                    out.append((name, "spectral_norm", w / (u @ mat @ v), getattr(sub, pname)))
                else:
                    g, v = f64(plist.original0), f64(plist.original1)
                    norm = np.sqrt((v * v).reshape(v.shape[0], -1).sum(1)).reshape(g.shape)
                    out.append((name, "weight_norm", g * v / norm, getattr(sub, pname)))
    return out


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_real_models_fold_to_float64_rounded_once(model_name, api) -> None:
    build, batch = MODELS[model_name]
    model = build(api)
    torch.manual_seed(1)
    x = batch()
    with torch.no_grad():
        expected_out = model(x)
        sites = _reparametrized(model)
    assert {kind for _, kind, *_ in sites} == (
        {"spectral_norm", "weight_norm"} if model_name == "hifigan_discriminator"
        else {"spectral_norm"})

    result = wnconvert.fold_module(model)

    assert sorted(f.name for f in result.folded) == sorted(name for name, *_ in sites)
    assert not result.left and not result.notes
    state = model.state_dict()
    assert not [k for k in state if k.endswith(("_orig", "_u", "_v", "_g"))
                or "parametrizations" in k]
    for name, _, exact, torch_w in sites:
        ours = state[name].numpy()
        assert ulps(ours, exact) <= 0.5, name  # float64, rounded once
        assert ulps(ours, exact) <= ulps(torch_w.detach().numpy(), exact) + 0.5, name
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected_out, rtol=1e-5, atol=1e-6)
    # PyTorch's remove_spectral_norm leaves a load hook that wants weight_orig/weight_u back.
    model.load_state_dict(model.state_dict(), strict=True)
    by_name = {f.name: f for f in result.folded}
    if model_name == "gan_generator":
        assert (by_name["up1.weight"].dim, by_name["fc.weight"].dim) == (1, 0)
        assert by_name["up1.weight"].sigma is not None and by_name["up1.weight"].sigma > 0
        assert by_name["up2.weight"].to_dict() == {
            "name": "up2.weight", "kind": "spectral_norm", "style": api, "dim": 1,
            "shape": [8, 8, 3, 3], "dtype": "float32", "sigma": by_name["up2.weight"].sigma}


def test_mixed_apis_any_name_dim_none_transposed_and_1d() -> None:
    pw = nn.utils.parametrizations
    lstm = nn.LSTM(3, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        legacy_none = nn.utils.weight_norm(nn.Linear(3, 5), dim=None)
        legacy_sn_bias = nn.utils.spectral_norm(nn.Linear(3, 5), name="bias")
    model = nn.Sequential(
        pw.weight_norm(lstm, name="weight_hh_l0"),
        nn.Sequential(wn(nn.ConvTranspose1d(4, 6, 3), "legacy"), legacy_none),
        spectral(nn.ConvTranspose1d(6, 6, 3), "parametrize"),
        pw.spectral_norm(nn.Linear(3, 5), name="bias"),  # 1-D: no u/v, W / ‖W‖
        legacy_sn_bias,  # 1-D with the legacy hook: u of length 5, v of length 1
        pw.weight_norm(nn.Linear(3, 3), dim=None),
    ).eval()
    bias = model[3].parametrizations.bias.original.detach().double().numpy()
    result = wnconvert.fold_module(model)
    got = {f.name: (f.kind, f.style, f.dim) for f in result.folded}
    assert got == {
        "0.weight_hh_l0": ("weight_norm", "parametrize", 0),
        "1.0.weight": ("weight_norm", "legacy", 0),
        "1.1.weight": ("weight_norm", "legacy", None),
        "2.weight": ("spectral_norm", "parametrize", 1),
        "3.bias": ("spectral_norm", "parametrize", 0),
        "4.bias": ("spectral_norm", "legacy", 0),
        "5.weight": ("weight_norm", "parametrize", None),
    }
    assert ulps(model[3].bias.detach().numpy(), bias / np.linalg.norm(bias)) <= 0.5
    assert not wnconvert.fold_module(model).folded  # nothing left
    assert all(isinstance(p, nn.Parameter) for p in model.parameters())


def test_training_mode_folds_as_eval_and_says_so() -> None:
    model = spectral(nn.Linear(4, 4), "parametrize")
    model.train()
    sn = model.parametrizations.weight[0]
    w, u, v = (t.detach().double().numpy()
               for t in (model.parametrizations.weight.original, sn._u, sn._v))
    result = wnconvert.fold_module(model)
    # From the stored u/v: a power iteration (what the next training call runs) would move them.
    assert ulps(model.weight.detach().numpy(), w / (u @ w @ v)) <= 0.5
    assert "training mode" in result.notes[0] and "no power iteration" in result.notes[0]
    assert result.to_dict()["notes"] == result.notes


def test_unknown_parametrizations_are_left_and_reported() -> None:
    class Double(nn.Module):
        def forward(self, x):
            return 2 * x

    plain = nn.Linear(3, 3)
    nn.utils.parametrize.register_parametrization(plain, "weight", Double())
    chained = nn.utils.parametrizations.spectral_norm(nn.Linear(3, 3))
    nn.utils.parametrize.register_parametrization(chained, "weight", Double())
    model = nn.Sequential(plain, chained, wn(nn.Linear(3, 3), "parametrize"))
    result = wnconvert.fold_module(model)
    assert [f.name for f in result.folded] == ["2.weight"]
    assert [(x.name, x.what.split(" (")[0]) for x in result.left] == [
        ("0.weight", "parametrization Double, neither weight norm nor spectral norm"),
        ("1.weight", "a chain of 2 parametrizations")]
    assert "0.parametrizations.weight.original" in model.state_dict()
    assert any("left in place" in n for n in result.notes)


def test_refuses_what_is_not_a_module_or_has_no_values() -> None:
    with pytest.raises(InputError, match="torch.nn.Module"):
        wnconvert.fold_module({"weight": torch.ones(2)})  # type: ignore[arg-type]
    with torch.device("meta"):
        model = nn.utils.parametrizations.weight_norm(nn.Linear(3, 3))
    with pytest.raises(InputError, match="meta device"):
        wnconvert.fold_module(model)
    assert nn.utils.parametrize.is_parametrized(model)  # untouched


def test_bfloat16_module_is_rounded_once() -> None:
    model = wn(nn.Conv1d(3, 4, 2), "parametrize").to(torch.bfloat16)
    plist = model.parametrizations.weight
    g, v = plist.original0.double().detach().numpy(), plist.original1.double().detach().numpy()
    exact = g * v / np.sqrt((v * v).sum(axis=(1, 2), keepdims=True))
    wnconvert.fold_module(model)
    assert model.weight.dtype == torch.bfloat16
    ours = model.weight.detach().float().numpy()
    spacing = 2.0 ** (np.floor(np.log2(np.abs(exact))) - 7)
    assert np.max(np.abs(ours - exact) / spacing) <= 0.5
