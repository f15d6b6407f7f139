"""``wnconvert.verify`` with the error budget's options (issue 20 §2): the pass rule per output,
the statistics in the result, and per-output rules naming an output the model lacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import wnconvert
from tests.verification.conftest import linear_model


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    w = np.random.default_rng(5).standard_normal((4, 3)).astype(np.float32)
    off = w.copy()
    off[:, 0] += np.float32(0.1)  # a third of the outputs far off
    return linear_model(tmp_path / "c.onnx", off), linear_model(tmp_path / "r.onnx", w)


def test_the_rule_per_output_decides_and_the_result_carries_the_statistics(pair) -> None:
    def check(**budget: object) -> wnconvert.VerificationReport:
        options = wnconvert.VerifyOptions(providers=("cpu",), weights="off", **budget)
        return wnconvert.verify(*pair, options=options)

    assert not check().passed
    median = check(output_error_stats={"y": "median"})
    assert median.passed
    [output] = median.providers[0].outputs
    assert output.stats is not None and output.stats.abs_median < 1e-5 < output.stats.abs_max
    snr = output.stats.snr_db
    floor = check(check_error_stat="median", output_min_snrs={"y": snr + 1})
    assert not floor.passed
    assert floor.to_dict()["providers"][0]["outputs"][0]["failed_rules"] == ["min_snr"]
    assert check(check_error_stat="median", min_snr=snr - 1).passed


def test_a_rule_for_an_output_the_model_lacks_is_an_input_error(pair) -> None:
    options = wnconvert.VerifyOptions(providers=("cpu",), output_error_quantiles={"z": 0.9})
    with pytest.raises(wnconvert.InputError, match="no output 'z'; its outputs are y"):
        wnconvert.verify(*pair, options=options)


def test_verify_reads_the_candidate_once(pair, model_reads) -> None:
    """The candidate is parsed once (checked, then verified on that reading): its signature,
    weights and precision come from it, not from the file again (ONNX Runtime loads it itself)."""
    candidate, reference = pair
    options = wnconvert.VerifyOptions(providers=("cpu",), check_error_stat="median",
                                      weights="report")
    assert wnconvert.verify(candidate, reference, options=options).passed
    assert model_reads.count(candidate) == 1
