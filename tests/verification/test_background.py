"""The ONNX reference run ahead in a background thread (``fold MODEL.onnx``): its outputs are
used only for the very inputs the verification feeds, anything else runs as before, and no
thread is left behind."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import wnconvert
from tests.onnx_graph.builders import save, weight_norm_model
from wnconvert.errors import InputError
from wnconvert.export.inputs import InputSpec
from wnconvert.verification import VerifyOptions, background, orchestrate, runners
from wnconvert.verification.runners import InputSignature

from .test_onnx_runs import linear_model

THREAD = "wnconvert-reference"


def _threads_left() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == THREAD]


@pytest.fixture
def wn_model(tmp_path: Path) -> Path:
    return save(weight_norm_model((6, 4, 3), 0)[0], tmp_path / "model.onnx")


@pytest.fixture
def sessions(monkeypatch) -> list[tuple[str, str]]:
    """(model file name, thread name) of every ONNX Runtime session, in creation order."""
    made: list[tuple[str, str]] = []
    real = runners.OrtRunner.__init__

    def spy(self, path, *args, **kwargs):
        made.append((Path(path).name, threading.current_thread().name))
        real(self, path, *args, **kwargs)

    monkeypatch.setattr(runners.OrtRunner, "__init__", spy)
    return made


def test_fold_onnx_runs_the_reference_while_it_folds(wn_model, tmp_path, sessions,
                                                     monkeypatch):
    """The original's session starts in a background thread once the input passed the
    checker, before the folded model is written; its outputs are the reference's."""
    from wnconvert.onnx_graph import FoldJob

    reference_up = threading.Event()
    real_write, real_init = FoldJob.write, runners.OrtRunner.__init__

    def write(self, **kwargs):
        reference_up.wait(timeout=30)  # deterministic order for the assertions below
        return real_write(self, **kwargs)

    def init(self, path, *args, **kwargs):
        real_init(self, path, *args, **kwargs)
        if Path(path) == wn_model:
            reference_up.set()

    monkeypatch.setattr(FoldJob, "write", write)
    monkeypatch.setattr(runners.OrtRunner, "__init__", init)
    ran: list[str] = []
    real_run = runners.OrtRunner.run_uncaptured
    monkeypatch.setattr(runners.OrtRunner, "run_uncaptured",
                        lambda self, feeds: ran.append(Path(self.path).name) or
                        real_run(self, feeds))
    result = wnconvert.fold_onnx(wn_model, tmp_path / "out.onnx")
    assert result.passed and result.report is not None
    assert sessions[0] == ("model.onnx", THREAD)  # the reference, ahead, in the background
    assert [name for name, _ in sessions] == ["model.onnx", "out.onnx"]  # then the staged
    assert ran.count("model.onnx") == len(result.report.cases)  # not run a second time
    assert not _threads_left()


def test_the_weight_diff_runs_while_the_candidate_runs(wn_model, tmp_path, monkeypatch):
    threads: list[str] = []
    real = orchestrate.compare_weights

    def spy(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(orchestrate, "compare_weights", spy)
    result = wnconvert.fold_onnx(wn_model, tmp_path / "out.onnx")
    assert result.passed and result.report is not None and result.report.weights is not None
    assert len(threads) == 1 and threads[0] != threading.main_thread().name


def test_a_big_model_holds_one_session_at_a_time(wn_model, tmp_path, sessions, monkeypatch):
    """Above SIDE_BY_SIDE_BYTES of weights the candidate's session waits for the reference's
    runs to end (its session is then gone) and for the weight diff: two sessions would each
    hold the weights, and the diff holds float64 copies of the largest."""
    monkeypatch.setattr(orchestrate, "SIDE_BY_SIDE_BYTES", 0)
    events: list[tuple[str, object]] = []
    real, real_weights = runners.OrtRunner.__init__, orchestrate.compare_weights

    def init(self, path, *args, **kwargs):
        if threading.current_thread().name != THREAD:
            events.append(("candidate session; reference threads", _threads_left()))
        real(self, path, *args, **kwargs)

    def weights(*args, **kwargs):
        events.append(("weights", threading.current_thread().name))
        return real_weights(*args, **kwargs)

    monkeypatch.setattr(runners.OrtRunner, "__init__", init)
    monkeypatch.setattr(orchestrate, "compare_weights", weights)
    result = wnconvert.fold_onnx(wn_model, tmp_path / "out.onnx")
    assert result.passed and result.report is not None and result.report.weights is not None
    assert events == [("weights", threading.main_thread().name),
                      ("candidate session; reference threads", [])]


def test_a_failed_verification_still_fails_with_the_reference_ahead(tmp_path, monkeypatch):
    """The candidate is compared with the original's outputs computed ahead: a fold that
    writes a wrong weight fails (exit 1 in the CLI) and nothing is written."""
    from wnconvert.onnx_graph import FoldJob

    path = save(weight_norm_model((6, 4, 3), 0)[0], tmp_path / "m.onnx")
    real = FoldJob.write

    def wrong(self, **kwargs):
        staged = real(self, **kwargs)
        model = onnx.load(str(staged))
        [weight] = [t for t in model.graph.initializer if t.name == "layer.weight"]
        weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.5, weight.name))
        onnx.save(model, str(staged))
        return staged

    monkeypatch.setattr(FoldJob, "write", wrong)
    result = wnconvert.fold_onnx(path, tmp_path / "out.onnx")
    assert not result.passed and result.report is not None
    assert result.report.weights is not None and not result.report.weights.passed
    assert any(not p.passed for p in result.report.providers)
    assert not (tmp_path / "out.onnx").exists()
    assert not _threads_left()


