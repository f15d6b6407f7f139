"""The failures a user can act on, and the warning category of the library.

The CLI maps :class:`InputError` to exit code 2, :class:`CheckFailed` to exit code 1 and
:class:`ConversionNotPossible` to exit code 3, and prints only the message (no traceback unless
``--debug``). Library code raises these and never imports the CLI. Each one also subclasses the
builtin that fits, so plain Python callers can catch ``ValueError`` / ``FileNotFoundError`` /
``RuntimeError`` as usual.

A message that names one of the caller's options is a *template*
(:meth:`WnConvertError.template`): the option is a field, and the message is rendered twice from
the same parts, never rewritten afterwards: ``str(error)`` in API terms (``dim=-1``,
``force=True``) and, on the command line, :meth:`WnConvertError.render` with the CLI's table of
flag names (``--dim -1``, ``--force``). Values (paths, keys) are inserted as they are, so a path
like ``exp/key=ema/model.pt`` is never mistaken for an option.

Template fields:

* ``{name}`` / ``{name!r}``: ``values[name]`` as ``str`` / ``repr``;
* ``{-option}``: the option itself (``model=``; ``--model``);
* ``{-option=name}``: the option with a value (``model='x.py:build'``; ``--model x.py:build``).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any, TypeVar

_FIELD = re.compile(r"\{(-?)(\w+)(?:=(\w+))?(!r)?\}")

#: How an option reads in API terms where ``name=`` alone would not say it (switches).
API_TERMS: dict[str, str] = {
    "force": "force=True",
    "no_verify": "verify=False",
    "no_keep_io_types": "keep_io_types=False",
    "trust_program": "trust_program=True",
}

_E = TypeVar("_E", bound="WnConvertError")


class WnConvertError(Exception):
    """Base class of the errors wnconvert raises on purpose."""

    exit_code = 2

    def __init__(self, message: str = "", /) -> None:
        super().__init__(message)
        self._template: str | None = None
        self._values: dict[str, Any] = {}

    @classmethod
    def template(cls: type[_E], template: str, /, **values: Any) -> _E:
        """An error whose message names options (see the module docstring for the fields)."""
        error = cls.__new__(cls)
        WnConvertError.__init__(error, "")
        error._template, error._values = template, dict(values)
        error.args = (error.render(),)
        return error

    def render(self, flags: Mapping[str, str] | None = None) -> str:
        """The message; with ``flags`` (option name -> flag), in the command line's terms."""
        if self._template is None:
            return str(self.args[0]) if self.args else ""
        values = self._values

        def text(value: Any) -> str:
            # A nested error (a cause quoted in this message) speaks the same terms.
            return value.render(flags) if isinstance(value, WnConvertError) else str(value)

        def field(match: re.Match[str]) -> str:
            is_option, name, value_name, as_repr = match.groups()
            if not is_option:
                return repr(values[name]) if as_repr else text(values[name])
            if flags is None:
                if value_name is None:
                    return API_TERMS.get(name, f"{name}=")
                value = values[value_name]
                # A path reads as written (no PosixPath(...)); other values as Python literals.
                return f"{name}={value}" if isinstance(value, PurePath) else f"{name}={value!r}"
            flag = flags.get(name, "--" + name.replace("_", "-"))
            if value_name is None:
                return flag
            return f"{flag} {shlex.quote(str(values[value_name]))}"

        return _FIELD.sub(field, self._template)

    def located(self: _E, where: object, /, **values: Any) -> _E:
        """The same error, prefixed with the file it is about (``path: message``). With
        ``values``, ``where`` is itself a template (``"{path} vs {-like=template}"``)."""
        prefix = str(where) if values else "{_where}"
        values = values or {"_where": where}
        if self._template is None:
            located = type(self).template(prefix + ": {_message}", _message=self.render(),
                                          **values)
        else:
            located = type(self).template(prefix + ": " + self._template, **values,
                                          **self._values)
        located.__cause__ = self.__cause__
        return located

    def __str__(self) -> str:
        return self.render()


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
