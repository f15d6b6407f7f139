"""PyTorch pickles: weights-only loading, finding the state dict in containers, bad files."""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict

import pytest
import torch

from tests.formats.payloads import OpensForWriting, RunsShell
from wnconvert import InputError
from wnconvert.convert import plan_fold
from wnconvert.formats import load_checkpoint, write_checkpoint
from wnconvert.formats import torch_pickle as tp


def wn_state(prefix: str = "", seed: int = 0) -> OrderedDict:
    torch.manual_seed(seed)
    return OrderedDict([
        (f"{prefix}conv.parametrizations.weight.original0", torch.rand(3, 1, 1) + 0.5),
        (f"{prefix}conv.parametrizations.weight.original1", torch.randn(3, 2, 4)),
        (f"{prefix}conv.bias", torch.randn(3)),
    ])


def plain_state(seed: int = 1) -> OrderedDict:
    torch.manual_seed(seed)
    return OrderedDict([("disc.weight", torch.randn(2, 2)), ("disc.bias", torch.randn(2))])


# --------------------------------------------------------------------------- finding the state dict


def test_plain_state_dict(save_pt):
    path = save_pt(wn_state())
    ckpt = load_checkpoint(path)
    assert ckpt.format == "pt" and ckpt.key_path == ()
    assert list(ckpt.state_dict) == list(wn_state())
    assert ckpt.layout()["state_dict_key"] is None


@pytest.mark.parametrize(
    ("container", "key_path"),
    [
        ({"generator": wn_state(), "steps": 1}, ("generator",)),
        ({"state_dict": wn_state(), "epoch": 3, "global_step": 120,
          "hyper_parameters": {"lr": 1e-3, "name": "hifigan"}, "pytorch-lightning_version": "2.4"},
         ("state_dict",)),
        ({"generator": wn_state(), "discriminator": plain_state(), "steps": 5}, ("generator",)),
        ({"model": {"ema": wn_state(), "raw": plain_state()}, "step": 2}, ("model", "ema")),
    ],
    ids=["hifigan", "lightning", "two-one-with-pairs", "nested"],
)
def test_containers_pick_the_state_dict(save_pt, container, key_path):
    ckpt = load_checkpoint(save_pt(container))
    assert ckpt.key_path == key_path
    assert list(ckpt.state_dict) == list(wn_state())


def test_two_state_dicts_with_pairs_need_key(save_pt):
    path = save_pt({"generator": wn_state(), "ema": wn_state(seed=3), "steps": 1})
    with pytest.raises(InputError, match=r"several state dicts found \(generator, ema\); "
                                         r"choose one with key="):
        load_checkpoint(path)
    ckpt = load_checkpoint(path, key="ema")
    assert ckpt.key_path == ("ema",)
    assert torch.equal(ckpt.state_dict["conv.bias"], wn_state(seed=3)["conv.bias"])


def test_two_state_dicts_without_pairs_need_key(save_pt):
    path = save_pt({"a": plain_state(), "b": plain_state(2)})
    with pytest.raises(InputError, match="key="):
        load_checkpoint(path)


def test_key_dotted_path_and_errors(save_pt):
    path = save_pt({"model": {"ema": wn_state(), "raw": plain_state()}, "opt": {"lr": 0.1}})
    assert load_checkpoint(path, key="model.raw").key_path == ("model", "raw")
    with pytest.raises(InputError, match=r"no entry 'model\.nope'; state dicts found at: "
                                         r"model\.ema, model\.raw"):
        load_checkpoint(path, key="model.nope")
    with pytest.raises(InputError, match=r"entry 'opt' is not a state dict"):
        load_checkpoint(path, key="opt")


def test_key_with_a_dot_in_the_entry_name(save_pt):
    path = save_pt({"model.ema": wn_state(), "other": plain_state()})
    assert load_checkpoint(path, key="model.ema").key_path == ("model.ema",)


def test_no_state_dict_in_container(save_pt):
    with pytest.raises(InputError, match="no state dict"):
        load_checkpoint(save_pt({"steps": 1, "names": ["a", "b"]}))


def test_candidate_paths_stop_at_depth_and_skip_non_mappings():
    deep = {"a": {"b": {"c": {"d": {"e": wn_state()}}}}}
    assert tp.candidate_paths(deep) == []
    assert tp.candidate_paths({"l": [wn_state()], "t": torch.ones(1)}) == []
    assert tp.candidate_paths({"x": {"y": wn_state()}}) == [("x", "y")]
    assert not tp.is_tensor_mapping({})
    assert not tp.is_tensor_mapping({1: torch.ones(1)})


def test_replace_at_leaves_the_input_untouched():
    container = {"generator": wn_state(), "steps": 1, "nested": {"sd": plain_state()}}
    replaced = tp.replace_at(container, ("nested", "sd"), {"x": torch.ones(1)})
    assert list(container["nested"]["sd"]) == ["disc.weight", "disc.bias"]
    assert list(replaced["nested"]["sd"]) == ["x"]
    assert replaced["generator"] is container["generator"]
    assert tp.replace_at(container, (), "whole") == "whole"


