"""The one text form every blocked pattern is matched in, and every string an argument holds.

``normalize`` maps a string to the form an evasion cannot change: compatibility-decomposed
(NFKD, so full-width letters, ligatures, mathematical alphabets and circled letters become plain
ones), stripped of combining marks and invisible characters (zero-width spaces and joiners,
soft hyphens, bidi controls, variation selectors, tag characters, C0/C1 controls), case-folded,
recomposed (NFKC), with every run of whitespace (tabs, newlines, NBSP, ideographic spaces...)
collapsed to one space and the ends trimmed. Patterns go through the same function at compile
time, so ``"DROP\u00a0\tTABLE"``, full-width ``"\uff44\uff52\uff4f\uff50 table"`` and ``"dr\u200bop table"`` all read
``"drop table"``.

``strings`` yields every string a JSON value holds, keys and values, at any depth, and with
``decode`` also what percent-encoding, base64 or JSON inside a string hides.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import json
import re
import unicodedata
import urllib.parse
from collections.abc import Collection, Iterator
from typing import Any, Literal, cast

Decoding = Literal["percent", "base64"]
MAX_DEPTH = 32
"""Deeper JSON than this is refused by the caller's scan (fail closed), never silently skipped."""
_ASCII_DROP = dict.fromkeys((*range(9), *range(14, 28), 127))
"""ASCII controls that are not whitespace: removed, so ``"dr\\x00op"`` reads ``"drop"``."""
_B64 = re.compile(r"[A-Za-z0-9+/_-]{8,}={0,2}")


@functools.cache
def _invisible() -> dict[int, None]:
    """Combining marks, format and control characters (but not whitespace), as a table that
    ``str.translate`` uses to remove them.

    Built once per process from the running Python's Unicode database. Planes 2-13 and 15-16
    hold no such characters (CJK ideographs and private use), so they are not scanned.
    """
    return {
        cp: None
        for cp in (*range(0x20000), *range(0xE0000, 0xE1000))
        if unicodedata.category(chr(cp)) in ("Mn", "Me", "Cf", "Cc") and not chr(cp).isspace()
    }


def warm() -> None:
    """Build the invisible-character table now rather than on the first non-ASCII string."""
    _invisible()


def normalize(text: str) -> str:
    """The matching form of ``text`` (see the module docstring)."""
    if text.isascii():
        low = text.lower()
        if low.isprintable() and "  " not in low and low[:1] != " " and low[-1:] != " ":
            return low  # the common case: nothing to fold, collapse or remove
        return " ".join(low.translate(_ASCII_DROP).split())
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = decomposed.translate(_invisible())
    folded = unicodedata.normalize("NFKC", stripped.casefold())
    return " ".join(folded.split())


def strings(value: Any, decode: Collection[Decoding] = ()) -> Iterator[str]:
    """Every string in ``value``: keys and values of dicts, items of lists, at any depth.

    Strings that hold JSON (an object or an array) are parsed and their strings yielded too;
    with ``decode``, percent-encoded and base64 strings are decoded and the results
    scanned the same way, layer after layer. Raises ``RecursionError`` past ``MAX_DEPTH`` levels.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise RecursionError(f"arguments nest deeper than {MAX_DEPTH} levels")
        if isinstance(item, str):
            yield item
            stack.extend((hidden, depth + 1) for hidden in _hidden(item, decode))
        elif isinstance(item, dict):
            for key, val in cast(dict[Any, Any], item).items():
                stack.append((key, depth + 1))
                stack.append((val, depth + 1))
        elif isinstance(item, list | tuple):
            stack.extend((v, depth + 1) for v in cast(list[Any], item))


def _hidden(text: str, decode: Collection[Decoding]) -> Iterator[Any]:
    """What ``text`` hides, one layer down: a parsed JSON document, or decoded strings."""
    stripped = text.strip()
    if stripped[:1] in ("{", "[", '"'):
        with contextlib.suppress(ValueError):
            yield json.loads(stripped)
    if "percent" in decode and ("%" in text or "+" in text):
        unquoted = urllib.parse.unquote(text, errors="replace")
        if unquoted != text:
            yield unquoted
        plus = urllib.parse.unquote_plus(text, errors="replace")
        if plus != unquoted:
            yield plus
    if "base64" in decode and len(stripped) >= 8 and _B64.fullmatch(stripped):
        decoded = _b64(stripped)
        if decoded is not None:
            yield decoded


def _b64(text: str) -> str | None:
    padded = text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4)
    try:
        if "-" in text or "_" in text:
            raw = base64.urlsafe_b64decode(padded)
        else:
            raw = base64.b64decode(padded, validate=True)
        return raw.decode("utf-8")
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        return None
