"""Spectral norm through the command line: inspect lists it, fold folds it (--sn-dim where a
square weight leaves its dim open)."""

from __future__ import annotations

import json

import torch

from tests.spectral_models import hifigan_discriminator


def _square_with_fresh_vectors() -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    u, v = torch.randn(4), torch.randn(12)
    return {"up.weight_orig": torch.randn(4, 4, 3), "up.weight_u": u / u.norm(),
            "up.weight_v": v / v.norm(), "up.bias": torch.zeros(4)}


def test_inspect_lists_spectral_norm_next_to_pairs(cli, assert_ok, save_pt) -> None:
    path = save_pt(dict(hifigan_discriminator("legacy").state_dict()))
    result = assert_ok(cli("inspect", path))
    assert "spectral norm" in result.stdout and "σ" in result.stdout
    assert "discriminators.0.convs.3.weight" in result.stdout
    assert "10 pairs (0 parametrize, 10 legacy); 0 zero-norm rows; 5 spectral norm" in (
        " ".join(result.stdout.split()))
    data = json.loads(assert_ok(cli("inspect", path, "--json")).stdout)
    assert [r["dim"] for r in data["spectral_norm"]] == [0] * 5
    assert all(r["sigma"] > 0 for r in data["spectral_norm"])


def test_fold_folds_both_kinds_in_one_pass(cli, assert_ok, save_pt, tmp_path) -> None:
    path = save_pt(dict(hifigan_discriminator("parametrize").state_dict()))
    out = tmp_path / "plain.safetensors"
    result = assert_ok(cli("fold", path, "-o", out, "--json"))
    summary = json.loads(result.stdout)
    kinds = [p.get("kind", "weight_norm") for p in summary["pairs"]]
    assert (kinds.count("weight_norm"), kinds.count("spectral_norm")) == (10, 5)
    text = assert_ok(cli("fold", path, "-o", tmp_path / "again.pt")).stdout
    assert "spectral norm" in text and "folded 15 parameter(s)" in " ".join(text.split())


def test_ambiguous_dim_is_one_line_naming_sn_dim(cli, assert_ok, assert_input_error, save_pt,
                                                 tmp_path) -> None:
    path = save_pt(_square_with_fresh_vectors())
    out = tmp_path / "o.pt"
    line = assert_input_error(cli("fold", path, "-o", out), path, "up.weight", "--sn-dim")
    assert "fit axes 0 and 1" in line and not out.exists()
    line = assert_input_error(cli("fold", path, "-o", out, "--sn-dim", "2"), "--sn-dim 2")
    summary = json.loads(assert_ok(cli("fold", path, "-o", out, "--sn-dim", "1", "--json")).stdout)
    assert [(p["name"], p["dim"]) for p in summary["pairs"]] == [("up.weight", 1)]


def test_sn_dim_is_refused_where_unused(cli, assert_input_error, save_pt) -> None:
    path = save_pt(_square_with_fresh_vectors())
    assert_input_error(cli("decompose", path, "--sn-dim", "0"), "--sn-dim")
