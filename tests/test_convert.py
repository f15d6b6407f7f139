"""fold / decompose / restyle on real PyTorch state dicts, plans and their error messages.

Every module kind is weight-normed by both PyTorch APIs (``torch.nn.utils.weight_norm`` and
``torch.nn.utils.parametrizations.weight_norm``) with dims 0, 1 and None; the converted state
dicts must load with ``strict=True`` into the target module and give the same outputs.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from wnconvert import (
    InputError,
    WeightNormWarning,
    decompose_state_dict,
    find_pairs,
    fold_state_dict,
    numerics,
    restyle_state_dict,
)
from wnconvert.convert import plan_decompose, plan_fold, plan_restyle, select_for_decompose
from wnconvert.dtypes import tensor_to_numpy
from wnconvert.keys import pair_keys

APIS = ("legacy", "parametrize")

# kind -> (constructor, parameter name, example input)
MODULES = {
    "linear": (lambda: nn.Linear(4, 3), "weight", lambda: torch.randn(2, 4)),
    "conv1d": (lambda: nn.Conv1d(3, 4, 3), "weight", lambda: torch.randn(2, 3, 8)),
    "conv2d": (lambda: nn.Conv2d(2, 3, 3), "weight", lambda: torch.randn(2, 2, 6, 5)),
    "conv3d": (lambda: nn.Conv3d(2, 3, 2), "weight", lambda: torch.randn(1, 2, 4, 3, 4)),
    "convtranspose1d": (lambda: nn.ConvTranspose1d(3, 4, 3, stride=2), "weight",
                        lambda: torch.randn(2, 3, 5)),
    "convtranspose2d": (lambda: nn.ConvTranspose2d(2, 3, 3), "weight",
                        lambda: torch.randn(2, 2, 4, 4)),
    "lstm_hh": (lambda: nn.LSTM(3, 4), "weight_hh_l0", lambda: torch.randn(5, 2, 3)),
    "lstm_ih": (lambda: nn.LSTM(3, 4), "weight_ih_l0", lambda: torch.randn(5, 2, 3)),
    "embedding": (lambda: nn.Embedding(6, 3), "weight", lambda: torch.tensor([[0, 5, 2, 2]])),
}


class Wrap(nn.Module):
    """Puts the layer at ``block.0`` (a nested module) and drops LSTM's state tuple."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.block = nn.Sequential(inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return y[0] if isinstance(y, tuple) else y


def apply_wn(module: nn.Module, api: str, name: str, dim: int | None) -> nn.Module:
    if api == "legacy":
        return nn.utils.weight_norm(module, name=name, dim=dim)
    return nn.utils.parametrizations.weight_norm(module, name=name, dim=dim)


def build(kind: str, api: str | None, dim: int | None = 0, seed: int = 0) -> Wrap:
    """The layer wrapped, weight-normed with ``api`` (None: plain), g perturbed like training."""
    ctor, name, _ = MODULES[kind]
    torch.manual_seed(seed)
    inner = ctor()
    if api is not None:
        apply_wn(inner, api, name, dim)
        with torch.no_grad():
            for key, param in inner.named_parameters():
                if key.endswith(("original0", "_g")):
                    param.mul_(torch.linspace(0.5, 1.5, param.numel()).reshape(param.shape))
    return Wrap(inner).eval()


def example_input(kind: str) -> torch.Tensor:
    torch.manual_seed(123)
    return MODULES[kind][2]()


def weight_key(kind: str) -> str:
    return f"block.0.{MODULES[kind][1]}"


CASES = [(kind, api, dim) for kind in MODULES for api in APIS for dim in (0, 1, None)]


def case_id(case):
    kind, api, dim = case
    return f"{kind}-{api}-dim{dim}"


