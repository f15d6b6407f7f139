"""The reference run ahead of the exported file (issue 22): its outputs serve only the feeds
they were computed on, once; anything else runs the module."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wnconvert.export import InputSpec
from wnconvert.verification import VerifyOptions
from wnconvert.verification.ahead import run_reference_ahead
from wnconvert.verification.cases import CasePlan
from wnconvert.verification.runners import InputSignature


class _Counted(torch.nn.Module):
    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.calls = 0
        self.fail = fail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        print("the model speaks")
        if self.fail:
            raise ValueError("no")
        return x * 2


OPTIONS = VerifyOptions(providers=("cpu",), input_specs=(InputSpec((2, 3)),), seed=7)


def _ahead(module: torch.nn.Module, options: VerifyOptions = OPTIONS) -> tuple:
    done: list[str] = []
    ahead = run_reference_ahead(module, ["x"], [torch.zeros(2, 3)], options,
                                meanwhile=lambda: done.append("imports"))
    assert done == ["imports"]
    assert ahead is not None
    return ahead, ahead.runner(module, input_names=["x"])


def test_the_first_case_is_verifications_own_and_its_outputs_serve_it_once() -> None:
    module = _Counted()
    ahead, runner = _ahead(module)
    assert module.calls == 1 and ahead.printed == ["the model speaks"]
    first = next(iter(CasePlan([InputSignature("x", "float32", (2, 3))], OPTIONS)))
    outputs = runner.run(first.feeds)
    assert module.calls == 1  # served from what ran ahead
    np.testing.assert_array_equal(outputs["output"], first.feeds["x"] * 2)
    assert runner.output_names == ["output"]
    runner.run(first.feeds)  # once only: the second time the module runs
    assert module.calls == 2


def test_other_feeds_run_the_module() -> None:
    module = _Counted()
    _, runner = _ahead(module)
    other = {"x": np.ones((2, 3), np.float32)}
    np.testing.assert_array_equal(runner.run(other)["output"], other["x"] * 2)
    assert module.calls == 2


def test_a_failure_ahead_is_raised_where_verification_runs_the_case() -> None:
    module = _Counted(fail=True)
    ahead, runner = _ahead(module)
    with pytest.raises(ValueError, match="no"):
        runner.run(ahead.feeds)


def test_no_case_known_beforehand_runs_nothing_ahead() -> None:
    module = _Counted()
    done: list[str] = []
    wrong_rank = VerifyOptions(providers=("cpu",), input_specs=(InputSpec((2, 3, 4)),))
    assert run_reference_ahead(module, ["x"], [torch.zeros(2, 3)], wrong_rank,
                               meanwhile=lambda: done.append("imports")) is None
    assert done == ["imports"] and module.calls == 0
