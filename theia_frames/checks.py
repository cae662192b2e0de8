"""One check, one wording, for each kind of argument the package takes.

Every public function that takes a count, a number of seconds or another
positive quantity checks it here, so a bad value gets the same
:class:`~theia_frames.exceptions.UsageError` wherever it is given:

    >>> positive_int("batch_size", 500)
    500
    >>> positive_int("batch_size", 0)
    Traceback (most recent call last):
    ...
    theia_frames.exceptions.UsageError: batch_size must be a positive whole number, got 0
    >>> positive_seconds("timeout", None, none_ok=True) is None
    True
    >>> positive_number("rate", -1, unit="events per second")
    Traceback (most recent call last):
    ...
    theia_frames.exceptions.UsageError: rate must be a positive number of events per second, got -1
"""

from __future__ import annotations

import math
import numbers
from typing import Literal, overload

from .exceptions import UsageError

__all__ = ["positive_int", "positive_number", "positive_seconds"]


def _or_none(none_ok: bool) -> str:
    return " or None" if none_ok else ""


@overload
def positive_int(name: str, value: object, *, none_ok: Literal[False] = False) -> int: ...
@overload
def positive_int(name: str, value: object, *, none_ok: bool) -> int | None: ...
def positive_int(name: str, value: object, *, none_ok: bool = False) -> int | None:
    """*value* as an ``int`` if it is a whole number ≥ 1 (``None`` too when *none_ok*), else raise.

    ``True``/``False`` and floats are refused: ``batch_size=2.5`` is a mistake, not a 2.
    """
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise UsageError(f"{name} must be a positive whole number{_or_none(none_ok)}, got {value!r}")
    return int(value)


@overload
def positive_number(name: str, value: object, *, unit: str = "", none_ok: Literal[False] = False) -> float: ...
@overload
def positive_number(name: str, value: object, *, unit: str = "", none_ok: bool) -> float | None: ...
def positive_number(name: str, value: object, *, unit: str = "", none_ok: bool = False) -> float | None:
    """*value* as a ``float`` if it is a number > 0 (``None`` too when *none_ok*), else raise.

    *unit* words the message: ``unit="seconds"`` says "a positive number of seconds".
    NaN, booleans and strings are refused.
    """
    if value is None and none_ok:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or math.isnan(float(value))
        or not float(value) > 0
    ):
        of = f" of {unit}" if unit else ""
        raise UsageError(f"{name} must be a positive number{of}{_or_none(none_ok)}, got {value!r}")
    return float(value)


@overload
def positive_seconds(name: str, value: object, *, none_ok: Literal[False] = False) -> float: ...
@overload
def positive_seconds(name: str, value: object, *, none_ok: bool) -> float | None: ...
def positive_seconds(name: str, value: object, *, none_ok: bool = False) -> float | None:
    """:func:`positive_number` for a time span given in seconds."""
    return positive_number(name, value, unit="seconds", none_ok=none_ok)
