"""JSON as Bastion accepts it from anyone outside: RFC 8259, so finite numbers only.

Python's ``json`` reads ``NaN``, ``Infinity`` and ``-Infinity``, and reads a number too large for
a float (``1e999``) as ``inf``. None of them is JSON, and none can be written back out the way
Bastion writes JSON (``allow_nan=False``: journal hashes, the agent channel, API answers), so a
value carrying one used to be stored and then fail later, far from where it came in. ``parse_json``
refuses them where they come in, naming the first one's place (``input.x``, ``messages[0].n``).
The API's request bodies and the agent channel both read JSON with it.
"""

from __future__ import annotations

import json
import math
from typing import Any, cast

_BAD = object()
"""Stands in for a refused number while parsing, so its place can be found afterwards."""


class NonFiniteNumber(ValueError):
    """The JSON text holds NaN, an infinity, or a number that overflows to one."""

    def __init__(self, literal: str, path: str) -> None:
        self.literal = literal if len(literal) <= 24 else literal[:20] + "..."
        self.path = path
        """Where the number is: ``a.b[2].c``; empty for the whole document."""
        where = f" at {path!r}" if path else ""
        super().__init__(f"{self.literal} is not a JSON number{where}: JSON numbers are finite")


def parse_json(data: str | bytes) -> Any:
    """Parse JSON text, refusing what is not JSON; numbers are ``int`` or finite ``float``.

    Raises:
        NonFiniteNumber: NaN, Infinity, -Infinity, or a number beyond a float's range.
        ValueError: anything else that is not JSON (``json.JSONDecodeError``, too many digits).
        RecursionError: nested too deeply for the parser.
    """
    refused: list[str] = []

    def constant(name: str) -> Any:
        refused.append(name)
        return _BAD

    def number(text: str) -> Any:
        value = float(text)
        if math.isfinite(value):
            return value
        refused.append(text)
        return _BAD

    value = json.loads(data, parse_constant=constant, parse_float=number)
    if refused:
        raise NonFiniteNumber(refused[0], _place(value))
    return value


def _place(value: Any) -> str:
    """The path of the first stand-in in ``value`` (depth first, in document order)."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, at = stack.pop()
        if item is _BAD:
            return at
        if isinstance(item, dict):
            children = [
                (child, f"{at}.{key}" if at else str(key))
                for key, child in cast(dict[str, Any], item).items()
            ]
        elif isinstance(item, list):
            children = [(child, f"{at}[{i}]") for i, child in enumerate(cast(list[Any], item))]
        else:
            continue
        stack.extend(reversed(children))
    return ""