def test_describe_layout():
    container = {"generator": wn_state(), "steps": 12500, "opt": {"lr": 0.1}, "hist": [1, 2],
                 "scale": torch.ones(2)}
    rows = tp.describe_layout(container, ("generator",))
    assert rows == [
        {"key": "generator", "kind": "state dict (3 tensors)", "selected": True, "not_loaded": []},
        {"key": "steps", "kind": "int = 12500", "selected": False, "not_loaded": []},
        {"key": "opt", "kind": "dict (1 entries)", "selected": False, "not_loaded": []},
        {"key": "hist", "kind": "list (2 items)", "selected": False, "not_loaded": []},
        {"key": "scale", "kind": "tensor [2]", "selected": False, "not_loaded": []},
    ]
    assert tp.describe_layout(wn_state(), ()) == []


# --------------------------------------------------------------------------- writing back


@pytest.mark.parametrize("legacy_zip", [False, True])
def test_write_checkpoint_keeps_every_other_entry(tmp_path, save_pt, legacy_zip):
    optimizer = {"state": {0: {"exp_avg": torch.randn(3, 2, 4)}}, "param_groups": [{"lr": 0.1}]}
    container = {"generator": wn_state(), "discriminator": plain_state(), "steps": 12500,
                 "epoch": 7, "optim_g": optimizer, "config": {"sr": 22050, "name": "x"}}
    path = tmp_path / "ckpt.pt"
    torch.save(container, path, _use_new_zipfile_serialization=not legacy_zip)
    ckpt = load_checkpoint(path)
    out = tmp_path / "out.pt"
    write_checkpoint(ckpt, plan_fold(ckpt.state_dict).plan, out, fmt="pt")
    written = torch.load(out, weights_only=True)
    assert list(written) == list(container)
    for key in ("steps", "epoch", "config"):
        assert written[key] == container[key]
    for key, tensor in container["discriminator"].items():
        assert torch.equal(written["discriminator"][key], tensor)
    assert torch.equal(written["optim_g"]["state"][0]["exp_avg"],
                       optimizer["state"][0]["exp_avg"])
    assert written["optim_g"]["param_groups"] == optimizer["param_groups"]
    assert list(written["generator"]) == ["conv.weight", "conv.bias"]
    assert torch.equal(written["generator"]["conv.bias"], container["generator"]["conv.bias"])
    # The input file is untouched.
    again = torch.load(path, weights_only=True)
    assert list(again["generator"]) == list(wn_state())


def test_state_dict_metadata_survives(tmp_path):
    module = torch.nn.Sequential(torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(2, 3)))
    state = module.state_dict()
    path = tmp_path / "m.pt"
    torch.save(state, path)
    ckpt = load_checkpoint(path)
    out = tmp_path / "folded.pt"
    write_checkpoint(ckpt, plan_fold(ckpt.state_dict).plan, out, fmt="pt")
    written = torch.load(out, weights_only=True)
    assert getattr(written, "_metadata", None) == state._metadata


# --------------------------------------------------------------------------- bad files


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize("text", [
    "hello world, not a checkpoint\n",
    "this is text\n",
    "model weights v1\n",
    "# README\nsome notes\n",
    "",
])
def test_text_file_named_pt_is_input_error(tmp_path, text):
    path = tmp_path / "notes.pt"
    path.write_text(text)
    with pytest.raises(InputError, match="notes.pt"):
        load_checkpoint(path)


def test_text_file_is_not_reported_as_code_execution(tmp_path):
    """A README saved as .pt is not a malicious pickle; the message must not say it needs
    arbitrary code (it is not a torch.save file at all)."""
    path = tmp_path / "notes.pt"
    path.write_text("model weights v1\n")
    with pytest.raises(InputError) as info:
        load_checkpoint(path)
    assert "arbitrary code" not in str(info.value)
    assert "not a readable PyTorch checkpoint" in str(info.value)


def test_random_bytes_and_truncated_zip_are_input_errors(tmp_path, save_pt):
    path = tmp_path / "noise.bin"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(InputError):
        load_checkpoint(path)
    good = save_pt({"w": torch.randn(64, 64)}, "good.pt")
    data = good.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.pt: not a readable PyTorch checkpoint"):
        load_checkpoint(cut)


@pytest.mark.parametrize("payload", [RunsShell, OpensForWriting])
@pytest.mark.parametrize("writer", ["torch.save", "pickle-protocol-2"])
def test_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path, payload, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    obj = {"state_dict": {"w": torch.ones(2)}, "hook": payload(marker)}
    if writer == "torch.save":
        torch.save(obj, path)
    else:  # a raw pickle that torch's legacy loader parses up to the GLOBAL opcode
        path.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(InputError, match="refused") as info:
        load_checkpoint(path)
    assert "evil.pt" in str(info.value)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_raw_pickle_with_code_is_an_input_error_and_nothing_runs(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"hook": RunsShell(marker)}, protocol=protocol))
    with pytest.raises(InputError, match="evil.pt"):
        load_checkpoint(path)
    assert not marker.exists()


def test_refusal_names_the_culprit(tmp_path):
    """The message says what the file wanted to run (torch 2.13 words it 'unsupported GLOBAL
    posix.system'), so users can tell a custom class from an attack."""
    path = tmp_path / "evil.pt"
    torch.save({"hook": RunsShell(tmp_path / "pwned")}, path)
    with pytest.raises(InputError, match="refused") as info:
        load_checkpoint(path)
    assert "system" in str(info.value)
