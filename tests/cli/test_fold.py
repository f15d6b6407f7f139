"""``wnconvert fold`` on checkpoints: containers, --key, output names and formats, shards,
zero-norm rows, --quiet and --json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from tests.checkpoints import read_checkpoint, read_pt

SUMMARY_KEYS = {"action", "input", "output", "format", "pairs", "unchanged", "bytes_in",
                "bytes_out", "file_bytes", "seconds", "notes"}


def legacy_linear(seed: int = 0, out_features: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    module = nn.utils.weight_norm(nn.Linear(4, out_features))
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def is_safetensors(path: Path) -> bool:
    try:
        with safe_open(str(path), framework="pt"):
            return True
    except Exception:  # noqa: BLE001 - any failure means "not safetensors"
        return False


# --------------------------------------------------------------------------- shipped fixtures


@pytest.mark.parametrize(
    "name, api, key",
    [
        ("tiny_hifigan_parametrize.pt", "parametrize", None),
        ("tiny_hifigan_legacy.pt", "legacy", "generator"),
        ("tiny_hifigan.safetensors", "parametrize", None),
    ],
)
def test_fold_shipped_fixture_matches_weight_normed_generator(
    name, api, key, shipped, cli, assert_ok, fixture_models, tmp_path
):
    source = shipped(name)
    result = assert_ok(cli("fold", source))
    stem, dot, ext = name.rpartition(".")
    output = tmp_path / f"{stem}.folded.{ext}"
    assert f"wrote {output}" in result.stdout
    assert "folded 8 pair(s)" in result.stdout

    state = read_checkpoint(source)
    reference = fixture_models.build_generator(api)
    reference.load_state_dict(state[key] if key else state, strict=True)
    folded_state = read_checkpoint(output)
    folded = fixture_models.build_generator("none")
    folded.load_state_dict(folded_state[key] if key else folded_state, strict=True)
    torch.manual_seed(3)
    mel = torch.randn(2, 16, 12)
    with torch.no_grad():
        torch.testing.assert_close(folded(mel), reference(mel), atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------- containers, --key


def test_fold_hifigan_container_keeps_steps_and_epoch(shipped, cli, assert_ok, tmp_path):
    source = shipped("tiny_hifigan_legacy.pt")
    assert_ok(cli("fold", source))
    out = read_pt(tmp_path / "tiny_hifigan_legacy.folded.pt")
    assert set(out) == {"generator", "steps", "epoch"}
    assert out["steps"] == 12500
    assert out["epoch"] == 7
    assert not [k for k in out["generator"] if k.endswith(("_g", "_v"))]
    assert "conv_pre.weight" in out["generator"]


def test_fold_ambiguous_container_needs_key(tmp_path, cli, assert_ok, assert_input_error,
                                            snapshot):
    source = tmp_path / "gan.pt"
    torch.save({"generator": legacy_linear(0), "discriminator": legacy_linear(1, 5),
                "steps": 3}, source)
    before = snapshot(tmp_path)
    line = assert_input_error(cli("fold", source), source, "--key")
    assert "generator" in line and "discriminator" in line
    assert snapshot(tmp_path) == before  # nothing written

    assert_ok(cli("fold", source, "--key", "discriminator"))
    out = read_pt(tmp_path / "gan.folded.pt")
    assert out["steps"] == 3
    assert set(out["discriminator"]) == {"weight", "bias"}
    assert out["discriminator"]["weight"].shape == (5, 4)
    # The entry not selected is written back unchanged.
    original = legacy_linear(0)
    assert set(out["generator"]) == set(original)
    for k, v in original.items():
        assert torch.equal(out["generator"][k], v)


def test_fold_picks_the_only_state_dict_with_pairs(tmp_path, cli, assert_ok):
    source = tmp_path / "ckpt.pt"
    plain = {"weight": torch.randn(3, 4), "bias": torch.randn(3)}
    torch.save({"model": legacy_linear(0), "ema": plain}, source)
    assert_ok(cli("fold", source))
    out = read_pt(tmp_path / "ckpt.folded.pt")
    assert set(out["model"]) == {"weight", "bias"}
    assert all(torch.equal(out["ema"][k], v) for k, v in plain.items())


def test_fold_dotted_key_path(tmp_path, cli, assert_ok):
    source = tmp_path / "ckpt.pt"
    torch.save({"model": {"ema": legacy_linear(0), "raw": legacy_linear(1)}, "step": 1}, source)
    assert_ok(cli("fold", source, "--key", "model.ema"))
    out = read_pt(tmp_path / "ckpt.folded.pt")
    assert set(out["model"]["ema"]) == {"weight", "bias"}
    assert set(out["model"]["raw"]) == {"weight_g", "weight_v", "bias"}
    assert out["step"] == 1


def test_fold_unknown_key(tmp_path, cli, assert_input_error, snapshot):
    source = tmp_path / "ckpt.pt"
    torch.save({"generator": legacy_linear(0)}, source)
    before = snapshot(tmp_path)
    line = assert_input_error(cli("fold", source, "--key", "nope"), source, "nope")
    assert "generator" in line  # says where state dicts are
    assert snapshot(tmp_path) == before


def test_fold_key_on_safetensors_is_an_error(shipped, cli, assert_input_error):
    source = shipped("tiny_hifigan.safetensors")
    assert_input_error(cli("fold", source, "--key", "generator"), source, "--key")


# --------------------------------------------------------------------------- output names


@pytest.mark.parametrize(
    "name, expected",
    [
        ("g.pt", "g.folded.pt"),
        ("g.pth", "g.folded.pth"),
        ("g.bin", "g.folded.bin"),
        ("g.ckpt", "g.folded.ckpt"),
        ("g.v2.pt", "g.v2.folded.pt"),
        ("g.safetensors", "g.folded.safetensors"),
    ],
)
def test_fold_default_output_is_next_to_the_input(name, expected, tmp_path, cli, assert_ok,
                                                  monkeypatch, snapshot):
    folder = tmp_path / "in"
    folder.mkdir()
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    source = folder / name
    state = legacy_linear()
    if name.endswith(".safetensors"):
        save_file(state, str(source))
    else:
        torch.save(state, source)
    before = snapshot(folder)
    result = assert_ok(cli("fold", source))
    after = snapshot(folder)
    assert set(after) == {name, expected}
    assert after[name] == before[name]
    assert list(elsewhere.iterdir()) == []
    assert expected in result.stdout
    assert set(read_checkpoint(folder / expected)) == {"weight", "bias"}


def test_fold_output_suffix_chooses_safetensors(tmp_path, cli, assert_ok):
    source = tmp_path / "g.pt"
    torch.save(legacy_linear(), source)
    output = tmp_path / "x.safetensors"
    assert_ok(cli("fold", source, "-o", output))
    assert is_safetensors(output)
    assert set(load_file(str(output))) == {"weight", "bias"}


def test_fold_to_safetensors_flag(tmp_path, cli, assert_ok):
    source = tmp_path / "g.pt"
    torch.save(legacy_linear(), source)
    assert_ok(cli("fold", source, "--to", "safetensors"))
    output = tmp_path / "g.folded.safetensors"
    assert is_safetensors(output)
    assert set(load_file(str(output))) == {"weight", "bias"}


@pytest.mark.parametrize("how", [("--to", "pt"), ("-o", "out.pt")])
def test_fold_safetensors_to_pt(how, tmp_path, cli, assert_ok, shipped):
    source = shipped("tiny_hifigan.safetensors")
    flag, value = how
    assert_ok(cli("fold", source, flag, tmp_path / value if flag == "-o" else value))
    output = tmp_path / ("tiny_hifigan.folded.pt" if flag == "--to" else value)
    assert not is_safetensors(output)
    state = read_pt(output)
    assert "conv_pre.weight" in state


def test_fold_unknown_to(tmp_path, cli, assert_input_error):
    source = tmp_path / "g.pt"
    torch.save(legacy_linear(), source)
    assert_input_error(cli("fold", source, "--to", "npz"), "--to")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.pt"]


def test_fold_output_with_unknown_suffix(tmp_path, cli, assert_input_error):
    source = tmp_path / "g.pt"
    torch.save(legacy_linear(), source)
    output = tmp_path / "out.npz"
    assert_input_error(cli("fold", source, "-o", output), output)
    assert not output.exists()


def test_fold_output_in_missing_folder(tmp_path, cli, assert_input_error):
    source = tmp_path / "g.pt"
    torch.save(legacy_linear(), source)
    output = tmp_path / "no" / "such" / "out.pt"
    assert_input_error(cli("fold", source, "-o", output), "out.pt")
    assert not (tmp_path / "no").exists()


def test_fold_output_that_is_a_directory(tmp_path, cli, assert_input_error):
    source = tmp_path / "g.pt"
    torch.save(legacy_linear(), source)
    folder = tmp_path / "out.pt"
    folder.mkdir()
    assert_input_error(cli("fold", source, "-o", folder, "--force"), folder)
    assert folder.is_dir() and list(folder.iterdir()) == []


def test_fold_container_to_safetensors_warns_about_dropped_entries(shipped, cli, assert_ok,
                                                                   tmp_path):
    source = shipped("tiny_hifigan_legacy.pt")
    result = assert_ok(cli("fold", source, "--to", "safetensors"))
    assert "warning:" in result.stderr
    assert "steps" in result.stderr and "epoch" in result.stderr
    assert "steps" not in result.stdout
    state = load_file(str(tmp_path / "tiny_hifigan_legacy.folded.safetensors"))
    assert "conv_pre.weight" in state


# --------------------------------------------------------------------------- sharded


def test_fold_sharded_in_sharded_out(tmp_path, shipped, save_sharded, cli, assert_ok, snapshot,
                                     fixture_models):
    state = load_file(str(shipped("tiny_hifigan.safetensors")))
    (tmp_path / "tiny_hifigan.safetensors").unlink()
    keys = list(state)
    # Alternate keys between the shards, so several pairs have g and v in different shards.
    index = save_sharded([{k: state[k] for k in keys[0::2]}, {k: state[k] for k in keys[1::2]}])
    before = snapshot(tmp_path)

    result = assert_ok(cli("fold", index))

    out_index = tmp_path / "model.folded.safetensors.index.json"
    shards = [tmp_path / f"model.folded-0000{i}-of-00002.safetensors" for i in (1, 2)]
    after = snapshot(tmp_path)
    assert set(after) == {*before, out_index.name, *(s.name for s in shards)}
    assert {k: after[k] for k in before} == before
    assert out_index.name in result.stdout

    meta = json.loads(out_index.read_text())
    weight_map = meta["weight_map"]
    assert set(weight_map.values()) == {s.name for s in shards}
    folded: dict[str, torch.Tensor] = {}
    for shard in shards:
        part = load_file(str(shard))
        assert {k for k, v in weight_map.items() if v == shard.name} == set(part)
        folded.update(part)
    assert set(weight_map) == set(folded)
    assert meta["metadata"]["total_size"] == sum(t.numel() * t.element_size()
                                                 for t in folded.values())

    reference = fixture_models.build_generator("parametrize")
    reference.load_state_dict(state, strict=True)
    model = fixture_models.build_generator("none")
    model.load_state_dict(folded, strict=True)
    mel = torch.randn(1, 16, 9)
    with torch.no_grad():
        torch.testing.assert_close(model(mel), reference(mel), atol=1e-6, rtol=1e-5)


def test_fold_sharded_to_single_file(tmp_path, shipped, save_sharded, cli, assert_ok):
    state = load_file(str(shipped("tiny_hifigan.safetensors")))
    keys = list(state)
    index = save_sharded([{k: state[k] for k in keys[:10]}, {k: state[k] for k in keys[10:]}])
    output = tmp_path / "single.safetensors"
    assert_ok(cli("fold", index, "-o", output))
    assert is_safetensors(output)
    assert "conv_pre.weight" in load_file(str(output))


# --------------------------------------------------------------------------- data, output


@pytest.mark.parametrize("style", ["legacy", "parametrize"])
def test_fold_zero_norm_row_warns_and_gives_zeros(style, tmp_path, cli, assert_ok):
    v = torch.randn(3, 4)
    v[1] = 0
    g = torch.tensor([[2.0], [1.0], [0.5]])
    if style == "legacy":
        state = {"dense.weight_g": g, "dense.weight_v": v, "dense.bias": torch.zeros(3)}
    else:
        state = {"dense.parametrizations.weight.original0": g,
                 "dense.parametrizations.weight.original1": v, "dense.bias": torch.zeros(3)}
    source = tmp_path / "z.pt"
    torch.save(state, source)

    result = assert_ok(cli("fold", source))

    assert "zero norm" in result.stderr
    assert "dense.weight" in result.stderr
    assert "warning:" in result.stderr
    assert "zero norm" not in result.stdout
    weight = read_pt(tmp_path / "z.folded.pt")["dense.weight"]
    assert torch.isfinite(weight).all()
    assert torch.equal(weight[1], torch.zeros(4))
    expected = (g.double() * v.double() / v.double().norm(dim=1, keepdim=True)).float()
    torch.testing.assert_close(weight[[0, 2]], expected[[0, 2]], atol=0, rtol=0)


def test_fold_zero_norm_warning_survives_quiet(tmp_path, cli, assert_ok):
    v = torch.zeros(2, 3)
    source = tmp_path / "z.pt"
    torch.save({"w.weight_g": torch.ones(2, 1), "w.weight_v": v}, source)
    result = assert_ok(cli("fold", source, "--quiet"))
    assert result.stdout == ""
    assert "zero norm" in result.stderr and "w.weight" in result.stderr


def test_fold_quiet_prints_nothing(tmp_path, cli, assert_ok):
    source = tmp_path / "g.pt"
    torch.save(legacy_linear(), source)
    result = assert_ok(cli("fold", source, "--quiet"))
    assert result.stdout == ""
    assert result.stderr == ""
    assert (tmp_path / "g.folded.pt").exists()


def test_fold_json_summary(tmp_path, cli, assert_ok):
    source = tmp_path / "g.pt"
    torch.save(legacy_linear(), source)
    result = assert_ok(cli("fold", source, "--json"))
    assert result.stderr == ""
    summary = json.loads(result.stdout)
    assert set(summary) == SUMMARY_KEYS
    assert summary["action"] == "fold"
    assert summary["format"] == "pt"
    assert Path(summary["input"]) == source
    assert Path(summary["output"]) == tmp_path / "g.folded.pt"
    assert summary["unchanged"] == 1
    assert [p["name"] for p in summary["pairs"]] == ["weight"]
    assert summary["pairs"][0]["style"] == "legacy"
    assert summary["pairs"][0]["dim"] == 0
    # Tensor bytes compare with tensor bytes (issue 11 §5); the file's size is file_bytes.
    folded = torch.load(tmp_path / "g.folded.pt", weights_only=True)
    assert summary["bytes_out"] == sum(t.numel() * t.element_size() for t in folded.values())
    assert summary["bytes_in"] == sum(t.numel() * t.element_size()
                                      for t in legacy_linear().values())
    assert summary["file_bytes"] == os.path.getsize(tmp_path / "g.folded.pt")


def test_fold_keeps_dtypes_and_other_tensors(tmp_path, cli, assert_ok):
    torch.manual_seed(0)
    net = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Conv1d(2, 3, 3)),
                        nn.BatchNorm1d(3))
    net.train()
    net(torch.randn(4, 2, 6))  # move the running stats and num_batches_tracked
    net.eval()
    state = net.state_dict()
    state["half.weight_g"] = torch.ones(2, 1, dtype=torch.float16)
    state["half.weight_v"] = torch.randn(2, 3).half()
    state["brain.weight_g"] = torch.ones(2, 1, dtype=torch.bfloat16)
    state["brain.weight_v"] = torch.randn(2, 3).bfloat16()
    source = tmp_path / "n.pt"
    torch.save(state, source)

    assert_ok(cli("fold", source))

    out = read_pt(tmp_path / "n.folded.pt")
    assert out["half.weight"].dtype == torch.float16
    assert out["brain.weight"].dtype == torch.bfloat16
    for key in ("1.running_mean", "1.running_var", "1.num_batches_tracked", "0.bias"):
        assert out[key].dtype == state[key].dtype
        assert torch.equal(out[key], state[key])
    plain = nn.Sequential(nn.Conv1d(2, 3, 3), nn.BatchNorm1d(3)).eval()
    plain.load_state_dict({k: v for k, v in out.items() if not k.startswith(("half", "brain"))},
                          strict=True)
    x = torch.randn(2, 2, 6)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), net(x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("to", ["pt", "safetensors"])
def test_fold_keeps_scalar_tensors_scalar(to, tmp_path, cli, assert_ok):
    # 0-d tensors (a 0-d g of dim=None, a scalar buffer) keep their shape in every format.
    source = tmp_path / "s.safetensors"
    save_file({"a.weight_g": torch.tensor(2.0), "a.weight_v": torch.randn(2, 3),
               "temperature": torch.tensor(1.5)}, str(source))
    assert_ok(cli("fold", source, "--to", to))
    out = read_checkpoint(tmp_path / f"s.folded.{to}")
    assert out["temperature"].shape == ()
    assert out["temperature"].item() == 1.5
    assert out["a.weight"].shape == (2, 3)


def test_fold_without_pairs_is_an_input_error(tmp_path, cli, assert_input_error, snapshot):
    source = tmp_path / "plain.pt"
    torch.save({"weight": torch.randn(3, 4)}, source)
    before = snapshot(tmp_path)
    line = assert_input_error(cli("fold", source), source)
    assert "nothing to fold" in line
    assert snapshot(tmp_path) == before


def test_fold_rejects_onnx_only_options_without_to_onnx(tmp_path, cli, assert_input_error):
    source = tmp_path / "g.pt"
    torch.save(legacy_linear(), source)
    assert_input_error(cli("fold", source, "--opset", "17"), "--opset")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.pt"]


# --------------------------------------------------------------------------- streamed writes


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_streamed_safetensors_fold_is_bit_identical_to_the_in_memory_fold(
        dtype, tmp_path, cli, assert_ok, monkeypatch):
    # A safetensors output is written piece by piece from the thread pool (pwrite at each
    # piece's offset) while g and v are read through memory maps; a .pt output goes through
    # whole arrays. Small chunks and threads even for tiny tensors make every path run.
    from wnconvert import numerics

    monkeypatch.setattr(numerics, "_CHUNK_ELEMENTS", 16)
    monkeypatch.setattr(numerics, "_PARALLEL_MIN", 1)
    monkeypatch.setattr(numerics, "_THREADS", 2)
    torch.manual_seed(3)
    state = {
        "conv.parametrizations.weight.original0": torch.rand(8, 1, 1).to(dtype) + 0.5,
        "conv.parametrizations.weight.original1": torch.randn(8, 6, 5).to(dtype),
        "conv.bias": torch.randn(8).to(dtype),
        "up.parametrizations.weight.original0": torch.rand(1, 7, 1).to(dtype) + 0.5,  # dim 1
        "up.parametrizations.weight.original1": torch.randn(9, 7, 4).to(dtype),
        "whole.weight_g": torch.tensor(1.5).to(dtype),  # dim None
        "whole.weight_v": torch.randn(5, 11).to(dtype),
        "empty": torch.zeros(0, 3, dtype=dtype),
    }
    save_file(state, str(tmp_path / "in.safetensors"))
    assert_ok(cli("fold", str(tmp_path / "in.safetensors"), "-o", str(tmp_path / "s.safetensors")))
    assert_ok(cli("fold", str(tmp_path / "in.safetensors"), "-o", str(tmp_path / "p.pt")))
    streamed, whole = load_file(str(tmp_path / "s.safetensors")), read_pt(tmp_path / "p.pt")
    assert set(streamed) == set(whole) == {"conv.weight", "conv.bias", "up.weight",
                                           "whole.weight", "empty"}
    for key in whole:
        assert torch.equal(streamed[key].view(torch.uint8), whole[key].view(torch.uint8)), key
    assert (tmp_path / "s.safetensors").stat().st_size == 8 + int.from_bytes(
        (tmp_path / "s.safetensors").read_bytes()[:8], "little") + sum(
        t.numel() * t.element_size() for t in whole.values())
