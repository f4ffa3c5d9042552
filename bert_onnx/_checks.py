"""Checks for values where they enter bert-onnx (arguments, options, request fields), each in one place.

A check raises :class:`~bert_onnx.errors.InvalidValueError` naming the value and what is accepted, and returns the
value normalized (a NumPy integer becomes an ``int``). ``bool`` is never accepted as an ``int``: ``True`` is
almost always a mistake where a count is meant. This module imports only the package's errors.
"""

from __future__ import annotations

import math
import numbers

from bert_onnx.errors import InvalidValueError


def is_int(value: object) -> bool:
    """An integer that is not a ``bool`` (Python's or NumPy's)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and type(value).__name__ != "bool_"


def check_int(name: str, value: object, low: int | None = None, high: int | None = None, hint: str = "") -> int:
    """``value`` as an ``int`` in ``[low, high]`` (either bound may be open), or an error naming ``name``."""
    if not is_int(value) or (low is not None and int(value) < low) or (high is not None and int(value) > high):  # type: ignore[call-overload]
        if low is not None and high is not None:
            wanted = f"an int in [{low}, {high}]"
        elif low is not None:
            wanted = "a positive int" if low == 1 else f"an int >= {low}"
        elif high is not None:
            wanted = f"an int <= {high}"
        else:
            wanted = "an int"
        raise InvalidValueError(f"{name}={value!r} must be {wanted}{f' ({hint})' if hint else ''}")
    return int(value)  # type: ignore[call-overload]


def check_optional_int(
    name: str, value: object, low: int | None = None, high: int | None = None, hint: str = ""
) -> int | None:
    """As :func:`check_int`, with ``None`` passed through."""
    return None if value is None else check_int(name, value, low, high, hint)


def check_bool(name: str, value: object) -> bool:
    """``value`` as a ``bool`` (Python's or NumPy's), or an error naming ``name``."""
    if not isinstance(value, bool) and type(value).__name__ != "bool_":
        raise InvalidValueError(f"{name}={value!r} must be True or False")
    return bool(value)


def check_choice(name: str, value: object, choices: tuple[str, ...] | list[str]) -> str:
    """``value`` if it is one of ``choices``, or an error listing them."""
    if not isinstance(value, str) or value not in choices:
        raise InvalidValueError(f"{name}={value!r} is not one of {', '.join(choices)}")
    return value


def check_float(name: str, value: object, low: float | None = None, high: float | None = None, hint: str = "") -> float:
    """``value`` (an int or a float, never a ``bool``, NaN or infinity) as a ``float`` in ``[low, high]``."""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool) and type(value).__name__ != "bool_"
    number = float(value) if real else math.nan  # type: ignore[arg-type]  # a numbers.Real here
    if not math.isfinite(number) or (low is not None and number < low) or (high is not None and number > high):
        if low is not None and high is not None:
            wanted = f"a number in [{low:g}, {high:g}]"
        elif low is not None:
            wanted = f"a number >= {low:g}"
        elif high is not None:
            wanted = f"a number <= {high:g}"
        else:
            wanted = "a finite number"
        raise InvalidValueError(f"{name}={value!r} must be {wanted}{f' ({hint})' if hint else ''}")
    return number
