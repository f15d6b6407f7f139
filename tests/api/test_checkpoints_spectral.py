"""Spectral norm in checkpoints: inspect lists it, fold folds it with weight norm in one pass
(real models: HiFi-GAN's multi-scale discriminator and a GAN generator, both key styles)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import wnconvert
from tests.spectral_models import APIS, gan_generator, hifigan_discriminator, ulps
from wnconvert.errors import InputError

MODELS = {"hifigan_discriminator": (hifigan_discriminator, lambda: torch.randn(2, 1, 64)),
          "gan_generator": (gan_generator, lambda: torch.randn(3, 8))}


def _sigmas(model: torch.nn.Module) -> dict[str, tuple[int, float]]:
    """(dim, σ in float64) of every spectral-norm site, from the module's own tensors."""
    from torch.nn.utils.spectral_norm import SpectralNorm

    out = {}
    for path, sub in model.named_modules():
        found = [(h.dim, *(getattr(sub, h.name + s) for s in ("_orig", "_u", "_v")))
                 for h in sub._forward_pre_hooks.values() if isinstance(h, SpectralNorm)]
        found += [(p[0].dim, p.original, p[0]._u, p[0]._v)
                  for p in getattr(sub, "parametrizations", {}).values()
                  if type(p[0]).__name__ == "_SpectralNorm"]
        for dim, *tensors in found:
            w, u, v = (t.detach().double().numpy() for t in tensors)
            mat = np.moveaxis(w, dim, 0).reshape(w.shape[dim], -1)
            out[f"{path}.weight"] = (dim, float(u @ mat @ v))
    return out


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_fold_checkpoint_matches_the_module_fold(model_name, api, save_pt, save_st,
                                                 tmp_path) -> None:
    build, batch = MODELS[model_name]
    model = build(api)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sigmas = _sigmas(model)
    x = batch()
    with torch.no_grad():
        expected_out = model(x)
    wnconvert.fold_module(model)  # the module's own fold: float64 rounded once (tests/api)
    folded_module = model.state_dict()

    for path in (save_pt(state), save_st(state)):
        inspection = wnconvert.inspect_checkpoint(path)
        rows = {r["name"]: r for r in inspection.data["spectral_norm"]}
        assert set(rows) == set(sigmas)
        assert inspection.totals["spectral_norm"] == len(sigmas)
        for name, (dim, sigma) in sigmas.items():
            row = rows[name]
            assert row["kind"] == "spectral_norm" and row["style"] == api
            # Square weights too (u/v fit several axes): the stored vectors tell which.
            assert row["dim"] == dim and row["sigma"] == pytest.approx(sigma, rel=1e-12)
        assert any(len(r["dims"]) > 1 for r in rows.values())

        out = tmp_path / f"folded{path.suffix}"
        result = wnconvert.fold_checkpoint(path, out, force=True)
        kinds = {p["name"]: p.get("kind", "weight_norm") for p in result.pairs}
        assert sorted(n for n, k in kinds.items() if k == "spectral_norm") == sorted(sigmas)
        folded = wnconvert.load_checkpoint(out).state_dict
        assert sorted(folded) == sorted(folded_module)
        for key, value in folded_module.items():
            assert torch.equal(folded[key], value), key  # same bits as fold_module
    plain = build(api)
    wnconvert.fold_module(plain)
    plain.load_state_dict(folded, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), expected_out, rtol=1e-5, atol=1e-6)


def _square_with_fresh_vectors() -> dict[str, torch.Tensor]:
    """A square ConvTranspose whose u/v were never iterated (random unit vectors): nothing
    tells whether they belong to axis 0 or 1."""
    torch.manual_seed(3)
    u, v = torch.randn(4), torch.randn(4 * 3)
    return {"up.parametrizations.weight.original": torch.randn(4, 4, 3),
            "up.parametrizations.weight.0._u": u / u.norm(),
            "up.parametrizations.weight.0._v": v / v.norm()}


