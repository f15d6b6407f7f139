"""The failures a user can act on, and the warning category of the library.

The CLI maps :class:`InputError` to exit code 2, :class:`CheckFailed` to exit code 1 and
:class:`ConversionNotPossible` to exit code 3, and prints only the message (no traceback unless
``--debug``). Library code raises these, worded in API terms (``dim=-1``, not ``--dim -1``), and
never imports the CLI. Each one also subclasses the builtin that fits, so plain Python callers can
catch ``ValueError`` / ``FileNotFoundError`` / ``RuntimeError`` as usual.
"""

from __future__ import annotations


class WnConvertError(Exception):
    """Base class of the errors wnconvert raises on purpose."""

    exit_code = 2


class InputError(WnConvertError, ValueError):
    """Bad input: a file that is missing, unreadable, unsafe or inconsistent, or bad options.

    The message is one line that names the file, says what is wrong and what to do.
    """

    exit_code = 2


class InputNotFound(InputError, FileNotFoundError):
    """A file the caller named does not exist."""


class CheckFailed(WnConvertError):
    """A numerical check ran and did not pass (exit code 1)."""

    exit_code = 1


class ConversionNotPossible(WnConvertError, RuntimeError):
    """The input is valid but a converter (an ONNX exporter) cannot handle it (exit code 3)."""

    exit_code = 3


class WeightNormWarning(UserWarning):
    """Something in the data deserves attention (zero norms, NaN/Inf) but is not an error."""