# --------------------------------------------------------------------------- the module matrix


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fold_loads_strict_into_plain_module_with_equal_outputs(case):
    kind, api, dim = case
    wn = build(kind, api, dim)
    state = wn.state_dict()
    folded = fold_state_dict(state)
    plain = build(kind, None, seed=99)
    plain.load_state_dict(folded, strict=True)
    x = example_input(kind)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), wn(x), rtol=1e-5, atol=1e-6)
    # The folded weight is the float64 fold rounded once, within 1 float32 ulp of PyTorch's
    # float64 computation; other tensors pass through as the same objects.
    keys = pair_keys(weight_key(kind), api)
    expected = torch._weight_norm(state[keys.v_key].double(), state[keys.g_key].double(),
                                  -1 if dim is None else dim).float()
    diff = (folded[weight_key(kind)] - expected).abs()
    assert (diff <= torch.finfo(torch.float32).eps * expected.abs()).all()
    for key, tensor in folded.items():
        if key != weight_key(kind):
            assert tensor is state[key]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_decompose_like_loads_strict_into_weight_normed_module(case):
    kind, api, dim = case
    plain = build(kind, None, seed=1)
    plain_state = plain.state_dict()
    template = build(kind, api, dim, seed=2)
    out = decompose_state_dict(plain_state, like=template.state_dict())
    assert list(out) == list(template.state_dict())  # the template's keys, in its order
    template.load_state_dict(out, strict=True)
    x = example_input(kind)
    with torch.no_grad():
        torch.testing.assert_close(template(x), plain(x), rtol=1e-5, atol=1e-6)
    keys = pair_keys(weight_key(kind), api)
    w = plain_state[weight_key(kind)]
    assert torch.equal(out[keys.v_key], w) and out[keys.v_key].dtype == w.dtype  # v is w
    norm = torch.norm_except_dim(w.double(), 2, -1 if dim is None else dim)
    assert out[keys.g_key].shape == template.state_dict()[keys.g_key].shape
    np.testing.assert_array_equal(
        tensor_to_numpy(out[keys.g_key]).reshape(-1),
        numerics.round_from_float64(norm.numpy(), np.float32).reshape(-1))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_restyle_loads_strict_into_other_api_module_bit_identical(case):
    kind, api, dim = case
    other = "parametrize" if api == "legacy" else "legacy"
    wn = build(kind, api, dim)
    state = wn.state_dict()
    out = restyle_state_dict(state, style=other)
    target = build(kind, other, dim, seed=5)
    target.load_state_dict(out, strict=True)
    src, dst = pair_keys(weight_key(kind), api), pair_keys(weight_key(kind), other)
    renamed = {src.g_key: dst.g_key, src.v_key: dst.v_key}
    assert sorted(out) == sorted(renamed.get(k, k) for k in state)
    for key, tensor in state.items():
        new = out[renamed.get(key, key)]
        assert new.dtype == tensor.dtype and torch.equal(new, tensor)
    x = example_input(kind)
    with torch.no_grad():
        torch.testing.assert_close(target(x), wn(x), rtol=0, atol=0)
    # And back again gives the original keys and tensors.
    back = restyle_state_dict(out, style=api)
    assert list(back) == list(state)  # the original keys in the original order
    assert all(torch.equal(back[k], state[k]) for k in state)


@pytest.mark.parametrize("api", APIS)
def test_decompose_default_plan_loads_into_dim0_model(api):
    """Without ``like``: every ``*weight`` of rank >= 2, dim 0, in the chosen style."""
    plain = build("conv1d", None, seed=1)
    out = decompose_state_dict(plain.state_dict(), style=api)
    target = build("conv1d", api, 0, seed=3)
    target.load_state_dict(out, strict=True)
    x = example_input("conv1d")
    with torch.no_grad():
        torch.testing.assert_close(target(x), plain(x), rtol=1e-5, atol=1e-6)


