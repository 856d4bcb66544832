"""Binary values in the stages' JSON: standard base64, checked for their length."""

from __future__ import annotations


def encode(value: bytes) -> str:
    """Base64 text of ``value``."""
    raise NotImplementedError


def decode(text: object, size: int, what: str) -> bytes:
    """The ``size`` bytes ``text`` encodes; ValueError naming ``what`` otherwise."""
    raise NotImplementedError