def test_no_thread_is_left_after_an_input_error(wn_model, tmp_path):
    with pytest.raises(InputError, match="rank"):
        wnconvert.fold_onnx(wn_model, tmp_path / "out.onnx",
                            options=VerifyOptions(input_specs=(InputSpec((1, 2), text="1x2"),)))
    assert not _threads_left()


def test_outputs_are_handed_over_only_for_the_inputs_they_were_computed_on(tmp_path):
    weight = np.random.default_rng(3).standard_normal((4, 3)).astype(np.float32)
    model = linear_model(tmp_path / "ref.onnx", weight)
    options = VerifyOptions(providers=("cpu",))
    with background.ReferenceAhead(model, options) as ahead:
        # Another model's inputs: not used (the verification then runs its own session).
        assert ahead.runner([InputSignature("x", "float32", (1, "time", 5))]) is None
    with background.ReferenceAhead(model, options) as ahead:
        runner = ahead.runner([InputSignature("x", "float32", (1, "time", 4))])
        assert runner is not None and runner.output_names == ["y"]
        x = np.random.default_rng([0, 0]).standard_normal((1, 16, 4)).astype(np.float32)
        expected = x @ weight + 0.5
        np.testing.assert_allclose(runner.run({"x": x})["y"], expected, rtol=1e-6)
        other = np.ones((1, 16, 4), np.float32)  # never run ahead: computed now
        np.testing.assert_allclose(runner.run({"x": other})["y"], other @ weight + 0.5,
                                   rtol=1e-6)
    assert not _threads_left()


def test_a_model_the_background_cannot_load_is_left_to_the_verification(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with background.ReferenceAhead(broken, VerifyOptions()) as ahead:
        assert ahead.runner([InputSignature("x", "float32", (1,))]) is None
        assert ahead.unused is not None
    assert not _threads_left()


def test_many_cases_are_not_run_ahead(tmp_path):
    weight = np.ones((4, 3), np.float32)
    model = linear_model(tmp_path / "ref.onnx", weight)
    runs = background.MAX_CASES + 1
    with background.ReferenceAhead(model, VerifyOptions(runs=runs)) as ahead:
        assert ahead.runner([InputSignature("x", "float32", (1, "time", 4))]) is None
        assert ahead.unused is not None and "input cases" in ahead.unused


@pytest.mark.parametrize("side_by_side, threads", [(True, [1, 1]), (False, [0, 0])])
def test_sessions_side_by_side_take_one_cpu_thread_each(wn_model, tmp_path, monkeypatch,
                                                        side_by_side, threads):
    """Beside other work (the other session, the fold, the weight diff) each session takes
    one core; a big model's sessions run alone, with ONNX Runtime's default pool."""
    if not side_by_side:
        monkeypatch.setattr(orchestrate, "SIDE_BY_SIDE_BYTES", 0)
        monkeypatch.setattr(background, "SIDE_BY_SIDE_BYTES", 0)
    pools: list[int] = []
    real = runners.OrtRunner.__init__

    def init(self, path, *args, **kwargs):
        real(self, path, *args, **kwargs)
        pools.append(self.session.get_session_options().intra_op_num_threads)

    monkeypatch.setattr(runners.OrtRunner, "__init__", init)
    assert wnconvert.fold_onnx(wn_model, tmp_path / "out.onnx").passed
    assert pools == threads
