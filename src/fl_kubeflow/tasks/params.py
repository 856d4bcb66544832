"""Integer pipeline parameters as KFP delivers them: ints, or floats with an integral value.

The IR stores every number as a protobuf double (an integer constant is ``8080.0``), and
the KFP API server accepts any number for a ``NUMBER_INTEGER`` parameter: ``3.5`` passes
it, values past 2**53 lose digits, and ``1e21`` or more arrive in exponent form. KFP's own
driver usually hands the executor an int, but nothing guarantees it, so every integer
input of a component goes through :func:`integer_param` before it is used.
"""

from __future__ import annotations

import math

# Beyond this a double no longer holds every integer: the value typed may not be the one here.
MAX_EXACT_INTEGER = 2**53


class ParameterError(ValueError):
    """A pipeline parameter has a value its component cannot use; the message names it."""


def integer_param(name: str, value: object) -> int:
    """``value`` as an int: an int, or a finite float with an integral value within 2**53.

    Raises ParameterError naming ``name`` for anything else: a bool, a non-integral or
    non-finite float, a float too large to be exact, or a value of another type.
    """
    if isinstance(value, bool):
        # bool is an int subclass: True would silently become 1.
        raise ParameterError(f"{name} must be an integer, got the boolean {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ParameterError(f"{name} must be an integer, got {value!r}")
        if not value.is_integer():
            raise ParameterError(f"{name} must be an integer, got {value!r} (a fractional number)")
        if abs(value) > MAX_EXACT_INTEGER:
            raise ParameterError(
                f"{name} = {value!r} is beyond 2**53, where a JSON number no longer holds "
                "every integer exactly; use a smaller value"
            )
        return int(value)
    raise ParameterError(f"{name} must be an integer, got {type(value).__name__} {value!r}")


def integer_params(**values: object) -> tuple[int, ...]:
    """:func:`integer_param` for each keyword, in the order given (unpack the result)."""
    return tuple(integer_param(name, value) for name, value in values.items())
