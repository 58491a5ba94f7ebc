"""Cheap, tolerant reads from a webhook payload.

The request path reads only the fields it uses, straight from `json.loads` output: a full typed
parse costs ~20x more and would refuse genuine deliveries that lack fields we never read (GitHub's
own examples and GHES deliveries omit newer ones).
"""

from __future__ import annotations

from typing import Any


class PayloadError(ValueError):
    """The payload lacks a field we need, or has it with the wrong type."""


def field(payload: Any, *path: str, kind: type | tuple[type, ...] = str, optional: bool = False):
    value = payload
    for i, key in enumerate(path):
        if not isinstance(value, dict):
            raise PayloadError(f"{'.'.join(path[:i]) or 'body'} is not an object")
        if key not in value or value[key] is None:
            if optional:
                return None
            raise PayloadError(f"missing {'.'.join(path[: i + 1])}")
        value = value[key]
    # bool is an int subclass; an id of `true` is malformed, not 1.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise PayloadError(f"{'.'.join(path)} has the wrong type")
    # JSON can escape a lone surrogate ("\ud800"): not text, and Redis cannot store it.
    if isinstance(value, str) and not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise PayloadError(f"{'.'.join(path)} is not valid Unicode") from None
    return value
