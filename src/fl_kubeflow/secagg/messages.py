"""Binary values in the stages' JSON: standard base64, checked for their length."""

from __future__ import annotations

import base64
import binascii


def encode(value: bytes) -> str:
    """Base64 text of ``value``."""
    return base64.b64encode(value).decode("ascii")


def decode(text: object, size: int, what: str) -> bytes:
    """The ``size`` bytes ``text`` encodes; ValueError naming ``what`` otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be base64 text, got {type(text).__name__}")
    # A too-long text cannot be right: refuse it before decoding it.
    if len(text) != 4 * ((size + 2) // 3):
        raise ValueError(f"{what} must be {size} bytes in base64, got {len(text)} characters")
    try:
        value = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None
    if len(value) != size:
        raise ValueError(f"{what} must be {size} bytes, got {len(value)}")
    return value
