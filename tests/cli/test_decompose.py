"""``wnconvert decompose``: what it picks by default, --dim, --include/--exclude, --style,
--like, and its input errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tests.checkpoints import read_pt


def mixed_plain() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "fc.weight": torch.randn(3, 4),  # picked
        "fc.bias": torch.randn(3),
        "conv.weight": torch.randn(4, 2, 3),  # picked
        "norm.weight": torch.randn(4),  # rank 1: skipped
        "emb.weight": torch.randn(6, 4).half(),  # picked, stays float16
        "ids.weight": torch.ones(2, 2, dtype=torch.int64),  # not floating: skipped
        "rnn.weight_hh_l0": torch.randn(8, 2),  # does not end in "weight": skipped
        "done.weight_g": torch.ones(2, 1),  # already a pair: left alone
        "done.weight_v": torch.randn(2, 5),
    }


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    path = tmp_path / "m.pt"
    torch.save(mixed_plain(), path)
    return path


PICKED = ("fc.weight", "conv.weight", "emb.weight")


def g_of(state, key, style="parametrize"):
    module, _, name = key.rpartition(".")
    if style == "legacy":
        return state[f"{key}_g"], state[f"{key}_v"]
    return (state[f"{module}.parametrizations.{name}.original0"],
            state[f"{module}.parametrizations.{name}.original1"])


def test_decompose_default_selection(mixed, cli, assert_ok, snapshot, tmp_path):
    before = snapshot(tmp_path)
    result = assert_ok(cli("decompose", mixed))
    out_path = tmp_path / "m.decomposed.pt"
    after = snapshot(tmp_path)
    assert set(after) == {*before, out_path.name}
    assert after[mixed.name] == before[mixed.name]

    # It reports what it picked, with dim 0 and the parametrize style.
    for key in PICKED:
        assert key in result.stdout
    for key in ("norm.weight", "ids.weight", "rnn.weight_hh_l0", "fc.bias"):
        assert key not in result.stdout
    assert "decomposed 3 pair(s)" in result.stdout
    assert "parametrize" in result.stdout

    state = mixed_plain()
    out = read_pt(out_path)
    expected_keys = set(state) - set(PICKED)
    for key in PICKED:
        module, _, name = key.rpartition(".")
        expected_keys |= {f"{module}.parametrizations.{name}.original0",
                          f"{module}.parametrizations.{name}.original1"}
    assert set(out) == expected_keys
    for key in PICKED:
        g, v = g_of(out, key)
        w = state[key]
        assert torch.equal(v, w)  # v is the weight, bit for bit
        assert v.dtype == g.dtype == w.dtype
        assert g.shape == (w.shape[0],) + (1,) * (w.dim() - 1)  # dim 0
        norms = w.double().flatten(1).norm(dim=1).to(w.dtype).reshape(g.shape)
        assert torch.equal(g, norms)
    for key in ("norm.weight", "ids.weight", "rnn.weight_hh_l0", "done.weight_g",
                "done.weight_v", "fc.bias"):
        assert torch.equal(out[key], state[key])


def test_decompose_json_reports_pairs(mixed, cli, assert_ok):
    result = assert_ok(cli("decompose", mixed, "--json"))
    assert result.stderr == ""
    summary = json.loads(result.stdout)
    assert summary["action"] == "decompose"
    assert {p["name"] for p in summary["pairs"]} == set(PICKED)
    assert {p["dim"] for p in summary["pairs"]} == {0}
    assert {p["style"] for p in summary["pairs"]} == {"parametrize"}


def test_decompose_quiet_prints_nothing(mixed, cli, assert_ok, tmp_path):
    result = assert_ok(cli("decompose", mixed, "-q"))
    assert result.stdout == "" and result.stderr == ""
    assert (tmp_path / "m.decomposed.pt").exists()


def test_decompose_dim_none(mixed, cli, assert_ok, tmp_path):
    result = assert_ok(cli("decompose", mixed, "--dim", "none", "--json"))
    assert {p["dim"] for p in json.loads(result.stdout)["pairs"]} == {None}
    out = read_pt(tmp_path / "m.decomposed.pt")
    g, v = g_of(out, "conv.weight")
    assert g.shape == ()
    w = mixed_plain()["conv.weight"]
    assert torch.equal(g, w.double().norm().float())
    # ... and the result folds back (a 1-element g of rank 1 would not fit v).
    assert_ok(cli("fold", tmp_path / "m.decomposed.pt"))


@pytest.mark.parametrize("dim, axis", [("1", 1), ("2", 2)])
def test_decompose_other_dims(dim, axis, tmp_path, cli, assert_ok):
    source = tmp_path / "c.pt"
    w = torch.randn(4, 2, 3)
    torch.save({"conv.weight": w}, source)
    assert_ok(cli("decompose", source, "--dim", dim))
    g, v = g_of(read_pt(tmp_path / "c.decomposed.pt"), "conv.weight")
    expected_shape = [1, 1, 1]
    expected_shape[axis] = w.shape[axis]
    assert list(g.shape) == expected_shape
    # The result is what torch's own weight norm would store for that dim.
    conv = nn.Conv1d(2, 4, 3, bias=False)
    conv.load_state_dict({"weight": w})
    torch.nn.utils.parametrizations.weight_norm(conv, dim=axis)
    torch.testing.assert_close(g, conv.parametrizations.weight.original0.detach())


def test_decompose_include_exclude(mixed, cli, assert_ok, tmp_path):
    result = assert_ok(cli("decompose", mixed, "--include", "rnn.*", "--include", "*.weight",
                           "--exclude", "emb.*", "--exclude", "norm.*", "--json"))
    names = {p["name"] for p in json.loads(result.stdout)["pairs"]}
    # --include replaces the default (rank >= 2 is no longer required); ints are never picked.
    assert names == {"rnn.weight_hh_l0", "fc.weight", "conv.weight"}
    out = read_pt(tmp_path / "m.decomposed.pt")
    assert "emb.weight" in out and "norm.weight" in out and "ids.weight" in out


def test_decompose_legacy_style(mixed, cli, assert_ok, tmp_path):
    assert_ok(cli("decompose", mixed, "--style", "legacy"))
    out = read_pt(tmp_path / "m.decomposed.pt")
    for key in PICKED:
        g, v = g_of(out, key, "legacy")
        assert torch.equal(v, mixed_plain()[key])
    assert not [k for k in out if "parametrizations" in k]


def test_decompose_then_fold_gives_back_the_weights(mixed, cli, assert_ok, tmp_path):
    assert_ok(cli("decompose", mixed))
    assert_ok(cli("fold", tmp_path / "m.decomposed.pt"))
    out = read_pt(tmp_path / "m.decomposed.folded.pt")
    state = mixed_plain()
    # The pair that was in the checkpoint all along is folded too.
    assert set(out) == (set(state) - {"done.weight_g", "done.weight_v"}) | {"done.weight"}
    for key in ("fc.weight", "conv.weight"):
        torch.testing.assert_close(out[key], state[key], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out["emb.weight"], state["emb.weight"])


def test_decompose_shipped_plain_like_shipped_template(shipped, cli, assert_ok, tmp_path,
                                                       fixture_models):
    source = shipped("tiny_hifigan_plain.pt")
    template = shipped("tiny_hifigan_template.pt")
    output = tmp_path / "wn.safetensors"
    assert_ok(cli("decompose", source, "--like", template, "-o", output))
    plain_model = fixture_models.build_generator("none")
    plain_model.load_state_dict(read_pt(source), strict=True)
    model = fixture_models.build_generator("parametrize", seed=7)
    model.load_state_dict(load_file(str(output)), strict=True)
    mel = torch.randn(1, 16, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(mel), plain_model(mel), atol=1e-6, rtol=1e-5)


def test_decompose_like_safetensors_template_legacy_keys(shipped, cli, assert_ok, tmp_path,
                                                         fixture_models):
    source = shipped("tiny_hifigan_plain.pt")
    template = tmp_path / "legacy_template.safetensors"
    save_file(fixture_models.build_generator("legacy").state_dict(), str(template))
    assert_ok(cli("decompose", source, "--like", template))
    model = fixture_models.build_generator("legacy", seed=7)
    model.load_state_dict(read_pt(tmp_path / "tiny_hifigan_plain.decomposed.pt"), strict=True)


def test_decompose_like_wrong_architecture(tmp_path, cli, assert_input_error, snapshot):
    source = tmp_path / "plain.pt"
    torch.save(nn.Linear(4, 3).state_dict(), source)
    template = tmp_path / "template.pt"
    torch.save(nn.utils.parametrizations.weight_norm(nn.Linear(5, 3)).state_dict(), template)
    before = snapshot(tmp_path)
    line = assert_input_error(cli("decompose", source, "--like", template), source)
    assert "template" in line
    assert snapshot(tmp_path) == before


def test_decompose_like_missing_template(tmp_path, cli, assert_input_error):
    source = tmp_path / "plain.pt"
    torch.save(nn.Linear(4, 3).state_dict(), source)
    missing = tmp_path / "nope.pt"
    assert_input_error(cli("decompose", source, "--like", missing), missing)


def test_decompose_nothing_to_pick(tmp_path, cli, assert_input_error, snapshot):
    source = tmp_path / "b.pt"
    torch.save({"bias": torch.zeros(3)}, source)
    before = snapshot(tmp_path)
    line = assert_input_error(cli("decompose", source), source)
    assert "--include" in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("dim", ["abc", "1.5", ""])
def test_decompose_bad_dim_text(dim, mixed, cli, assert_input_error, snapshot, tmp_path):
    before = snapshot(tmp_path)
    line = assert_input_error(cli("decompose", mixed, "--dim", dim), "--dim")
    # A usage mistake, not an internal error: no "unexpected ... report it".
    assert "unexpected" not in line and "report it" not in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("dim", ["7", "-1"])
def test_decompose_dim_out_of_range_or_negative(dim, mixed, cli, assert_input_error, snapshot,
                                                tmp_path):
    # -1 is ambiguous: PyTorch's weight_norm(dim=-1) means the whole tensor, not the last axis.
    before = snapshot(tmp_path)
    assert_input_error(cli("decompose", mixed, "--dim", dim), f"--dim {dim}")
    assert snapshot(tmp_path) == before


def test_decompose_zero_norm_row_warns(tmp_path, cli, assert_ok):
    w = torch.randn(3, 4)
    w[2] = 0
    source = tmp_path / "z.pt"
    torch.save({"lin.weight": w}, source)
    result = assert_ok(cli("decompose", source))
    assert "zero norm" in result.stderr and "lin.weight" in result.stderr
    g, _ = g_of(read_pt(tmp_path / "z.decomposed.pt"), "lin.weight")
    assert g[2].item() == 0


def test_decompose_container_keeps_other_entries(tmp_path, cli, assert_ok):
    source = tmp_path / "ckpt.pt"
    torch.save({"model": {"fc.weight": torch.randn(3, 4)}, "steps": 10, "epoch": 2}, source)
    assert_ok(cli("decompose", source))
    out = read_pt(tmp_path / "ckpt.decomposed.pt")
    assert (out["steps"], out["epoch"]) == (10, 2)
    assert set(out["model"]) == {"fc.parametrizations.weight.original0",
                                 "fc.parametrizations.weight.original1"}


@pytest.mark.parametrize("style", ["Parametrize", "weight_norm"])
def test_decompose_unknown_style(style, mixed, cli, assert_input_error, snapshot, tmp_path):
    before = snapshot(tmp_path)
    assert_input_error(cli("decompose", mixed, "--style", style), "--style")
    assert snapshot(tmp_path) == before


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_decompose_like_template_that_would_run_code(mixed, tmp_path, cli, assert_input_error,
                                                     snapshot):
    marker = tmp_path / "marker" / "PWNED"
    marker.parent.mkdir()
    template = tmp_path / "template.pt"
    torch.save({"fc.weight_g": torch.ones(3, 1), "evil": _RunsCode(marker)}, template)
    before = snapshot(tmp_path)
    assert_input_error(cli("decompose", mixed, "--like", template), template)
    assert not marker.exists(), "code from the template ran"
    assert snapshot(tmp_path) == before
