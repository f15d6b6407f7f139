"""``wnconvert inspect``: container layout, every pair, decompose candidates, totals; --json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

TOP_KEYS = {"schema", "container", "pairs", "spectral_norm", "decompose_candidates", "totals"}
CONTAINER_KEYS = {"format", "detected", "path", "state_dict_key", "entries", "metadata", "shards",
                  "members"}
PAIR_KEYS = {"name", "style", "g_key", "v_key", "dim", "shape", "g_shape", "dtype", "g_min",
             "g_max", "zero_norm_rows", "nonfinite_rows"}
CANDIDATE_KEYS = {"name", "shape", "dtype"}
TOTALS_KEYS = {"tensors", "parameters", "bytes", "pairs", "pairs_by_style", "zero_norm_rows",
               "spectral_norm", "decompose_candidates"}


def mixed_state_dict() -> dict[str, torch.Tensor]:
    """One pair of each style, a dim=None pair, a zero-norm row, and plain tensors."""
    torch.manual_seed(0)
    v = torch.randn(3, 4)
    zero_v = torch.randn(3, 4)
    zero_v[1] = 0
    return {
        "enc.parametrizations.weight.original0": torch.tensor([[0.5], [1.0], [2.0]]),
        "enc.parametrizations.weight.original1": v,
        "enc.bias": torch.zeros(3),
        "dec.weight_g": torch.tensor(3.0),  # 0-d: one norm over the whole tensor (dim None)
        "dec.weight_v": torch.randn(2, 3),
        "zero.weight_g": torch.tensor([[1.0], [1.0], [1.0]]),
        "zero.weight_v": zero_v,
        "head.weight": torch.randn(5, 4),  # plain, floating, rank 2: a decompose candidate
        "norm.weight": torch.ones(4),  # rank 1: not a candidate
        "table.weight": torch.ones(2, 2, dtype=torch.int64),  # not floating: not a candidate
    }


@pytest.fixture
def mixed_pt(tmp_path: Path) -> Path:
    path = tmp_path / "mixed.pt"
    torch.save(mixed_state_dict(), path)
    return path


def test_inspect_json_schema(mixed_pt, cli, assert_ok, snapshot, tmp_path):
    before = snapshot(tmp_path)
    result = assert_ok(cli("inspect", mixed_pt, "--json"))
    assert snapshot(tmp_path) == before  # inspect writes nothing
    assert result.stderr == ""
    report = json.loads(result.stdout)  # stdout is JSON and nothing else

    assert set(report) == TOP_KEYS
    assert report["schema"] == 1
    assert set(report["container"]) == CONTAINER_KEYS
    assert report["container"]["format"] == "pt"
    assert report["container"]["state_dict_key"] is None
    assert report["container"]["shards"] == []
    assert set(report["totals"]) == TOTALS_KEYS
    for pair in report["pairs"]:
        assert set(pair) == PAIR_KEYS
    for cand in report["decompose_candidates"]:
        assert set(cand) == CANDIDATE_KEYS

    pairs = {p["name"]: p for p in report["pairs"]}
    assert set(pairs) == {"enc.weight", "dec.weight", "zero.weight"}
    enc = pairs["enc.weight"]
    assert enc["style"] == "parametrize"
    assert enc["dim"] == 0 and isinstance(enc["dim"], int)
    assert enc["shape"] == [3, 4] and enc["g_shape"] == [3, 1]
    assert enc["dtype"] == "float32"
    assert enc["g_key"] == "enc.parametrizations.weight.original0"
    assert enc["v_key"] == "enc.parametrizations.weight.original1"
    assert (enc["g_min"], enc["g_max"]) == (0.5, 2.0)
    assert enc["zero_norm_rows"] == 0
    dec = pairs["dec.weight"]
    assert dec["style"] == "legacy"
    assert dec["dim"] is None  # JSON null
    assert '"dim": null' in result.stdout
    assert dec["g_shape"] == []
    assert pairs["zero.weight"]["zero_norm_rows"] == 1

    assert [c["name"] for c in report["decompose_candidates"]] == ["head.weight"]
    assert report["decompose_candidates"][0] == {"name": "head.weight", "shape": [5, 4],
                                                 "dtype": "float32"}
    totals = report["totals"]
    assert totals["tensors"] == 10
    assert totals["pairs"] == 3
    assert totals["pairs_by_style"] == {"parametrize": 1, "legacy": 2}
    assert totals["zero_norm_rows"] == 1
    assert totals["decompose_candidates"] == 1
    state = mixed_state_dict()
    assert totals["parameters"] == sum(t.numel() for t in state.values())
    assert totals["bytes"] == sum(t.numel() * t.element_size() for t in state.values())


def test_inspect_text_lists_every_pair_and_totals(mixed_pt, cli, assert_ok):
    result = assert_ok(cli("inspect", mixed_pt))
    out = result.stdout
    assert result.stderr == ""
    for name in ("enc.weight", "dec.weight", "zero.weight"):
        assert name in out
    assert "parametrize" in out and "legacy" in out
    assert "none" in out  # dec.weight's dim
    assert "float32" in out
    assert "decompose would pick 1 plain tensor(s): head.weight" in out
    assert "10 tensors" in out
    assert "3 pairs (1 parametrize, 2 legacy)" in out
    assert "1 zero-norm rows" in out


def test_inspect_hifigan_container_layout(shipped, cli, assert_ok):
    path = shipped("tiny_hifigan_legacy.pt")
    result = assert_ok(cli("inspect", path, "--json"))
    report = json.loads(result.stdout)
    container = report["container"]
    assert container["state_dict_key"] == "generator"
    entries = {e["key"]: e for e in container["entries"]}
    assert set(entries) == {"generator", "steps", "epoch"}
    assert entries["generator"]["selected"] is True
    assert entries["steps"]["selected"] is False
    assert "12500" in entries["steps"]["kind"]
    assert report["totals"]["pairs"] == 8
    assert report["totals"]["pairs_by_style"] == {"parametrize": 0, "legacy": 8}

    text = assert_ok(cli("inspect", path)).stdout
    assert "state dict at generator" in text
    for key in ("generator", "steps", "epoch"):
        assert key in text
    assert "conv_pre.weight" in text and "conv_post.weight" in text


def test_inspect_safetensors_shows_metadata(shipped, cli, assert_ok):
    path = shipped("tiny_hifigan.safetensors")
    report = json.loads(assert_ok(cli("inspect", path, "--json")).stdout)
    assert report["container"]["format"] == "safetensors"
    assert report["container"]["metadata"] == {"format": "pt", "source": "wnconvert fixtures"}
    assert report["totals"]["pairs_by_style"] == {"parametrize": 8, "legacy": 0}
    assert all(p["dim"] == 0 for p in report["pairs"])


def test_inspect_sharded_lists_shards(save_sharded, cli, assert_ok):
    state = mixed_state_dict()
    keys = list(state)
    index = save_sharded([{k: state[k] for k in keys[:4]}, {k: state[k] for k in keys[4:]}],
                         stem="m")
    report = json.loads(assert_ok(cli("inspect", index, "--json")).stdout)
    assert report["container"]["format"] == "sharded"
    assert report["container"]["shards"] == ["m-00001-of-00002.safetensors",
                                             "m-00002-of-00002.safetensors"]
    assert report["totals"]["pairs"] == 3
    assert report["totals"]["tensors"] == len(state)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_inspect_reports_half_dtypes(dtype, tmp_path, cli, assert_ok):
    path = tmp_path / "half.pt"
    torch.save({"l.weight_g": torch.ones(2, 1, dtype=dtype),
                "l.weight_v": torch.randn(2, 3).to(dtype)}, path)
    report = json.loads(assert_ok(cli("inspect", path, "--json")).stdout)
    assert report["pairs"][0]["dtype"] == str(dtype).removeprefix("torch.")


def test_inspect_quiet_prints_nothing(mixed_pt, cli, assert_ok):
    result = assert_ok(cli("inspect", mixed_pt, "--quiet"))
    assert result.stdout == ""
    assert result.stderr == ""


def test_inspect_key_selects_entry(tmp_path, cli, assert_ok):
    path = tmp_path / "two.pt"
    torch.save({"generator": {"a.weight_g": torch.ones(2, 1), "a.weight_v": torch.ones(2, 2)},
                "discriminator": {"b.weight_g": torch.ones(3, 1), "b.weight_v": torch.ones(3, 2)}},
               path)
    report = json.loads(assert_ok(cli("inspect", path, "--key", "discriminator", "--json")).stdout)
    assert report["container"]["state_dict_key"] == "discriminator"
    assert [p["name"] for p in report["pairs"]] == ["b.weight"]


def test_inspect_shows_names_with_brackets_verbatim(shipped, cli, assert_ok, tmp_path):
    # File and key names are data, not rich markup: "[ema]" must not vanish.
    source = shipped("tiny_hifigan_legacy.pt")
    state = torch.load(source, weights_only=True)
    state["generator"] = {k.replace("conv_pre.", "conv_pre[ema]."): v
                          for k, v in state["generator"].items()}
    path = tmp_path / "ckpt[ema].pt"
    torch.save(state, path)
    out = assert_ok(cli("inspect", path)).stdout
    assert "ckpt[ema].pt" in out
    assert "conv_pre[ema].weight" in out
