"""``wnconvert restyle``: renames between legacy (_g/_v) and parametrize (original0/1) keys,
tensors bit for bit, containers and safetensors metadata kept."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.checkpoints import read_pt


def test_restyle_hifigan_container_to_parametrize(shipped, cli, assert_ok, tmp_path,
                                                  fixture_models, snapshot):
    source = shipped("tiny_hifigan_legacy.pt")
    before = snapshot(tmp_path)
    result = assert_ok(cli("restyle", source, "--style", "parametrize"))
    output = tmp_path / "tiny_hifigan_legacy.parametrize.pt"
    after = snapshot(tmp_path)
    assert set(after) == {*before, output.name}
    assert after[source.name] == before[source.name]
    assert output.name in result.stdout
    assert "restyled 8 pair(s)" in result.stdout

    original = read_pt(source)
    out = read_pt(output)
    assert (out["steps"], out["epoch"]) == (12500, 7)
    model = fixture_models.build_generator("parametrize", seed=4)
    model.load_state_dict(out["generator"], strict=True)
    reference = fixture_models.build_generator("legacy", seed=5)
    reference.load_state_dict(original["generator"], strict=True)
    mel = torch.randn(1, 16, 7)
    with torch.no_grad():
        assert torch.equal(model(mel), reference(mel))


def test_restyle_safetensors_is_byte_identical_and_keeps_metadata(shipped, cli, assert_ok,
                                                                  tmp_path):
    source = shipped("tiny_hifigan.safetensors")
    assert_ok(cli("restyle", source, "--style", "legacy"))
    output = tmp_path / "tiny_hifigan.legacy.safetensors"
    with safe_open(str(source), framework="pt") as f:
        meta_in = f.metadata()
    with safe_open(str(output), framework="pt") as f:
        meta_out = f.metadata()
    assert meta_out == meta_in == {"format": "pt", "source": "wnconvert fixtures"}
    before, after = load_file(str(source)), load_file(str(output))
    rename = {}
    for key in before:
        new = key.replace(".parametrizations.weight.original0", ".weight_g")
        new = new.replace(".parametrizations.weight.original1", ".weight_v")
        rename[key] = new
    assert set(after) == set(rename.values())
    for key, tensor in before.items():
        got = after[rename[key]]
        assert got.dtype == tensor.dtype
        assert got.numpy().tobytes() == tensor.numpy().tobytes()


def test_restyle_back_and_forth_is_identity(shipped, cli, assert_ok, tmp_path):
    source = shipped("tiny_hifigan_parametrize.pt")
    assert_ok(cli("restyle", source, "--style", "legacy"))
    legacy = tmp_path / "tiny_hifigan_parametrize.legacy.pt"
    assert_ok(cli("restyle", legacy, "--style", "parametrize", "-o", tmp_path / "back.pt"))
    a, b = read_pt(source), read_pt(tmp_path / "back.pt")
    assert list(a) == list(b)  # same keys in the same order
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_restyle_keeps_half_dtypes(half, tmp_path, cli, assert_ok):
    source = tmp_path / "h.pt"
    state = {"l.weight_g": torch.rand(2, 1).to(half), "l.weight_v": torch.randn(2, 3).to(half)}
    torch.save(state, source)
    assert_ok(cli("restyle", source, "--style", "parametrize", "--to", "safetensors"))
    out = load_file(str(tmp_path / "h.parametrize.safetensors"))
    assert out["l.parametrizations.weight.original0"].dtype == half
    assert torch.equal(out["l.parametrizations.weight.original1"], state["l.weight_v"])


def test_restyle_json_summary(shipped, cli, assert_ok):
    source = shipped("tiny_hifigan_parametrize.pt")
    result = assert_ok(cli("restyle", source, "--style", "legacy", "--json"))
    assert result.stderr == ""
    summary = json.loads(result.stdout)
    assert summary["action"] == "restyle"
    assert len(summary["pairs"]) == 8
    assert {p["style"] for p in summary["pairs"]} == {"legacy"}


def test_restyle_quiet_prints_nothing(shipped, cli, assert_ok, tmp_path):
    source = shipped("tiny_hifigan_parametrize.pt")
    result = assert_ok(cli("restyle", source, "--style", "legacy", "-q"))
    assert result.stdout == "" and result.stderr == ""
    assert (tmp_path / "tiny_hifigan_parametrize.legacy.pt").exists()


def test_restyle_already_in_style(shipped, cli, assert_input_error, snapshot, tmp_path):
    source = shipped("tiny_hifigan_parametrize.pt")
    before = snapshot(tmp_path)
    assert_input_error(cli("restyle", source, "--style", "parametrize"), source)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("style", ["Legacy", "weight_norm", ""])
def test_restyle_unknown_style(style, shipped, cli, assert_input_error, snapshot, tmp_path):
    source = shipped("tiny_hifigan_legacy.pt")
    before = snapshot(tmp_path)
    assert_input_error(cli("restyle", source, "--style", style), "--style")
    assert snapshot(tmp_path) == before


def test_restyle_requires_style(shipped, cli, tmp_path):
    result = cli("restyle", shipped("tiny_hifigan_legacy.pt"))
    assert result.exit_code == 2
    assert "--style" in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny_hifigan_legacy.pt"]
