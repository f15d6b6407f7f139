"""Models onnx.checker refuses are refused by check_file, inspect_file and fold_file alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.onnx_graph.builders import (
    Graph,
    cycle_model,
    external_location_model,
    misfit_pair_model,
    save,
    save_with_non_utf8_name,
    truncate_external_length,
    truncated_model,
    undefined_input_model,
    unknown_data_type_model,
    weight_norm_model,
    wrong_type_model,
)
from wnconvert.errors import InputError
from wnconvert.onnx_graph import check_file, fold_file, inspect_file, load_model
from wnconvert.onnx_graph.protoio import FileRange
from wnconvert.onnx_graph.validate import open_model, validate_model


def _bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (model path, a phrase the one-line error must contain)."""
    files = {
        "cycle": (save(cycle_model(), folder / "cycle.onnx"), "topologically sorted"),
        "undefined": (save(undefined_input_model(), folder / "undefined.onnx"), "'missing'"),
        "truncated": (save(truncated_model(), folder / "truncated.onnx"), "truncated"),
        "truncated-large": (save(truncated_model(large=True), folder / "trunc_large.onnx"),
                            "truncated"),
        "misfit-pair": (save(misfit_pair_model(), folder / "misfit.onnx"), "does not fit"),
        "wrong-type": (save(wrong_type_model(), folder / "wrong_type.onnx"), "onnx.checker"),
        "nul-location": (save(external_location_model("w\0.bin"), folder / "nul.onnx"),
                         "NUL byte"),
        "empty-offset": (save(external_location_model("w.bin", offset=""),
                              folder / "empty_offset.onnx"), "malformed external-data offset"),
        "unknown-type": (save(unknown_data_type_model(), folder / "unknown_type.onnx"),
                         "data type 99"),
        "non-utf8": (save_with_non_utf8_name(folder / "non_utf8.onnx"),
                     "model.graph.node[0].name is not valid UTF-8"),
    }
    (folder / "w.bin").write_bytes(bytes(24))  # the data file of "empty-offset"
    model, _, _ = weight_norm_model((64, 32, 16), 0)
    external = save(model, folder / "ext.onnx", external=True)
    truncate_external_length(external, "layer.parametrizations.weight.original1")
    files["truncated-external"] = (external, "truncated")
    return files


@pytest.mark.parametrize("case", ["cycle", "undefined", "truncated", "truncated-large",
                                  "misfit-pair", "wrong-type", "nul-location",
                                  "truncated-external", "unknown-type", "non-utf8",
                                  "empty-offset"])
def test_every_entry_point_refuses_the_same_bad_model(tmp_path, case):
    path, phrase = _bad_files(tmp_path)[case]
    messages = set()
    for run in (check_file, inspect_file,
                lambda p: fold_file(p, tmp_path / "out.onnx", force=False)):
        with pytest.raises(InputError) as caught:
            run(path)
        messages.add(str(caught.value))
    [message] = messages  # one message, whichever command reads the file
    assert phrase in message and str(path) in message and "\n" not in message
    assert not (tmp_path / "out.onnx").exists()


def test_onnx_checker_refuses_the_bad_models_too(tmp_path):
    """The builders make models the reference library refuses (so the tests above test that)."""
    for name, (path, _) in _bad_files(tmp_path).items():
        if name in ("misfit-pair", "nul-location", "truncated-external", "non-utf8",
                    "empty-offset"):
            continue  # valid for the checker / not loadable by onnx.load at all
        with pytest.raises((onnx.checker.ValidationError, onnx.shape_inference.InferenceError,
                            ValueError)):
            onnx.checker.check_model(str(path), full_check=True)


def test_valid_models_pass_with_and_without_external_data(tmp_path):
    model, _, _ = weight_norm_model((64, 32, 16), 0)
    for path in (save(model, tmp_path / "inline.onnx"),
                 save(model, tmp_path / "ext.onnx", external=True, threshold=1024)):
        onnx.checker.check_model(str(path), full_check=True)
        validate_model(open_model(path))
        assert len(check_file(path).sites) == 1
    # Every tensor external, shape constants too: onnx.checker given the path cannot infer
    # shapes from them ("Cannot parse data from external tensors"); the model is valid and
    # onnx.load + check_model accepts it, so wnconvert does too.
    path = save(model, tmp_path / "all_ext.onnx", external=True)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert len(check_file(path).sites) == 1


def test_checker_never_reads_large_initializers(tmp_path, monkeypatch):
    """The checker gets large initializers as typed stand-ins: their data is never read (a
    1 GB model is not loaded to be checked)."""
    model, _, _ = weight_norm_model((256, 64, 16), 0)
    path = save(model, tmp_path / "m.onnx")
    lazy = load_model(path)
    real_read = FileRange.read

    def read(self: FileRange) -> np.ndarray:
        assert self.length <= 64 * 1024, f"read {self.length} bytes to check the graph"
        return real_read(self)

    monkeypatch.setattr(FileRange, "read", read)
    validate_model(lazy)


def test_flat_g_of_a_converter_fits(tmp_path):
    """A converter may store g flat ([C]) and reshape it in the graph: not a misfit."""
    b = Graph()
    b.init("w", np.ones((2, 3), dtype=np.float32))
    b.init("fc.weight_g", np.ones(5, dtype=np.float32))
    b.init("fc.weight_v", np.ones((5, 4), dtype=np.float32))
    path = save(b.model("w", (2, 3)), tmp_path / "flat.onnx")
    [pair] = inspect_file(path).pairs
    assert pair.shapes_fit and pair.dim == 0


def test_ir3_initializer_missing_from_inputs_is_refused(tmp_path):
    model, _, _ = weight_norm_model((64, 32, 16), 0)
    model.ir_version = 3
    path = save(model, tmp_path / "ir3.onnx")
    with pytest.raises(InputError, match="not in graph input"):
        check_file(path)
