"""Finding g/v pairs by key name in both PyTorch styles, and renaming between them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wnconvert.errors import InputError
from wnconvert.keys import PairKeys, find_pair_keys, pair_keys, restyle_key_map


@pytest.mark.parametrize(
    ("weight_key", "legacy", "parametrize"),
    [
        ("weight", ("weight_g", "weight_v"),
         ("parametrizations.weight.original0", "parametrizations.weight.original1")),
        ("conv.weight", ("conv.weight_g", "conv.weight_v"),
         ("conv.parametrizations.weight.original0", "conv.parametrizations.weight.original1")),
        ("enc.blocks.3.conv.weight", ("enc.blocks.3.conv.weight_g", "enc.blocks.3.conv.weight_v"),
         ("enc.blocks.3.conv.parametrizations.weight.original0",
          "enc.blocks.3.conv.parametrizations.weight.original1")),
        ("rnn.weight_hh_l0", ("rnn.weight_hh_l0_g", "rnn.weight_hh_l0_v"),
         ("rnn.parametrizations.weight_hh_l0.original0",
          "rnn.parametrizations.weight_hh_l0.original1")),
        ("bias", ("bias_g", "bias_v"),
         ("parametrizations.bias.original0", "parametrizations.bias.original1")),
    ],
)
def test_pair_keys_and_find_pair_keys_in_both_styles(weight_key, legacy, parametrize):
    for style, (g_key, v_key) in (("legacy", legacy), ("parametrize", parametrize)):
        keys = pair_keys(weight_key, style)
        assert (keys.g_key, keys.v_key, keys.weight_key, keys.style) == (g_key, v_key, weight_key,
                                                                          style)
        found = find_pair_keys(["other.bias", v_key, "x.weight", g_key])
        assert found == [keys]
        assert keys.module == weight_key.rpartition(".")[0]
        assert keys.param == weight_key.rpartition(".")[2]


def test_pair_keys_rejects_unknown_style():
    with pytest.raises(ValueError, match="unknown key style"):
        pair_keys("conv.weight", "weightnorm")  # type: ignore[arg-type]


@pytest.mark.parametrize("api", ["legacy", "parametrize"])
@pytest.mark.parametrize("name", ["weight_hh_l0", "weight_ih_l0"])
def test_keys_of_real_pytorch_state_dicts(api, name):
    model = nn.Sequential(nn.Linear(3, 4), nn.LSTM(4, 5))
    apply = nn.utils.weight_norm if api == "legacy" else nn.utils.parametrizations.weight_norm
    apply(model[0])
    apply(model[1], name=name)
    pairs = find_pair_keys(model.state_dict().keys())
    assert [(p.weight_key, p.style) for p in pairs] == [("0.weight", api), (f"1.{name}", api)]
    for p in pairs:
        assert p.g_key in model.state_dict() and p.v_key in model.state_dict()


def test_top_level_module_keys():
    for api in (nn.utils.weight_norm, nn.utils.parametrizations.weight_norm):
        module = api(nn.Conv1d(2, 3, 3))
        (pair,) = find_pair_keys(module.state_dict().keys())
        assert pair.weight_key == "weight" and pair.module == ""


@pytest.mark.parametrize(
    "keys",
    [
        ["conv.weight_g"],  # g without v
        ["conv.weight_v"],  # v without g
        ["conv.parametrizations.weight.original0"],
        ["conv.parametrizations.weight.original1"],
        ["conv.weight_g", "conv.parametrizations.weight.original1"],  # halves of two styles
        ["conv.fooparametrizations.weight.original0", "conv.fooparametrizations.weight.original1"],
        ["conv.parametrizations.a.b.original0", "conv.parametrizations.a.b.original1"],
        ["conv.parametrizations.weight.original", "conv.weight"],  # another parametrization
        ["_g", "_v"],
        ["ln.gamma", "ln.beta", "conv.weight", "conv.bias"],
    ],
)
def test_not_pairs(keys):
    assert find_pair_keys(keys) == []


def test_pairs_are_listed_once_in_order_of_first_key():
    keys = ["b.weight_v", "a.parametrizations.weight.original1", "b.weight_g", "c.bias",
            "a.parametrizations.weight.original0", "d.weight_g", "d.weight_v"]
    pairs = find_pair_keys(keys)
    assert [p.weight_key for p in pairs] == ["b.weight", "a.weight", "d.weight"]
    assert [p.style for p in pairs] == ["legacy", "parametrize", "legacy"]


def test_both_styles_in_one_state_dict():
    keys = ["enc.weight_g", "enc.weight_v", "dec.parametrizations.weight.original0",
            "dec.parametrizations.weight.original1"]
    assert {p.weight_key: p.style for p in find_pair_keys(keys)} == {
        "enc.weight": "legacy", "dec.weight": "parametrize"}


def test_restyle_key_map_both_directions():
    pairs = find_pair_keys(["conv.weight_g", "conv.weight_v", "parametrizations.weight.original0",
                            "parametrizations.weight.original1"])
    to_parametrize = restyle_key_map(pairs, "parametrize")
    assert to_parametrize == {
        "conv.weight_g": "conv.parametrizations.weight.original0",
        "conv.weight_v": "conv.parametrizations.weight.original1",
        "parametrizations.weight.original0": "parametrizations.weight.original0",
        "parametrizations.weight.original1": "parametrizations.weight.original1",
    }
    to_legacy = restyle_key_map(pairs, "legacy")
    assert to_legacy == {
        "conv.weight_g": "conv.weight_g",
        "conv.weight_v": "conv.weight_v",
        "parametrizations.weight.original0": "weight_g",
        "parametrizations.weight.original1": "weight_v",
    }


@pytest.mark.parametrize("source_api", ["legacy", "parametrize"])
def test_restyle_key_map_gives_the_other_apis_keys(source_api):
    def build(api):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Sequential(nn.Linear(3, 2)))
        apply = nn.utils.weight_norm if api == "legacy" else nn.utils.parametrizations.weight_norm
        apply(model[0])
        apply(model[1][0], dim=None)
        return model.state_dict()

    other = "parametrize" if source_api == "legacy" else "legacy"
    src, dst = build(source_api), build(other)
    mapping = restyle_key_map(find_pair_keys(src), other)
    assert sorted(mapping.get(k, k) for k in src) == sorted(dst)


def test_pair_keys_is_a_value_object():
    assert pair_keys("a.weight", "legacy") == PairKeys("a.weight", "a.weight_g", "a.weight_v",
                                                       "legacy")


def test_detect_key_prefix_strips_or_adds_a_wrapper_prefix():
    from wnconvert.keys import detect_key_prefix

    ref = ["conv_pre.weight", "conv_pre.bias", "ups.0.weight"]
    cand = ["m.conv_pre.weight", "m.conv_pre.bias", "m.ups.0.weight", "onnx::Conv_12"]
    assert detect_key_prefix(cand, ref) == ("m.", "")
    assert detect_key_prefix(ref, ["model." + k for k in ref]) == ("", "model.")
    assert detect_key_prefix(["module.a.w", "module.b.w"], ["model.a.w", "model.b.w"]) == (
        "module.", "model.")
    assert detect_key_prefix(ref, ref) is None  # names already match
    assert detect_key_prefix(["x.y"], ["a.b"]) is None  # no prefix change helps
    assert detect_key_prefix([], ref) is None


# --------------------------------------------------------------------------- spectral norm


def test_find_spectral_keys_both_styles_and_legacy_without_v() -> None:
    from wnconvert.keys import SpectralKeys, find_spectral_keys

    keys = ["a.weight_orig", "a.weight_u", "a.weight_v", "a.bias",
            "b.parametrizations.weight.original", "b.parametrizations.weight.0._u",
            "b.parametrizations.weight.0._v",
            "old.weight_orig", "old.weight_u", "old.weight",  # before weight_v existed
            "c.weight_orig",  # no u: not spectral norm
            "d.parametrizations.weight.original",  # 1-D or another parametrization: left
            "f.parametrizations.weight.original", "f.parametrizations.weight.0._u",
            "f.parametrizations.weight.0._v", "f.parametrizations.weight.1.base",  # a chain
            "e.weight_g", "e.weight_v"]  # weight norm
    assert find_spectral_keys(keys) == [
        SpectralKeys("a.weight", "a.weight_orig", "a.weight_u", "a.weight_v", "legacy"),
        SpectralKeys("b.weight", "b.parametrizations.weight.original",
                     "b.parametrizations.weight.0._u", "b.parametrizations.weight.0._v",
                     "parametrize"),
        SpectralKeys("old.weight", "old.weight_orig", "old.weight_u", None, "legacy",
                     stored_key="old.weight"),
    ]
    with pytest.raises(InputError, match="inconsistent"):
        find_spectral_keys(["x.weight_orig", "x.weight_u", "x.weight_g", "x.weight_v"])
