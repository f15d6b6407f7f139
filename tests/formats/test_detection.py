"""Checkpoints recognized by their content (issue 18 §1): the name only breaks ties.

The layouts are the ones users hold: the reference HiFi-GAN training script
(jik876/hifi-gan) saves ``g_02500000`` (``{"generator": ...}``) and ``do_02500000``
(``mpd``, ``msd``, both optimizers, ``steps``, ``epoch``) without an extension.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from tests.checkpoints import read_pt
from wnconvert.errors import InputError
from wnconvert.formats import detect, load_checkpoint


def _discriminators() -> tuple[nn.Module, nn.Module]:
    """HiFi-GAN's discriminators in miniature: the MPD's Conv2d under weight norm, the MSD's
    first scale under spectral norm and the others under weight norm."""
    torch.manual_seed(1)
    wn, sn = nn.utils.weight_norm, nn.utils.spectral_norm
    mpd = nn.ModuleList(
        nn.ModuleList([wn(nn.Conv2d(1, 4, (5, 1))), wn(nn.Conv2d(4, 1, (3, 1)))]) for _ in range(2)
    )
    msd = nn.ModuleList([
        nn.ModuleList([sn(nn.Conv1d(1, 4, 15)), sn(nn.Conv1d(4, 1, 3))]),
        nn.ModuleList([wn(nn.Conv1d(1, 4, 15)), wn(nn.Conv1d(4, 1, 3))]),
    ])
    return mpd, msd


@pytest.fixture
def hifigan_run(tmp_path, fixture_models) -> tuple[Path, Path, nn.Module]:
    """``g_02500000`` and ``do_02500000`` as jik876/hifi-gan's train.py writes them."""
    generator = fixture_models.build_generator("legacy")
    mpd, msd = _discriminators()
    optim_g = torch.optim.AdamW(generator.parameters(), 2e-4, betas=(0.8, 0.99))
    optim_d = torch.optim.AdamW([*mpd.parameters(), *msd.parameters()], 2e-4, betas=(0.8, 0.99))
    for optim, params in ((optim_g, generator.parameters()),
                          (optim_d, [*mpd.parameters(), *msd.parameters()])):
        for p in params:
            p.grad = torch.ones_like(p)
        optim.step()  # the optimizers' state holds tensors, as after training
    g = tmp_path / "g_02500000"
    torch.save({"generator": generator.state_dict()}, g)
    do = tmp_path / "do_02500000"
    torch.save({"mpd": mpd.state_dict(), "msd": msd.state_dict(),
                "optim_g": optim_g.state_dict(), "optim_d": optim_d.state_dict(),
                "steps": 2500000, "epoch": 3100}, do)
    return g, do, generator


def test_hifigan_generator_without_extension_inspects_and_folds(hifigan_run, fixture_models,
                                                                 cli, assert_ok):
    g, _, generator = hifigan_run
    result = assert_ok(cli("inspect", g))
    assert "detected: PyTorch zip archive (data.pkl)" in result.stdout
    report = json.loads(assert_ok(cli("inspect", g, "--json")).stdout)
    assert report["container"]["format"] == "pt"
    assert report["container"]["detected"] == "PyTorch zip archive (data.pkl)"
    assert report["totals"]["pairs"] == 8

    assert_ok(cli("fold", g))
    folded = g.with_name("g_02500000.folded.pt")  # no extension in: .pt out
    plain = fixture_models.build_generator("none")
    plain.load_state_dict(read_pt(folded)["generator"], strict=True)
    mel = torch.randn(1, 16, 20)
    with torch.no_grad():
        torch.testing.assert_close(plain(mel), generator(mel), rtol=1e-5, atol=1e-6)


def test_hifigan_discriminators_without_extension_fold_by_key(hifigan_run, cli, assert_ok,
                                                              assert_input_error):
    _, do, _ = hifigan_run
    # mpd and msd both hold weight-norm pairs: which one to fold is the user's choice.
    assert_input_error(cli("inspect", do), do, "--key")
    out = do.with_name("mpd.pt")
    assert_ok(cli("fold", do, "--key", "mpd", "-o", out))
    written = read_pt(out)
    mpd, _ = _discriminators()
    for module in mpd.modules():
        if hasattr(module, "weight_g"):
            nn.utils.remove_weight_norm(module)
    mpd.load_state_dict(written["mpd"], strict=True)
    assert written["steps"] == 2500000 and set(written["optim_d"]) == {"state", "param_groups"}


def test_legacy_pickle_without_extension(tmp_path):
    path = tmp_path / "generator"
    torch.save({"a.weight_g": torch.ones(2, 1), "a.weight_v": torch.ones(2, 3)}, path,
               _use_new_zipfile_serialization=False)
    assert detect(path).how == "legacy PyTorch pickle (magic number)"
    assert set(load_checkpoint(path).state_dict) == {"a.weight_g", "a.weight_v"}


def test_safetensors_without_extension(tmp_path):
    path = tmp_path / "model"
    save_file({"a.weight": torch.ones(2, 3)}, str(path))
    checkpoint = load_checkpoint(path)
    assert (checkpoint.format, checkpoint.detected) == ("safetensors", "safetensors header")


def test_content_wins_over_the_name(tmp_path, save_pt):
    misnamed = tmp_path / "model.pt"
    save_file({"a.weight": torch.ones(2, 3)}, str(misnamed))
    assert load_checkpoint(misnamed).format == "safetensors"
    pickle_named_ckpt = save_pt({"a.weight": torch.ones(2)}, "weights.nemo")
    assert load_checkpoint(pickle_named_ckpt).format == "pt"


def test_damaged_file_with_a_known_name_goes_to_its_reader(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"PK\x03\x04 truncated")
    assert detect(path).how == "by its name (.pt; content not recognized)"
    with pytest.raises(InputError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"x", b"hello, world\n", b"PK\x03\x04garbage",
                                     b"\x1f\x8bnot gzip", b"{\"weight_map\": {}}"])
def test_unknown_content_without_a_known_name_is_refused(content, tmp_path, cli,
                                                         assert_input_error):
    path = tmp_path / "g_00000000"
    path.write_bytes(content)
    line = assert_input_error(cli("inspect", path), path, "unknown checkpoint type")
    assert "the content is not a PyTorch zip archive" in line  # says what was looked for


def test_onnx_content_is_named(tmp_path, cli, assert_input_error):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "vocoder"
    onnx.save(helper.make_model(graph), str(path))
    assert_input_error(cli("fold", path), path, "ONNX model")


@pytest.mark.slow
def test_hifigan_generator_without_extension_exports_and_verifies(hifigan_run, fixtures_dir,
                                                                  cli, assert_ok):
    g, _, _ = hifigan_run
    out = g.with_name("generator.onnx")
    result = assert_ok(cli("fold", g, "--to", "onnx", "--model",
                           f"{fixtures_dir / 'models.py'}:build_generator", "--input", "1x16x64",
                           "-o", out))
    assert "verification PASSED" in result.output
    assert out.is_file()
