"""``fold CKPT --to onnx --model`` (export + verification) on real ``transformers`` audio models.

The models are the library's own classes at tiny sizes, built from their config classes with
random weights (nothing is downloaded; see ``transformers_models.py``, the ``--model`` file).
Each checkpoint is saved as training leaves it: weight norm applied, g/v pairs. The CLI runs in
process; exit 0 means the export verified on ONNX Runtime within the default tolerances.

A model that torch's exporters cannot convert is recorded with wnconvert's contract for it:
exit 3 naming the operator. When a newer torch or transformers exports it, that test fails:
move the model to the passing list.

transformers is a test-only dependency that CI does not install: this file then skips.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

# Skips the whole file where transformers is not installed (CI); the imports below need
# only torch, so they may follow.
pytest.importorskip("transformers")

import onnx
import torch
from torch import nn
from typer.testing import CliRunner, Result

from tests.export import transformers_models as tfm
from wnconvert.cli import app

pytestmark = pytest.mark.slow

MODELS_FILE = Path(tfm.__file__).resolve()
PARAMETRIZED = re.compile(r"^(.*)\.parametrizations\.(\w+)\.original([01])$")


def legacy_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``X.parametrizations.weight.original0/1`` -> ``X.weight_g/_v``: the key style of
    ``torch.nn.utils.weight_norm``, which older checkpoints (fairseq's wav2vec 2.0) have."""
    out = {}
    for key, value in state.items():
        match = PARAMETRIZED.match(key)
        out[f"{match[1]}.{match[2]}_{'gv'[int(match[3])]}" if match else key] = value
    return out


def folded_names(state: dict[str, torch.Tensor]) -> set[str]:
    """The plain parameter names of the checkpoint's weight-norm pairs (``X.weight``)."""
    names = set()
    for key in state:
        match = PARAMETRIZED.match(key)
        if match:
            names.add(f"{match[1]}.{match[2]}")
        elif key.endswith("_g") and f"{key[:-2]}_v" in state:
            names.add(key[:-2])
    return names


def _own_weight_norm(model: nn.Module) -> nn.Module:
    return tfm.apply_weight_norm(model)


def _vits_decoder_weight_norm(model: nn.Module) -> nn.Module:
    # VITS's flows already have weight norm; its HiFi-GAN decoder gets it for training.
    model.decoder.apply_weight_norm()
    return model


@dataclass(frozen=True)
class Case:
    builder: str  # callable in transformers_models.py
    shape: str  # --input
    with_weight_norm: Callable[[nn.Module], nn.Module] | None  # None: built with it
    extra: tuple[str, ...] = ()
    legacy: bool = False  # save weight_g/weight_v keys
    gain: float = 1.0  # see transformers_models.randomize
    unused: tuple[str, ...] = ()  # modules the inference forward does not run
    data_dependent: str | None = None  # an output whose length depends on input values


PASSING = {
    # The SpeechT5 TTS vocoder; its time axis (frames) dynamic, as a vocoder is deployed.
    "SpeechT5HifiGan": Case("build_speecht5_hifigan", "1x8x16", _own_weight_norm,
                            ("--dynamic", "0:1=frames")),
    # Positional convolution with weight norm over dim=2 (the class always has it).
    "HubertModel": Case("build_hubert", "1x400", None, ("--dynamic", "0:1=samples")),
    # Same layer, saved with the old weight_g/weight_v keys of fairseq-era checkpoints.
    "Wav2Vec2Model": Case("build_wav2vec2", "1x400", None, legacy=True),
    # Depthwise convolution + BatchNorm in each conformer block, fused by the exporter into
    # tensors that are no parameter (issue 16): reported as derived, not compared. The class
    # builds a weight-normed positional convolution that its forward never runs.
    "Wav2Vec2ConformerModel": Case("build_wav2vec2_conformer", "1x400", None,
                                   unused=("encoder.pos_conv_embed.",)),
    "Wav2Vec2ConformerModel-legacy": Case("build_wav2vec2_conformer", "1x400", None,
                                          ("--exporter", "legacy"),
                                          unused=("encoder.pos_conv_embed.",)),
    # norm_type="weight_norm". torch.export cannot capture it (its convolutions compute their
    # padding from tensor buffers: a data-dependent guard in EncodecConv1d._pad1d), so the
    # legacy TorchScript exporter converts it, with a note on stderr.
    "EncodecModel": Case("build_encodec", "1x1x160", None),
    "DacModel": Case("build_dac", "1x1x160", _own_weight_norm, ("--dynamic", "0:2=samples"),
                     gain=0.5),
    # Token ids in, any number of them; noise_scale 0 so the output is deterministic. The
    # output length comes from the predicted durations (data-dependent): torch.export stops at
    # aten._is_all_true, the TorchScript exporter converts it and the lengths follow the input
    # (two random draws of one shape give two lengths). The posterior encoder is used in
    # training only, so its folded weights are not in the graph.
    "VitsModel": Case("build_vits", "1x6:int64", _vits_decoder_weight_norm,
                      ("--dynamic", "0:1=tokens", "--runs", "2"),
                      unused=("posterior_encoder.",), data_dependent="waveform"),
}


