"""Checks of option values: each error names the option and the value it got.

Options arrive from the CLI (``--strategy-option key=value``), from a pipeline
parameter (JSON), from Python or, on a client, in a round's config from the server,
so numbers may come as int, float or numeric string; booleans are refused where a
number is meant (``True`` is not 1.0 here). Shared by the strategies and the client.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"option {name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"option {name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"option {name} must be finite, got {value!r}")
    return number


def check_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
) -> float:
    """``value`` as a float within the bounds, or ValueError naming ``name``."""
    number = _number(name, value)
    low_ok = minimum is None or (number >= minimum if min_inclusive else number > minimum)
    high_ok = maximum is None or (number <= maximum if max_inclusive else number < maximum)
    if not (low_ok and high_ok):
        low = "" if minimum is None else f"{'[' if min_inclusive else '('}{minimum:g}"
        high = "" if maximum is None else f"{maximum:g}{']' if max_inclusive else ')'}"
        if minimum is None:
            want = f"<{'=' if max_inclusive else ''} {maximum:g}"
        elif maximum is None:
            want = f">{'=' if min_inclusive else ''} {minimum:g}"
        else:
            want = f"in {low}, {high}"
        raise ValueError(f"option {name} must be {want}, got {value!r}")
    return number


def check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    """``value`` as an int (no fractional part) >= ``minimum``, or ValueError naming ``name``."""
    number = _number(name, value)
    if number != int(number):
        raise ValueError(f"option {name} must be an integer, got {value!r}")
    if minimum is not None and number < minimum:
        raise ValueError(f"option {name} must be >= {minimum}, got {value!r}")
    return int(number)


def check_fraction(name: str, value: Any) -> float:
    """A share of clients: in (0, 1]."""
    return check_float(name, value, minimum=0.0, maximum=1.0, min_inclusive=False)


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """One of ``choices`` (case-insensitive), or ValueError listing them."""
    allowed = tuple(choices)
    text = str(value).strip().lower()
    if text not in allowed:
        raise ValueError(f"option {name} must be one of {', '.join(allowed)}; got {value!r}")
    return text
