"""The error budget on the command line (issue 20 §2): --check-error-stat, --error-quantile and
--min-snr (bare or NAME:VALUE), what they change in the verdict and the exit code, the refusals
(exit 2), and the statistics in the text, JSON and JUnit output."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from tests.verification.conftest import linear_model


@pytest.fixture
def skewed(tmp_path: Path) -> tuple[Path, Path]:
    """A candidate whose first output column (1/3 of the elements of y) is far off: elemwise
    and max fail, the median passes."""
    w = np.random.default_rng(3).standard_normal((4, 3)).astype(np.float32)
    off = w.copy()
    off[:, 0] += np.float32(0.1)
    return linear_model(tmp_path / "cand.onnx", off), linear_model(tmp_path / "ref.onnx", w)


def verify(cli, pair: tuple[Path, Path], *args: object):
    return cli("verify", pair[0], "--reference", pair[1], "--weights", "off", *args)


def test_the_statistic_decides_the_verdict_and_the_exit_code(cli, skewed) -> None:
    assert verify(cli, skewed).exit_code == 1  # elemwise, today's rule
    assert verify(cli, skewed, "--check-error-stat", "max").exit_code == 1
    passed = verify(cli, skewed, "--check-error-stat", "median")
    assert passed.exit_code == 0, passed.output
    # The text output: one line of statistics per output, and the rule in words.
    line = next(ln for ln in passed.stdout.splitlines() if ln.startswith("errors "))
    assert line.startswith("errors CPUExecutionProvider y (check median): abs max ")
    assert all(f" {word} " in line for word in ("mean", "median", "p99", "rel", "SNR"))
    assert line.endswith(" dB")
    assert "rule: median of |candidate - reference| <= atol" in " ".join(passed.stdout.split())


def test_the_quantile_rule_and_its_quantile(cli, skewed) -> None:
    # A third of the elements are off: the 0.6-quantile is in the good part, the 0.9 is not.
    assert verify(cli, skewed, "--check-error-stat", "quantile",
                  "--error-quantile", "0.6").exit_code == 0
    result = verify(cli, skewed, "--check-error-stat", "quantile", "--error-quantile", "0.9",
                    "--json")
    assert result.exit_code == 1
    out = json.loads(result.stdout)["verification"]["providers"][0]["outputs"][0]
    assert out["failed_rules"] == ["quantile"] and out["error_quantile"] == 0.9
    assert "p90 abs error" in out["failure"]


def test_per_output_values_override_the_default(cli, skewed) -> None:
    assert verify(cli, skewed, "--check-error-stat", "max", "--check-error-stat",
                  "y:median").exit_code == 0
    assert verify(cli, skewed, "--check-error-stat", "median", "--check-error-stat",
                  "y:max").exit_code == 1


def test_min_snr_fails_with_exit_1_and_says_which_rule(cli, skewed, tmp_path: Path) -> None:
    report = tmp_path / "junit.xml"
    result = verify(cli, skewed, "--check-error-stat", "median", "--min-snr", "120",
                    "--report", report)
    assert result.exit_code == 1, result.output
    assert "< min_snr 120 dB (passes with min_snr <=" in " ".join(result.stdout.split())
    case = ET.parse(report).getroot().find(".//testcase[@name='y']")
    assert case is not None and case.find("failure") is not None
    props = {p.get("name"): p.get("value") for p in case.findall("properties/property")}
    snr = float(props["snr_db"])
    assert props["check"] == "check median, min_snr 120 dB"
    # The highest floor that passes is the SNR itself.
    assert verify(cli, skewed, "--check-error-stat", "median", "--min-snr",
                  f"{snr - 0.01:.2f}").exit_code == 0


def test_identical_models_report_an_infinite_snr_in_valid_json(cli, tmp_path: Path) -> None:
    w = np.ones((4, 3), np.float32)
    pair = (linear_model(tmp_path / "a.onnx", w), linear_model(tmp_path / "b.onnx", w))
    result = verify(cli, pair, "--min-snr", "300", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)["verification"]["providers"][0]["outputs"][0]
    assert out["errors"]["snr_db"] == "inf" and out["errors"]["abs"]["max"] == 0.0
    assert out["min_snr"] == 300.0 and out["failed_rules"] == []


@pytest.mark.parametrize(("args", "mentions"), [
    (("--check-error-stat", "p99"), ("--check-error-stat p99", "elemwise, max, mean")),
    (("--check-error-stat", "y:worst"), ("--check-error-stat y:worst",)),
    (("--check-error-stat", "logits:max"), ("no output 'logits'", "its outputs are y")),
    (("--error-quantile", "0"), ("--error-quantile 0.0", "(0, 1]")),
    (("--error-quantile", "1.5"), ("--error-quantile 1.5",)),
    (("--error-quantile", "high"), ("--error-quantile 'high'", "expected a number")),
    (("--error-quantile", "wave:0.9"), ("no output 'wave'",)),
    (("--min-snr", "nan"), ("--min-snr nan", "finite")),
    (("--min-snr", ":40"), ("--min-snr ':40'", "name the output")),
])
def test_unknown_or_bad_values_are_refused(cli, skewed, assert_input_error, args,
                                           mentions) -> None:
    assert_input_error(verify(cli, skewed, *args), *mentions)


def test_fold_takes_the_rules_and_refuses_them_without_verification(
        cli, tmp_path: Path, assert_input_error) -> None:
    from tests.onnx_graph.builders import save, weight_norm_model

    model, _, _ = weight_norm_model((6, 4, 3), 0, order="g/n*v")
    wn = save(model, tmp_path / "wn.onnx")
    out = tmp_path / "o.onnx"
    assert_input_error(cli("fold", wn, "-o", out, "--no-verify", "--min-snr", "60"),
                       "--min-snr", "--no-verify")
    assert_input_error(cli("fold", wn, "-o", out, "--check-error-stat", "nope"),
                       "--check-error-stat nope")
    assert not out.exists()
    result = cli("fold", wn, "-o", out, "--check-error-stat", "mean", "--min-snr", "60",
                 "--json")
    assert result.exit_code == 0, result.output
    [output] = json.loads(result.stdout)["verification"]["providers"][0]["outputs"]
    assert output["check_error_stat"] == "mean" and output["min_snr"] == 60.0
