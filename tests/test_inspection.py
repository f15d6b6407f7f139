"""inspect_checkpoint: pairs with dim, g range, zero-norm rows, decompose candidates, totals."""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch

from wnconvert import load_checkpoint
from wnconvert.inspection import SCHEMA_VERSION, inspect_checkpoint


def mixed_state() -> OrderedDict:
    g1 = torch.tensor([[[0.5]], [[2.0]], [[-1.5]]])
    v1 = torch.randn(3, 2, 4)
    v1[1] = 0  # one zero-norm row
    return OrderedDict([
        ("enc.conv.parametrizations.weight.original0", g1),
        ("enc.conv.parametrizations.weight.original1", v1),
        ("enc.conv.bias", torch.zeros(3)),
        ("dec.weight_g", torch.tensor(3.0)),  # dim=None: a 0-d g
        ("dec.weight_v", torch.randn(5, 4)),
        ("pos.weight_g", torch.tensor([[[1.0, float("inf"), 2.0, 0.25]]])),  # wav2vec2 dim=2
        ("pos.weight_v", torch.randn(2, 3, 4)),
        ("head.weight", torch.randn(6, 5, dtype=torch.float16)),
        ("norm.weight", torch.ones(6)),
        ("ids.weight", torch.zeros(2, 2, dtype=torch.int64)),
    ])


def test_inspect_reports_pairs_candidates_and_totals(save_pt):
    state = mixed_state()
    report = inspect_checkpoint(load_checkpoint(save_pt({"model": state, "step": 3})))
    assert report["schema"] == SCHEMA_VERSION
    json.dumps(report)  # plain data, JSON-serialisable
    pairs = {p["name"]: p for p in report["pairs"]}
    assert list(pairs) == ["enc.conv.weight", "dec.weight", "pos.weight"]

    enc = pairs["enc.conv.weight"]
    assert enc["style"] == "parametrize" and enc["dim"] == 0
    assert enc["shape"] == [3, 2, 4] and enc["g_shape"] == [3, 1, 1] and enc["dtype"] == "float32"
    assert (enc["g_min"], enc["g_max"]) == (-1.5, 2.0)
    assert enc["zero_norm_rows"] == 1 and enc["nonfinite_rows"] == 0
    assert enc["g_key"] == "enc.conv.parametrizations.weight.original0"

    dec = pairs["dec.weight"]
    assert dec["style"] == "legacy" and dec["dim"] is None and dec["g_shape"] == []
    assert (dec["g_min"], dec["g_max"]) == (3.0, 3.0) and dec["zero_norm_rows"] == 0

    pos = pairs["pos.weight"]
    assert pos["dim"] == 2 and pos["g_shape"] == [1, 1, 4]
    assert (pos["g_min"], pos["g_max"]) == (0.25, 2.0)  # the range of the finite g values
    assert pos["nonfinite_rows"] == 1

    assert report["decompose_candidates"] == [
        {"name": "head.weight", "shape": [6, 5], "dtype": "float16"}]
    totals = report["totals"]
    assert totals == {
        "tensors": len(state),
        "parameters": sum(t.numel() for t in state.values()),
        "bytes": sum(t.numel() * t.element_size() for t in state.values()),
        "pairs": 3,
        "pairs_by_style": {"parametrize": 1, "legacy": 2},
        "zero_norm_rows": 1,
        "spectral_norm": 0,
        "decompose_candidates": 1,
    }
    assert report["spectral_norm"] == []
    container = report["container"]
    assert container["format"] == "pt" and container["state_dict_key"] == "model"
    assert [e["key"] for e in container["entries"]] == ["model", "step"]


def test_inspect_fixtures(fixtures_dir):
    legacy = inspect_checkpoint(load_checkpoint(fixtures_dir / "tiny_hifigan_legacy.pt"))
    assert legacy["totals"]["pairs"] == 8
    assert legacy["totals"]["pairs_by_style"] == {"parametrize": 0, "legacy": 8}
    assert all(p["dim"] == 0 and p["zero_norm_rows"] == 0 for p in legacy["pairs"])
    assert legacy["container"]["state_dict_key"] == "generator"
    assert legacy["totals"]["decompose_candidates"] == 0

    st = inspect_checkpoint(load_checkpoint(fixtures_dir / "tiny_hifigan.safetensors"))
    assert st["container"]["format"] == "safetensors"
    assert st["container"]["metadata"] == {"format": "pt", "source": "wnconvert fixtures"}
    assert st["totals"]["pairs_by_style"] == {"parametrize": 8, "legacy": 0}
    assert all(p["g_min"] <= p["g_max"] for p in st["pairs"])

    plain = inspect_checkpoint(load_checkpoint(fixtures_dir / "tiny_hifigan_plain.pt"))
    assert plain["pairs"] == [] and plain["totals"]["decompose_candidates"] == 8
    assert all(c["name"].endswith("weight") and len(c["shape"]) == 3
               for c in plain["decompose_candidates"])


def test_inspect_sharded_lists_shards_and_reports_progress(save_sharded):
    first = OrderedDict([("a.weight_g", torch.ones(2, 1)), ("a.weight_v", torch.randn(2, 3))])
    second = OrderedDict([("b.weight", torch.randn(3, 3))])
    ckpt = load_checkpoint(save_sharded([first, second]))
    seen = []
    report = inspect_checkpoint(ckpt, on_pair=lambda name, i, n: seen.append((name, i, n)))
    assert seen == [("a.weight", 1, 1)]
    assert report["container"]["shards"] == ["model-00001-of-00002.safetensors",
                                             "model-00002-of-00002.safetensors"]
    assert report["totals"]["decompose_candidates"] == 1


def test_inspect_all_nonfinite_g_has_no_range(save_pt):
    state = {"x.weight_g": torch.full((2, 1), float("nan")), "x.weight_v": torch.randn(2, 2)}
    (pair,) = inspect_checkpoint(load_checkpoint(save_pt(state)))["pairs"]
    assert pair["g_min"] is None and pair["g_max"] is None and pair["nonfinite_rows"] == 2


def test_inspect_inconsistent_pair_is_input_error(save_pt):
    from wnconvert import InputError

    state = {"x.weight_g": torch.ones(3, 1), "x.weight_v": torch.randn(2, 2)}
    with pytest.raises(InputError, match="'x.weight'"):
        inspect_checkpoint(load_checkpoint(save_pt(state)))
