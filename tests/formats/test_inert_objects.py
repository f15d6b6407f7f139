"""Checkpoints holding objects of other classes (issue 18, point 2): read inertly, never run.

The layouts are the ones people hold, written by ``torch.save`` here with real classes: fairseq's
(``args`` an ``argparse.Namespace``, ``cfg`` holding an omegaconf-like object, the model under
``model`` with the ``dim=2`` positional conv, optimizer history) and Lightning's (a user class in
``hyper_parameters``, optimizer states). Each foreign class below is a trap: its ``__init__``,
``__setstate__`` or ``__reduce__`` path writes a marker file when a trusting loader builds it.
Every test checks that no marker appears, and that the traps do fire under ``weights_only=False``
(so the check is not vacuous).
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from wnconvert import InputError, WeightNormWarning
from wnconvert.convert import plan_fold
from wnconvert.formats import load_checkpoint, write_checkpoint
from wnconvert.formats import torch_pickle as tp


class OmegaLikeConfig:
    """Pickles like omegaconf's DictConfig (NEWOBJ, then BUILD with ``__getstate__``'s dict):
    a trusting loader calls ``__setstate__``, which writes the marker."""

    def __init__(self, content: dict, marker: Path) -> None:
        self._content = content
        self._marker = str(marker)

    def __getstate__(self) -> dict:
        return {"_content": self._content, "_marker": self._marker,
                "_metadata": {"ref_type": "typing.Any", "flags": {}}}

    def __setstate__(self, state: dict) -> None:
        Path(state["_marker"]).with_suffix(".setstate").write_text("ran")
        self.__dict__.update(state)


class UserConfig:
    """A training script's config class: ``__reduce__`` makes a trusting loader call the class
    (its ``__init__`` writes the marker) and then ``__setstate__`` (another marker)."""

    def __init__(self, marker: str, lr: float, armed: bool = True) -> None:
        self.marker, self.lr = marker, lr
        if armed:
            Path(marker).with_suffix(".init").write_text("ran")

    def __reduce__(self):
        return (UserConfig, (self.marker, self.lr), {"marker": self.marker, "lr": self.lr})

    def __setstate__(self, state: dict) -> None:
        Path(state["marker"]).with_suffix(".setstate2").write_text("ran")
        self.__dict__.update(state)


def fired(marker: Path) -> list[str]:
    return sorted(p.name for p in marker.parent.glob(marker.name + "*"))


def fairseq_checkpoint(path: Path, marker: Path) -> dict[str, torch.Tensor]:
    """wav2vec2/HuBERT as fairseq saves it: the positional conv normed over dim 2."""
    torch.manual_seed(0)
    model = OrderedDict([
        ("encoder.pos_conv.0.bias", torch.randn(4)),
        ("encoder.pos_conv.0.weight_g", torch.rand(1, 1, 5) + 0.5),
        ("encoder.pos_conv.0.weight_v", torch.randn(4, 2, 5)),
        ("encoder.layer_norm.weight", torch.ones(4)),
        ("encoder.proj.weight", torch.randn(3, 4)),  # plain: what decompose picks
    ])
    args = argparse.Namespace(arch="wav2vec2", lr=[0.0005], conv_pos=128, conv_pos_groups=16)
    torch.save({
        "args": args,
        "cfg": {"_name": None, "model": OmegaLikeConfig({"_name": "wav2vec2"}, marker),
                "common": {"seed": 1}},
        "model": model,
        "criterion": None,
        "optimizer_history": [{"criterion_name": "Wav2vecCriterion", "optimizer_name": "Adam",
                               "lr_scheduler_state": {"best": None}, "num_updates": 400000}],
        "task_state": {},
        "extra_state": {"epoch": 12, "val_loss": 1.5},
        "last_optimizer_state": {"state": {0: {"exp_avg": torch.zeros(4)}},
                                 "param_groups": [{"lr": 0.0005, "params": [0]}]},
    }, path)
    return model


def lightning_checkpoint(path: Path, marker: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    state = OrderedDict([
        ("generator.conv.parametrizations.weight.original0", torch.rand(3, 1, 1) + 0.5),
        ("generator.conv.parametrizations.weight.original1", torch.randn(3, 2, 4)),
        ("generator.conv.bias", torch.randn(3)),
        ("generator.out.weight", torch.randn(2, 3)),  # plain: what decompose picks
    ])
    config = object.__new__(UserConfig)  # built without __init__: the test itself fires nothing
    config.marker, config.lr = str(marker), 2e-4
    torch.save({
        "epoch": 3, "global_step": 1200, "pytorch-lightning_version": "2.4.0",
        "state_dict": state,
        "loops": {"fit_loop": {"state_dict": {}}},
        "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(0.25)}},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(1200.0)}},
                              "param_groups": [{"lr": 2e-4}]}],
        "lr_schedulers": [{"last_epoch": 3}],
        "hyper_parameters": {"lr": 2e-4, "config": config, "sampling_rate": 22050},
    }, path)
    return state


@pytest.fixture
def fairseq(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "checkpoint_best.pt"
    return path, marker, fairseq_checkpoint(path, marker)


@pytest.fixture
def lightning(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "last.ckpt"
    return path, marker, lightning_checkpoint(path, marker)


def test_the_traps_are_live(fairseq, lightning):
    """A trusting loader does run them: the marker checks below mean something."""
    for path, marker, _ in (fairseq, lightning):
        torch.load(path, weights_only=False)
        assert fired(marker)
        for p in marker.parent.glob(marker.name + "*"):
            p.unlink()


# --------------------------------------------------------------------------- library


def test_fairseq_layout_loads_inertly(fairseq):
    path, marker, model = fairseq
    before = set(torch.serialization.get_safe_globals())  # torch keeps them in a set
    checkpoint = load_checkpoint(path)
    # The placeholders were allowed for this load only: torch's process-wide list is as it was.
    assert set(torch.serialization.get_safe_globals()) == before
    with pytest.raises(pickle.UnpicklingError, match="argparse.Namespace"):
        torch.load(path, weights_only=True)
    assert checkpoint.key_path == ("model",)
    for key, value in model.items():
        assert torch.equal(checkpoint.state_dict[key], value)
    args = checkpoint.container["args"]
    assert isinstance(args, tp.Placeholder)
    assert args.global_name == "argparse.Namespace"
    # NEWOBJ then BUILD: the Namespace's attributes are recorded as plain data, not set.
    assert args.state == {"arch": "wav2vec2", "lr": [0.0005], "conv_pos": 128,
                          "conv_pos_groups": 16}
    cfg_model = checkpoint.container["cfg"]["model"]
    assert cfg_model.global_name == f"{__name__}.OmegaLikeConfig"
    assert cfg_model.state["_content"] == {"_name": "wav2vec2"}
    assert checkpoint.container["optimizer_history"][0]["num_updates"] == 400000
    assert fired(marker) == []


def test_lightning_layout_loads_inertly(lightning):
    path, marker, state = lightning
    checkpoint = load_checkpoint(path)
    assert checkpoint.key_path == ("state_dict",)
    config = checkpoint.container["hyper_parameters"]["config"]
    assert config.global_name == f"{__name__}.UserConfig"
    assert config.args == (str(marker), 2e-4)  # REDUCE: the arguments, recorded
    assert config.state == {"marker": str(marker), "lr": 2e-4}  # BUILD: the state, recorded
    assert checkpoint.container["hyper_parameters"]["sampling_rate"] == 22050
    assert fired(marker) == []


def test_layout_names_what_was_not_loaded(fairseq):
    path, _, _ = fairseq
    checkpoint = load_checkpoint(path)
    entries = {e["key"]: e for e in checkpoint.layout()["entries"]}
    assert entries["args"]["kind"] == "argparse.Namespace (not loaded)"
    assert entries["args"]["not_loaded"] == ["argparse.Namespace"]
    assert entries["cfg"]["kind"] == "dict (3 entries)"
    assert entries["cfg"]["not_loaded"] == [f"{__name__}.OmegaLikeConfig"]
    assert entries["model"]["not_loaded"] == []
    assert entries["optimizer_history"]["not_loaded"] == []


def test_fold_writes_a_pt_without_the_placeholders_and_names_them(fairseq, tmp_path):
    path, marker, model = fairseq
    checkpoint = load_checkpoint(path)
    plan = plan_fold(checkpoint.state_dict).plan
    out = tmp_path / "folded.pt"
    with pytest.warns(WeightNormWarning, match="container entries args, cfg are not written: "
                                               "they hold objects that were not loaded") as caught:
        write_checkpoint(checkpoint, plan, out, fmt="pt")
    assert len(caught) == 1
    written = torch.load(out, weights_only=True)  # plain data again: loads without placeholders
    assert list(written) == ["model", "criterion", "optimizer_history", "task_state",
                             "extra_state", "last_optimizer_state"]
    g, v = model["encoder.pos_conv.0.weight_g"], model["encoder.pos_conv.0.weight_v"]
    expected = torch._weight_norm(v.double(), g.double(), 2).float()
    torch.testing.assert_close(written["model"]["encoder.pos_conv.0.weight"], expected)
    assert written["extra_state"] == {"epoch": 12, "val_loss": 1.5}
    assert torch.equal(written["last_optimizer_state"]["state"][0]["exp_avg"], torch.zeros(4))
    assert fired(marker) == []


def test_nested_state_dict_drops_only_the_entries_with_placeholders():
    placeholder = tp.placeholder_class("argparse.Namespace")()
    container = {"model": {"ema": {"w": torch.ones(1)}, "args": placeholder, "n": 1},
                 "cfg": [placeholder], "epoch": 2}
    kept, dropped = tp.drop_placeholders(container, ("model", "ema"))
    assert dropped == ["model.args", "cfg"]
    assert kept == {"model": {"ema": {"w": torch.ones(1)}, "n": 1}, "epoch": 2}
    assert "args" in container["model"]  # the input is untouched


def test_a_placeholder_cannot_be_written_back(tmp_path):
    placeholder = tp.placeholder_class("argparse.Namespace")()
    with pytest.raises(TypeError, match="argparse.Namespace was not loaded"):
        torch.save({"args": placeholder}, tmp_path / "x.pt")
    with pytest.raises(TypeError, match="not loaded"):
        pickle.dumps(placeholder)


def test_a_placeholder_runs_nothing_and_calls_nothing():
    cls = tp.placeholder_class("evil.Thing")
    made = cls("a", k=1)
    made.__setstate__({"x": 1})
    assert (made.args, made.kwargs, made.state) == (("a",), {"k": 1}, {"x": 1})
    assert repr(made) == "evil.Thing (not loaded)"
    assert not callable(made)
    assert cls.__module__ == "wnconvert.formats.torch_pickle"  # no foreign module to import
    with pytest.raises(AttributeError):
        made.anything  # noqa: B018 - no attribute is invented for the code that receives it


# --------------------------------------------------------------------------- still refused


class CallsEval:
    def __reduce__(self):
        return (eval, ("open('pwned', 'w')",))


class RunsSubprocess:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (subprocess.call, (["touch", str(self.marker)],))


@pytest.mark.parametrize("payload", ["eval", "subprocess"])
def test_globals_only_an_attack_needs_are_still_refused(tmp_path, payload, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    obj = CallsEval() if payload == "eval" else RunsSubprocess(marker)
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "x": obj}, path)
    with pytest.raises(InputError, match="refused to load: the file needs arbitrary code") as info:
        load_checkpoint(path)
    # protocol 2 spells subprocess.call the Python 2 way, commands.call
    assert ("builtins.eval" if payload == "eval" else "commands.call") in str(info.value)
    assert not marker.exists()


def test_a_hostile_global_beside_harmless_ones_is_refused(tmp_path):
    """The first refused global is a harmless class; the attack comes later in the file."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"args": argparse.Namespace(a=1), "state_dict": {"w": torch.ones(2)},
                "z": RunsSubprocess(marker)}, path)
    with pytest.raises(InputError, match=r"refused to load.*commands\.call"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("name, hostile", [
    ("builtins.exec", True), ("posix.system", True), ("os.path.join", True),
    ("torch.storage._load_from_bytes", True), ("subprocess.Popen", True),
    ("argparse.Namespace", False), ("omegaconf.dictconfig.DictConfig", False),
    ("typing.Any", False), ("pathlib_extra.Thing", False), ("commands.getoutput", True),
    ("__builtin__.eval", True), ("cPickle.loads", True), ("builtins.bytes", False),
    ("__builtin__.slice", False), ("functools.partial", False),
])
def test_is_hostile_global(name, hostile):
    assert tp.is_hostile_global(name) is hostile


# --------------------------------------------------------------------------- CLI end to end


def test_inspect_shows_placeholders_beside_tensors(fairseq, cli, assert_ok):
    path, marker, _ = fairseq
    out = assert_ok(cli("inspect", path)).stdout
    assert "args: argparse.Namespace (not loaded)" in out
    assert f"cfg: dict (3 entries); not loaded inside: {__name__}.OmegaLikeConfig" in out
    assert "▶ model: state dict (5 tensors)" in out
    assert "encoder.pos_conv.0.weight" in out
    report = json.loads(assert_ok(cli("inspect", path, "--json")).stdout)
    entries = {e["key"]: e for e in report["container"]["entries"]}
    assert entries["args"]["kind"] == "argparse.Namespace (not loaded)"
    assert report["pairs"][0]["dim"] == 2
    assert fired(marker) == []


@pytest.mark.parametrize("layout", ["fairseq", "lightning"])
@pytest.mark.parametrize("command, suffix", [("fold", ".pt"), ("fold", ".safetensors"),
                                             ("decompose", ".pt")])
def test_fold_and_decompose_write_the_tensors_and_name_what_they_drop(
        layout, command, suffix, request, tmp_path, cli, assert_ok):
    path, marker, state = request.getfixturevalue(layout)
    out = tmp_path / f"out{suffix}"
    result = assert_ok(cli(command, path, "-o", out))
    dropped = "args, cfg" if layout == "fairseq" else "hyper_parameters"
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1, result.stderr
    if suffix == ".pt":
        assert f"container entries {dropped} are not written: they hold objects that were " \
               "not loaded" in warning[0]
        written = torch.load(out, weights_only=True)
        key = "model" if layout == "fairseq" else "state_dict"
        assert set(written[key]) != set(state)  # converted
    else:
        assert "safetensors holds tensors only" in warning[0]
    assert fired(marker) == []
