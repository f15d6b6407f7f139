"""wnconvert.modules: finding weight norm and spectral norm in a live module, and removing it."""

from __future__ import annotations

import torch
from torch import nn

from tests.spectral_models import spectral, weight_normed
from wnconvert import modules


def test_find_sites_sees_both_kinds_in_both_apis_and_what_it_leaves() -> None:
    class Scale(nn.Module):
        def forward(self, x):
            return 3 * x

    other = nn.Linear(2, 2)
    nn.utils.parametrize.register_parametrization(other, "bias", Scale())
    model = nn.Sequential(spectral(nn.Linear(2, 2), "legacy"),
                          spectral(nn.Linear(2, 2), "parametrize"),
                          weight_normed(nn.Linear(2, 2), "legacy"),
                          weight_normed(nn.Linear(2, 2), "parametrize"), other)
    sites, left = modules.find_sites(model)
    assert [(s.name, s.kind, s.style) for s in sites] == [
        ("0.weight", "spectral_norm", "legacy"), ("1.weight", "spectral_norm", "parametrize"),
        ("2.weight", "weight_norm", "legacy"), ("3.weight", "weight_norm", "parametrize")]
    assert [x.name for x in left] == ["4.bias"]
    model.train()
    assert modules.in_training_mode(model) == ["0.weight", "1.weight"]


def test_folded_legacy_spectral_norm_loads_its_own_plain_state_dict() -> None:
    # torch.nn.utils.remove_spectral_norm leaves its load hook behind (stored wrapped, it is not
    # found), and the module then asks for weight_orig/weight_u in every state dict it loads.
    module = spectral(nn.Linear(3, 2), "legacy")
    modules.fold_sites(module)
    module.load_state_dict({"weight": torch.ones(2, 3), "bias": torch.zeros(2)}, strict=True)
    assert torch.equal(module.weight, torch.ones(2, 3))
