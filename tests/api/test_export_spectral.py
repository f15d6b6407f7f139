"""``export_onnx`` (``fold --to onnx``) of models with spectral norm (issue 19 §3): none left in
the exported graph, weights folded in float64, verified on ONNX Runtime against the model as
built (spectral norm computed at run time)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import wnconvert
from tests.spectral_models import gan_generator, hifigan_discriminator
from wnconvert.keys import find_spectral_keys
from wnconvert.numerics import spectral_dims

CPU = wnconvert.VerifyOptions(providers=("cpu",))


@pytest.mark.slow
@pytest.mark.parametrize("api", ["parametrize", "legacy"])
@pytest.mark.parametrize(("build", "shape"), [(hifigan_discriminator, (1, 1, 64)),
                                              (gan_generator, (1, 8))],
                         ids=["hifigan-discriminator", "gan-generator"])
def test_spectral_norm_models_export_with_none_left(build, shape, api, tmp_path: Path) -> None:
    model = build(api)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    checkpoint = tmp_path / "model.pt"
    torch.save(model.state_dict(), checkpoint)
    outcome = wnconvert.export_onnx(checkpoint, tmp_path / "model.onnx", model=model,
                                    inputs=[wnconvert.InputSpec(shape)], options=CPU)
    assert outcome.passed, outcome.failure()
    found = wnconvert.check_onnx(outcome.path)
    assert found.clean, [site.parameter for site in found.sites]
    assert not outcome.export.runtime_weight_norm
    # The weight check folds the reference's spectral norm too, where u/v fit one axis only
    # (square weights stay unfolded there and are reported unmatched, never wrongly folded).
    weights = outcome.report.weights if outcome.report is not None else None
    assert weights is not None and weights.passed
    compared = {w.name for w in weights.compared}
    clear = [site.weight_key for site in find_spectral_keys(before)
             if len(spectral_dims(tuple(before[site.orig_key].shape),
                                  before[site.u_key].numel(), before[site.v_key].numel())) == 1]
    # (a weight the exporter fused with a BatchNorm is derived, not compared: the generator's up1)
    assert set(clear) & compared, (clear, sorted(compared))
    # The caller's module keeps its spectral norm and its weights.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