def weight_normed_checkpoint(case: Case, path: Path) -> dict[str, torch.Tensor]:
    model = tfm.randomize(getattr(tfm, case.builder)(), gain=case.gain)
    if case.with_weight_norm is not None:
        case.with_weight_norm(model)
    state = tfm.weight_normed_state_dict(model)
    if case.legacy:
        state = legacy_keys(state)
    assert folded_names(state), "the checkpoint must have weight-norm pairs"
    torch.save(state, path)
    return state


def fold_to_onnx(ckpt: Path, builder: str, shape: str, out: Path, *extra: str) -> Result:
    return CliRunner().invoke(app, ["fold", str(ckpt), "--to", "onnx", "--model",
                                    f"{MODELS_FILE}:{builder}", "--input", shape, "-o",
                                    str(out), "--json", *extra])


@pytest.mark.parametrize("name", list(PASSING))
def test_a_weight_normed_checkpoint_exports_and_verifies(tmp_path: Path, name: str) -> None:
    case = PASSING[name]
    state = weight_normed_checkpoint(case, tmp_path / "ckpt.pt")
    out = tmp_path / "out.onnx"
    result = fold_to_onnx(tmp_path / "ckpt.pt", case.builder, case.shape, out, *case.extra)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] is True
    # Outputs large enough that the tolerances check something (random init makes them so).
    assert "error could pass" not in result.stderr, result.stderr
    assert report["export"]["runtime_weight_norm"] == []
    if "Conformer" in name:  # the fused depthwise convolutions are derived, not compared
        derived = report["verification"]["weights"]["derived"]
        assert derived and all("BatchNorm" in d["note"] and d["compared"] is False
                               for d in derived)
    if case.data_dependent:
        [output] = [o for o in report["verification"]["providers"][0]["outputs"]
                    if o["name"] == case.data_dependent]
        lengths = {tuple(c["shape"]) for c in output["cases"] if c["case"].startswith("run ")}
        assert len(lengths) > 1, "the random draws should give outputs of different lengths"

    lint = CliRunner().invoke(app, ["check", str(out)])
    assert lint.exit_code == 0, lint.output
    assert "clean" in lint.stdout

    # Every folded weight the graph uses is stored under its parameter name.
    initializers = {init.name for init in onnx.load(out).graph.initializer}
    expected = {n for n in folded_names(state) if not n.startswith(case.unused)}
    assert expected <= initializers, sorted(expected - initializers)


def test_mimi_cannot_be_converted_and_exits_3_naming_the_operator(tmp_path: Path) -> None:
    """MimiModel (transformers 5), weight norm applied to its convolutions as a user training
    it with weight norm would: torch.export stops at a data-dependent guard (its padding is
    computed from tensor buffers, as EnCodec's) and the TorchScript exporter has no ONNX
    function for ``aten::diff`` (transformers' packed-sequence check when building the
    attention mask, masking_utils.find_packed_sequence_indices)."""
    model = tfm.apply_weight_norm(tfm.randomize(tfm.build_mimi()))
    state = tfm.weight_normed_state_dict(model)
    assert folded_names(state)
    torch.save(state, tmp_path / "ckpt.pt")
    out = tmp_path / "out.onnx"
    result = fold_to_onnx(tmp_path / "ckpt.pt", "build_mimi", "1x1x160", out)
    assert result.exit_code == 3, result.output
    assert "unsupported operator aten::diff" in result.stderr
    assert "torch.export-based exporter failed" in result.stderr
    assert "legacy TorchScript exporter failed" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("lightning", [False, True], ids=["hf", "lightning"])
def test_an_hf_task_model_checkpoint_fits_the_base_model_after_its_prefix(
        tmp_path: Path, lightning: bool) -> None:
    """Issue 11 §4: a HubertForCTC state dict (``hubert.`` prefix, plus ``lm_head``), alone or
    inside a Lightning checkpoint (``{'state_dict': {'model.' + k: v}}``), exported with
    ``--model`` building HubertModel: the prefix is found, reported, and the head left out."""
    task = tfm.randomize(tfm.build_hubert_for_ctc())
    state = tfm.weight_normed_state_dict(task)
    assert {k.split(".")[0] for k in state} == {"hubert", "lm_head"}
    assert folded_names(state) == {"hubert.encoder.pos_conv_embed.conv.weight"}
    prefix = "model.hubert." if lightning else "hubert."
    if lightning:
        torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3},
                   tmp_path / "ckpt.pt")
    else:
        torch.save(state, tmp_path / "ckpt.pt")
    out = tmp_path / "out.onnx"
    result = fold_to_onnx(tmp_path / "ckpt.pt", "build_hubert", "1x400", out)
    assert result.exit_code == 0, result.output
    assert (f"note: keys fit the model after a prefix change: prefix '{prefix}' removed; "
            "2 key(s) without it left out (") in result.stderr
    assert "lm_head.weight" in result.stderr  # the keys left out are named
    assert json.loads(result.stdout)["passed"] is True
    initializers = {init.name for init in onnx.load(out).graph.initializer}
    assert "encoder.pos_conv_embed.conv.weight" in initializers
    assert not any(name.startswith(("hubert.", "lm_head")) for name in initializers)