def test_ambiguous_dim_is_refused_with_a_hint_and_sn_dim_decides(save_pt, tmp_path) -> None:
    state = _square_with_fresh_vectors()
    path = save_pt(state)
    row = wnconvert.inspect_checkpoint(path).data["spectral_norm"][0]
    assert (row["dim"], row["dims"], row["sigma"]) == (None, [0, 1], None)
    with pytest.raises(InputError, match=r"fit axes 0 and 1 .* give sn_dim="):
        wnconvert.fold_checkpoint(path, tmp_path / "o.pt")
    with pytest.raises(InputError, match=r"sn_dim=2 is not one of them"):
        wnconvert.fold_checkpoint(path, tmp_path / "o.pt", sn_dim=2)
    result = wnconvert.fold_checkpoint(path, tmp_path / "o.pt", sn_dim=1)
    assert [(p["name"], p["dim"]) for p in result.pairs] == [("up.weight", 1)]
    module = torch.nn.utils.parametrizations.spectral_norm(torch.nn.ConvTranspose1d(4, 4, 3))
    module.load_state_dict({**{k.removeprefix("up."): t for k, t in state.items()},
                            "bias": torch.zeros(4)})
    folded = wnconvert.load_checkpoint(tmp_path / "o.pt").state_dict["up.weight"]
    w = state["up.parametrizations.weight.original"].double().numpy()
    mat = np.moveaxis(w, 1, 0).reshape(4, -1)
    exact = w / (state["up.parametrizations.weight.0._u"].double().numpy() @ mat
                 @ state["up.parametrizations.weight.0._v"].double().numpy())
    assert ulps(folded.numpy(), exact) <= 0.5
    torch.testing.assert_close(folded, module.eval().weight.detach(), rtol=1e-6, atol=0)


def test_legacy_checkpoint_without_weight_v_keeps_its_stored_weight(save_pt, tmp_path) -> None:
    torch.manual_seed(0)
    weight_orig, weight_u = torch.randn(4, 3), torch.randn(4)
    stored = torch.randn(4, 3)
    path = save_pt({"fc.weight_orig": weight_orig, "fc.weight_u": weight_u,
                    "fc.weight": stored, "fc.bias": torch.zeros(4)})
    result = wnconvert.fold_checkpoint(path, tmp_path / "o.pt")
    assert any("without fc.weight_v" in n and "stored weight" in n for n in result.notes)
    folded = wnconvert.load_checkpoint(tmp_path / "o.pt").state_dict
    assert list(folded) == ["fc.weight", "fc.bias"] and torch.equal(folded["fc.weight"], stored)
    row = wnconvert.inspect_checkpoint(path).data["spectral_norm"][0]
    assert (row["v_key"], row["sigma"]) == (None, None)


def test_decompose_leaves_spectral_norm_alone(save_pt, tmp_path) -> None:
    state = dict(gan_generator("legacy").state_dict())
    result = wnconvert.decompose_checkpoint(save_pt(state), tmp_path / "d.pt",
                                            include=["*.weight"])
    assert {p["name"] for p in result.pairs} == {"bn.weight"}  # u/v are not parameters
    out = wnconvert.load_checkpoint(tmp_path / "d.pt").state_dict
    assert torch.equal(out["fc.weight_u"], state["fc.weight_u"])


def test_inconsistent_spectral_keys_are_refused(save_pt) -> None:
    bad = {"a.weight_orig": torch.ones(2, 3), "a.weight_u": torch.ones(5),
           "a.weight_v": torch.ones(3)}
    with pytest.raises(InputError, match="fit no axis"):
        wnconvert.fold_checkpoint(save_pt(bad))
    both = {"a.weight_orig": torch.ones(2, 3), "a.weight_u": torch.ones(2),
            "a.weight_g": torch.ones(2, 1), "a.weight_v": torch.ones(2, 3)}
    with pytest.raises(InputError, match="inconsistent"):
        wnconvert.fold_checkpoint(save_pt(both, "both.pt"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_spectral_norm_is_rounded_once(dtype, save_st, tmp_path) -> None:
    model = gan_generator("parametrize").to(dtype)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    result = wnconvert.fold_checkpoint(save_st(state), tmp_path / "o.safetensors")
    folded = wnconvert.load_checkpoint(tmp_path / "o.safetensors").state_dict
    for site in (p for p in result.pairs if p["kind"] == "spectral_norm"):
        base = site["name"].replace(".weight", ".parametrizations.weight")
        w, u, v = (state[base + s].double().numpy() for s in (".original", ".0._u", ".0._v"))
        mat = np.moveaxis(w, site["dim"], 0).reshape(w.shape[site["dim"]], -1)
        exact = w / (u @ mat @ v)
        ours = folded[site["name"]]
        assert ours.dtype == dtype
        err = np.abs(ours.double().numpy() - exact)
        # One unit in the last place of the exact value in ``dtype`` (subnormals included).
        bits, smallest = {torch.float16: (10, -24), torch.bfloat16: (7, -133)}[dtype]
        exponent = np.floor(np.log2(np.maximum(np.abs(exact), 2.0 ** -200)))
        ulp = 2.0 ** np.maximum(exponent - bits, smallest)
        assert np.max(err / ulp) <= 0.5, site["name"]  # float64, rounded once