def test_fold_of_the_fixture_generator_matches_its_output(fixture_models):
    for api in APIS:
        wn = fixture_models.build_generator(api, seed=0)
        plain = fixture_models.build_generator("none", seed=1)
        plain.load_state_dict(fold_state_dict(wn.state_dict()), strict=True)
        mel = torch.randn(1, 16, 5)
        with torch.no_grad():
            torch.testing.assert_close(plain(mel), wn(mel), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("api", APIS)
def test_top_level_module_fold_restyle_decompose(api):
    """A weight-normed layer that is the model itself: keys ``weight_g`` /
    ``parametrizations.weight.original0`` with no module prefix."""
    other = "parametrize" if api == "legacy" else "legacy"
    torch.manual_seed(0)
    wn = apply_wn(nn.Linear(4, 3), api, "weight", 0)
    x = torch.randn(2, 4)
    plain = nn.Linear(4, 3)
    plain.load_state_dict(fold_state_dict(wn.state_dict()), strict=True)
    target = apply_wn(nn.Linear(4, 3), other, "weight", 0)
    target.load_state_dict(restyle_state_dict(wn.state_dict(), style=other), strict=True)
    again = apply_wn(nn.Linear(4, 3), api, "weight", 0)
    again.load_state_dict(decompose_state_dict(plain.state_dict(), style=api), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), wn(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(target(x), wn(x), rtol=0, atol=0)
        torch.testing.assert_close(again(x), wn(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_state_dict_api_keeps_dtypes(dtype):
    wn = build("conv1d", "parametrize", 0).to(dtype)
    state = wn.state_dict()
    folded = fold_state_dict(state)
    assert all(t.dtype == dtype for t in folded.values())
    back = decompose_state_dict(folded, like=state)
    assert all(back[k].dtype == dtype for k in back)
    assert torch.equal(back["block.0.parametrizations.weight.original1"], folded["block.0.weight"])


# --------------------------------------------------------------------------- warnings


def test_fold_zero_norm_rows_warn_with_name_and_count():
    v = torch.randn(5, 3, 2)
    v[1] = 0
    v[3] = 0
    state = {"dec.conv.weight_g": torch.ones(5, 1, 1), "dec.conv.weight_v": v,
             "dec.conv.bias": torch.zeros(5)}
    with pytest.warns(WeightNormWarning) as record:
        folded = fold_state_dict(state)
    messages = [str(w.message) for w in record]
    assert any("dec.conv.weight" in m and "2 row" in m and "zero norm" in m for m in messages)
    assert torch.equal(folded["dec.conv.weight"][[1, 3]], torch.zeros(2, 3, 2))
    assert torch.isfinite(folded["dec.conv.weight"]).all()


@pytest.mark.parametrize("where", ["v", "g"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_fold_nan_or_inf_warns(where, bad):
    g, v = torch.ones(3, 1), torch.randn(3, 4)
    (v if where == "v" else g)[1, 0] = bad
    with pytest.warns(WeightNormWarning, match=r"lin\.weight: 1 row\(s\) with NaN or Inf"):
        fold_state_dict({"lin.parametrizations.weight.original0": g,
                         "lin.parametrizations.weight.original1": v})


def test_decompose_zero_norm_and_nonfinite_warn():
    w = torch.randn(4, 3)
    w[2] = 0
    with pytest.warns(WeightNormWarning, match=r"lin\.weight: 1 row\(s\) with zero norm"):
        out = decompose_state_dict({"lin.weight": w})
    assert out["lin.parametrizations.weight.original0"][2].item() == 0
    w = torch.randn(4, 3)
    w[0, 0] = float("nan")
    with pytest.warns(WeightNormWarning, match="NaN or Inf"):
        decompose_state_dict({"lin.weight": w})


def test_clean_fold_does_not_warn():
    state = build("conv2d", "legacy", 0).state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fold_state_dict(state)
        decompose_state_dict(fold_state_dict(state))


# --------------------------------------------------------------------------- find_pairs


def test_find_pairs_reports_dim_shape_dtype_and_style():
    state = OrderedDict()
    state.update(build("conv1d", "legacy", None).state_dict())
    state.update({f"p.{k}": t for k, t in build("conv1d", "parametrize", 1).state_dict().items()})
    pairs = find_pairs(state)
    assert [(p.weight_key, p.style, p.dim, p.shape, p.g_shape, p.dtype) for p in pairs] == [
        ("block.0.weight", "legacy", None, (4, 3, 3), (), "float32"),
        ("p.block.0.weight", "parametrize", 1, (4, 3, 3), (1, 3, 1), "float32"),
    ]
    assert pairs[1].to_dict()["g_key"] == "p.block.0.parametrizations.weight.original0"


def test_find_pairs_mismatched_shapes_raise_input_error_naming_parameter():
    state = {"enc.conv.weight_g": torch.ones(3, 1, 1), "enc.conv.weight_v": torch.ones(4, 2, 3)}
    with pytest.raises(InputError, match=r"'enc\.conv\.weight'"):
        find_pairs(state)
    with pytest.raises(InputError, match=r"'enc\.conv\.weight'"):
        fold_state_dict(state)


def test_find_pairs_refuses_integer_pairs():
    state = {"q.weight_g": torch.ones(3, 1, dtype=torch.int64),
             "q.weight_v": torch.ones(3, 2, dtype=torch.int64)}
    with pytest.raises(InputError, match=r"'q\.weight'.*int64"):
        find_pairs(state)


def test_plan_fold_refuses_weight_both_plain_and_pair():
    state = {"c.weight": torch.ones(2, 2), "c.weight_g": torch.ones(2, 1),
             "c.weight_v": torch.ones(2, 2)}
    with pytest.raises(InputError, match=r"'c\.weight' exists both"):
        plan_fold(state)


def test_plan_fold_is_lazy_and_describes_output():
    state = build("linear", "parametrize", 0).state_dict()
    conv = plan_fold(state)
    assert conv.action == "fold" and conv.unchanged == 1
    assert [(p.key, p.info.shape, p.info.dtype) for p in conv.plan] == [
        ("block.0.bias", (3,), "float32"), ("block.0.weight", (3, 4), "float32")]
    assert conv.plan[0].produce is None and conv.plan[1].produce is not None


# --------------------------------------------------------------------------- decompose plans


def mixed_state() -> dict[str, torch.Tensor]:
    return OrderedDict([
        ("enc.conv.weight", torch.randn(4, 3, 5)),
        ("enc.conv.bias", torch.randn(4)),
        ("enc.norm.weight", torch.ones(4)),  # LayerNorm weight: rank 1
        ("enc.norm.bias", torch.zeros(4)),
        ("embed.weight", torch.randn(10, 4, dtype=torch.float16)),
        ("codebook.weight", torch.arange(12).reshape(3, 4)),  # int64
        ("steps", torch.tensor(7)),
        ("rnn.weight_hh_l0", torch.randn(8, 2)),  # not *weight
        ("done.weight_g", torch.ones(2, 1)),  # already a pair
        ("done.weight_v", torch.randn(2, 3)),
        ("wn.parametrizations.weight.original0", torch.ones(2, 1)),
        ("wn.parametrizations.weight.original1", torch.randn(2, 3)),
        ("head.weight", torch.randn(2, 4, dtype=torch.bfloat16)),
    ])


def test_select_for_decompose_defaults():
    assert select_for_decompose(mixed_state()) == ["enc.conv.weight", "embed.weight",
                                                   "head.weight"]


def test_select_for_decompose_include_exclude_globs():
    state = mixed_state()
    assert select_for_decompose(state, include=["enc.*"]) == [
        "enc.conv.weight", "enc.conv.bias", "enc.norm.weight", "enc.norm.bias"]
    assert select_for_decompose(state, exclude=["embed.*", "*head*"]) == ["enc.conv.weight"]
    # include="*" still skips integer tensors and keys already in pairs.
    assert select_for_decompose(state, include=["*"]) == [
        "enc.conv.weight", "enc.conv.bias", "enc.norm.weight", "enc.norm.bias", "embed.weight",
        "rnn.weight_hh_l0", "head.weight"]
    assert select_for_decompose(state, include=["*weight_hh*"], exclude=["*"]) == []


@pytest.mark.parametrize(("dim", "g_shape"), [(0, (4, 1, 1)), (1, (1, 3, 1)), (2, (1, 1, 5)),
                                              (None, ())])
def test_plan_decompose_dims(dim, g_shape):
    state = mixed_state()
    conv = plan_decompose(state, dim=dim, include=["enc.conv.weight"], style="legacy")
    keys = [p.key for p in conv.plan]
    assert "enc.conv.weight_g" in keys and "enc.conv.weight_v" in keys
    assert "enc.conv.weight" not in keys
    (pair,) = conv.pairs
    assert pair.g_shape == g_shape and pair.dim == (None if dim is None else dim % 3)
    out = conv.to_state_dict()
    assert tuple(out["enc.conv.weight_g"].shape) == g_shape
    assert torch.equal(out["enc.conv.weight_v"], state["enc.conv.weight"])
    for key in state:  # everything else passes through as the same object
        if key != "enc.conv.weight":
            assert out[key] is state[key]


def test_plan_decompose_default_output_keys_and_dtypes():
    state = mixed_state()
    out = plan_decompose(state).to_state_dict()
    assert out["embed.parametrizations.weight.original0"].dtype == torch.float16
    assert out["head.parametrizations.weight.original0"].dtype == torch.bfloat16
    assert out["head.parametrizations.weight.original0"].shape == (2, 1)
    assert "enc.norm.weight" in out and "codebook.weight" in out and "done.weight_g" in out
    assert len(find_pairs(out)) == 5


@pytest.mark.parametrize("dim", [-1, -2])
def test_plan_decompose_negative_dim_is_refused_as_ambiguous(dim):
    # PyTorch's weight_norm(dim=-1) means the whole tensor, Python's -1 the last axis.
    with pytest.raises(InputError, match="non-negative axis, or 'none'"):
        plan_decompose({"lin.weight": torch.randn(3, 4)}, dim=dim)


@pytest.mark.parametrize("dim", [2, 3])
def test_plan_decompose_dim_out_of_range_is_input_error(dim):
    state = {"lin.weight": torch.randn(3, 4), "conv.weight": torch.randn(3, 4, 5)}
    with pytest.raises(InputError, match=rf"lin\.weight has shape \[3, 4\]: dim={dim}"):
        plan_decompose(state, dim=dim)


def test_plan_decompose_bad_style_is_input_error():
    with pytest.raises(InputError, match="style="):
        plan_decompose({"a.weight": torch.ones(2, 2)}, style="weightnorm")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="style="):
        plan_restyle({"a.weight": torch.ones(2, 2)}, style="new")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- like=


def test_like_reports_missing_unexpected_and_mismatched_keys():
    template = build("conv1d", "parametrize", 0).state_dict()
    template["extra.running_mean"] = torch.zeros(3)
    state = build("conv1d", None).state_dict()
    state["block.0.bias"] = torch.zeros(7)  # wrong shape
    state["stray.weight"] = torch.zeros(2, 2)
    with pytest.raises(InputError) as info:
        decompose_state_dict(state, like=template)
    message = str(info.value)
    assert "missing (1): extra.running_mean" in message
    assert "unexpected (1): stray.weight" in message
    assert "shape mismatch (1): block.0.bias (checkpoint [7], template [4])" in message


def test_like_missing_weight_for_a_template_pair():
    template = build("conv1d", "legacy", 0).state_dict()
    with pytest.raises(InputError, match=r"missing \(2\): block\.0\.weight_g, block\.0\.weight_v"):
        decompose_state_dict({"block.0.bias": torch.zeros(4)}, like=template)


def test_like_mismatched_weight_shape():
    template = build("conv1d", "legacy", 0).state_dict()
    state = build("conv1d", None).state_dict()
    state["block.0.weight"] = torch.zeros(4, 3, 4)
    with pytest.raises(InputError, match=r"block\.0\.weight \(checkpoint \[4, 3, 4\], template"):
        decompose_state_dict(state, like=template)


def test_like_folds_where_the_template_has_no_weight_norm():
    wn = build("conv1d", "legacy", 0)
    template = build("conv1d", None, seed=4).state_dict()
    conv = plan_decompose(wn.state_dict(), like=template)
    assert any("folded block.0.weight" in note for note in conv.notes)
    out = conv.to_state_dict()
    plain = build("conv1d", None, seed=4)
    plain.load_state_dict(out, strict=True)
    x = example_input("conv1d")
    with torch.no_grad():
        torch.testing.assert_close(plain(x), wn(x), rtol=1e-5, atol=1e-6)


def test_like_renames_pairs_between_styles_without_arithmetic():
    wn = build("linear", "legacy", None)
    template = build("linear", "parametrize", None, seed=8).state_dict()
    out = decompose_state_dict(wn.state_dict(), like=template)
    assert torch.equal(out["block.0.parametrizations.weight.original0"],
                       wn.state_dict()["block.0.weight_g"])
    assert torch.equal(out["block.0.parametrizations.weight.original1"],
                       wn.state_dict()["block.0.weight_v"])


def test_like_with_pair_of_other_dim_is_a_shape_mismatch():
    wn = build("linear", "legacy", 0).state_dict()
    template = build("linear", "legacy", 1).state_dict()
    with pytest.raises(InputError, match=r"shape mismatch.*block\.0\.weight_g"):
        decompose_state_dict(wn, like=template)


def test_like_accepts_a_template_with_wav2vec2_dim2():
    conv = nn.Conv1d(4, 4, 5, groups=2)
    plain_state = {"pos_conv.weight": conv.weight.detach().clone(),
                   "pos_conv.bias": conv.bias.detach().clone()}
    wn = nn.utils.parametrizations.weight_norm(nn.Conv1d(4, 4, 5, groups=2), dim=2)
    template = {f"pos_conv.{k}": t for k, t in wn.state_dict().items()}
    out = decompose_state_dict(plain_state, like=template)
    assert out["pos_conv.parametrizations.weight.original0"].shape == (1, 1, 5)
    (pair,) = find_pairs(out)
    assert pair.dim == 2


# --------------------------------------------------------------------------- restyle


def test_restyle_clash_is_input_error():
    state = {"c.weight_g": torch.ones(2, 1), "c.weight_v": torch.ones(2, 2),
             "c.parametrizations.weight.original0": torch.ones(2, 1)}
    with pytest.raises(InputError, match="duplicate keys: c.parametrizations.weight.original0"):
        restyle_state_dict(state, style="parametrize")


def test_restyle_to_the_same_style_changes_nothing():
    state = build("conv1d", "parametrize", 0).state_dict()
    conv = plan_restyle(state, style="parametrize")
    assert conv.pairs == []  # nothing moved
    out = conv.to_state_dict()
    assert list(out) == list(state) and all(out[k] is state[k] for k in state)
