"""How an exporter's own error is shortened into wnconvert's one-line message."""

from __future__ import annotations

from wnconvert.export.onnx_export import _exporter_message


def _wrapped(message: str) -> RuntimeError:
    """An exporter error as the exporters raise it: the real one is the cause."""
    outer = RuntimeError("Failed to export the model")
    outer.__cause__ = ValueError(message)
    return outer


def test_a_long_message_says_it_was_cut() -> None:
    """Seen on MimiModel: the torch.export failure was cut at 400 characters mid-word
    ('... in sdpa_a;') with nothing saying more followed."""
    text = _exporter_message(_wrapped("x" * 2000 + " Caused by: somewhere"))
    assert text.startswith("ValueError: xxx")
    assert text.endswith("xxx...")
    assert len(text) < 600  # one line of a readable length


def test_a_short_message_is_whole_on_one_line() -> None:
    text = _exporter_message(_wrapped("No ONNX function\n  found for aten::diff"))
    assert text == "ValueError: No ONNX function found for aten::diff"
