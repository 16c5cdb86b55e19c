"""The text forms every blocked pattern is matched in, and every string an argument holds.

``normalize`` maps a string to the form an evasion cannot change: compatibility-decomposed
(NFKD, so full-width letters, ligatures, mathematical alphabets and circled letters become plain
ones), stripped of combining marks and invisible characters (zero-width spaces and joiners,
soft hyphens, bidi controls, variation selectors, tag characters, C0/C1 controls, and the
default-ignorable or blank letters: Hangul fillers, the Braille blank), case-folded,
recomposed (NFKC), with every run of whitespace (tabs, newlines, NBSP, ideographic spaces...)
collapsed to one space and the ends trimmed. Patterns go through the same function at compile
time, so ``"DROP\u00a0\tTABLE"``, full-width ``"\uff44\uff52\uff4f\uff50 table"`` and ``"dr\u200bop table"`` all read
``"drop table"``.

An invisible character is as likely a separator as a splinter: ``"drop\u200btable"`` is meant to
read ``"drop table"``. ``forms`` gives both readings of a string that holds one (invisible
characters removed, and read as spaces); a pattern found in either is found.

Cost is linear in the text: combining marks are removed *before* the NFKD pass too, since
CPython's canonical reordering sorts a run of combining marks in quadratic time (80,000 marks
after one letter took 24 s).

``strings`` yields every string a JSON value holds, keys and values, at any depth, and with
``decode`` also what percent-encoding, base64 (with line breaks or spaces, or as a ``data:`` URI)
or JSON inside a string hides, each decoded string once, within a budget (``MAX_DECODED``).
``hides`` says, without decoding, when a string certainly hides nothing (the common case: no
``%XX`` escape, no ``+``, no ``data:``, and not base64 even with its whitespace removed), so a
scanner decodes only the strings that look encoded.
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

Decoding = Literal["percent", "base64", "confusables"]
"""What a blocked pattern also looks through. ``confusables`` is a fold, not a decoding: it travels
with them because it too splits patterns into groups that each read text their own way."""
MAX_DEPTH = 32
"""Deeper JSON than this is refused by the caller's scan (fail closed), never silently skipped."""
MAX_DECODED = 1 << 22
"""Characters that decoding may produce from one value, beyond its own length (each layer of
percent-encoding can fork into two readings): past it, the scan fails closed."""
_ASCII_DROP = dict.fromkeys((*range(9), *range(14, 28), 127))
"""ASCII controls that are not whitespace: removed, so ``"dr\\x00op"`` reads ``"drop"``."""
_ASCII_SPACE = dict.fromkeys(_ASCII_DROP, " ")
_B64 = re.compile(r"[A-Za-z0-9+/_-]{8,}={0,2}")
_DATA_URI = re.compile(r"data:[\w.+/=;-]{0,200}?;base64,", re.IGNORECASE)
_DATA_BODY = re.compile(r"[A-Za-z0-9+/_=\s-]*")
_PERCENT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_NOT_A_FIRST_BYTE = frozenset("ghijklmnopqrstuv+/-_")
"""Base64 characters whose 6 bits make the first decoded byte one no UTF-8 text starts with:
``g``-``v`` a continuation byte (0x80-0xBF), ``+ / - _`` 0xF8 or more. Such a string decodes to
no text (``_b64`` is None), so it is not decoded at all."""
_BLANK_LETTERS = (0x115F, 0x1160, 0x3164, 0xFFA0, 0x2800, *range(0xFFF0, 0xFFF9))
"""Default-ignorable or blank code points that are letters or symbols (Hangul fillers, the
Braille blank, unassigned specials): invisible all the same."""


class DecodeError(ValueError):
    """A value whose decodings exceed the budget; the caller denies rather than scan less."""


@functools.cache
def _tables() -> tuple[dict[int, str | None], dict[int, str | None]]:
    """Two ``str.translate`` tables: combining marks and invisible characters removed; and
    combining marks removed, invisible characters read as spaces.

    Built once per process from the running Python's Unicode database: combining marks are
    categories Mn and Me and anything with a non-zero combining class; invisible characters are
    format and control characters (but not whitespace) and ``_BLANK_LETTERS``. Planes 2-13 and
    15-16 hold no such characters (CJK ideographs and private use), so they are not scanned.
    """
    drop: dict[int, str | None] = {}
    space: dict[int, str | None] = {}
    for cp in (*range(0x20000), *range(0xE0000, 0xE1000)):
        char = chr(cp)
        category = unicodedata.category(char)
        if category in ("Mn", "Me") or unicodedata.combining(char):
            drop[cp] = space[cp] = None
        elif category in ("Cf", "Cc") and not char.isspace():
            drop[cp], space[cp] = None, " "
    for cp in _BLANK_LETTERS:
        drop[cp], space[cp] = None, " "
    return drop, space


def warm() -> None:
    """Build the character tables now rather than on the first non-ASCII string."""
    _tables()


def _fold(stripped: str) -> str:
    """Decomposed, marks removed, case-folded, recomposed, whitespace collapsed."""
    decomposed = unicodedata.normalize("NFKD", stripped).translate(_tables()[0])
    return " ".join(unicodedata.normalize("NFKC", decomposed.casefold()).split())


def normalize(text: str) -> str:
    """The matching form of ``text``, invisible characters removed (see the module docstring)."""
    if text.isascii():
        low = text.lower()
        if low.isprintable() and "  " not in low and low[:1] != " " and low[-1:] != " ":
            return low  # the common case: nothing to fold, collapse or remove
        return " ".join(low.translate(_ASCII_DROP).split())
    return _fold(text.translate(_tables()[0]))


def forms(text: str) -> tuple[str, ...]:
    """Every matching form of ``text``: ``normalize(text)`` and, when it holds invisible
    characters, the same with each of them read as a space."""
    if text.isascii():
        low = text.lower()
        if low.isprintable():
            if "  " not in low and low[:1] != " " and low[-1:] != " ":
                return (low,)
            return (" ".join(low.split()),)
        joined = " ".join(low.translate(_ASCII_DROP).split())
        spaced = " ".join(low.translate(_ASCII_SPACE).split())
        return (joined,) if spaced == joined else (joined, spaced)
    drop, space = _tables()
    removed = text.translate(drop)
    spaced = text.translate(space)
    if len(spaced) == len(removed):
        return (_fold(removed),)
    joined, apart = _fold(removed), _fold(spaced)
    return (joined,) if apart == joined else (joined, apart)


def strings(value: Any, decode: Collection[Decoding] = ()) -> Iterator[str]:
    """Every string in ``value``: keys and values of dicts, items of lists, at any depth.

    Strings that hold JSON (an object or an array) are parsed and their strings yielded too;
    with ``decode``, percent-encoded and base64 strings are decoded and the results
    scanned the same way, layer after layer, each distinct decoded string once. Raises
    ``RecursionError`` past ``MAX_DEPTH`` levels and ``DecodeError`` when decoding would produce
    more than ``MAX_DECODED`` characters beyond the value's own.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    seen: set[str] = set()
    budget = MAX_DECODED
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise RecursionError(f"arguments nest deeper than {MAX_DEPTH} levels")
        if isinstance(item, str):
            yield item
            for hidden in _hidden(item, decode):
                if isinstance(hidden, str):
                    if hidden in seen:
                        continue
                    seen.add(hidden)
                    budget -= len(hidden)
                    if budget < 0:
                        raise DecodeError(
                            f"the arguments decode to more than {MAX_DECODED} characters of encoded layers"
                        )
                stack.append((hidden, depth + 1))
        elif isinstance(item, dict):
            for key, val in cast(dict[Any, Any], item).items():
                stack.append((key, depth + 1))
                stack.append((val, depth + 1))
        elif isinstance(item, list | tuple):
            stack.extend((v, depth + 1) for v in cast(list[Any], item))


def hides(text: str, decode: Collection[Decoding]) -> bool:
    """Whether ``text`` may hide something ``strings`` would read one layer down (JSON, or a
    decoding in ``decode``): the cheap test run before any parsing or decoding.

    False only when ``_hidden`` finds nothing, so a caller that already scanned ``text`` itself
    may stop there. True can be a false alarm (text that only starts like JSON, or names a
    ``data:`` URI) that the decoding itself then settles. Percent decoding changes a string only
    where it holds a ``%XX`` escape or a ``+``; base64 is settled (see ``_whole_b64``) on the
    whole string once its whitespace is gone, since words with spaces between them are as
    base64-shaped as base64 with line breaks.
    """
    stripped = text.strip()
    if stripped[:1] in ("{", "[", '"'):
        return True
    if "percent" in decode and ("+" in text or ("%" in text and _PERCENT_ESCAPE.search(text) is not None)):
        return True
    if "base64" in decode and len(stripped) >= 8:
        if ":" in text and "data:" in text.lower():
            return True
        return _whole_b64(stripped) is not None
    return False


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
    if "base64" in decode and len(stripped) >= 8:
        yield from _base64(stripped)


def _whole_b64(text: str) -> str | None:
    """What ``text`` (stripped, 8 characters or more) encodes as one base64 string once its
    whitespace (line breaks, spaces) is removed, or None.

    Ordered for the common case, words and spaces, which is base64-shaped once the spaces go:
    letters and digits need no regex, 4n+1 characters no decoding, and a first character that
    decodes to a byte no UTF-8 text starts with (``_NOT_A_FIRST_BYTE``) no decoding either."""
    compact = text.replace(" ", "")
    if compact.isascii() and compact.encode().isalnum():  # bytes: no Unicode database per character
        if len(compact) < 8:
            return None
    else:
        if not compact.isprintable():  # other whitespace than spaces (every other kind is unprintable)
            compact = "".join(compact.split())
        if _B64.fullmatch(compact) is None:
            return None  # not base64, with or without its whitespace
    if len(compact) != len(text) and len(compact) % 4 == 1:
        return None  # whitespace removed, and no base64 is 4n+1 characters long
    if compact[0] in _NOT_A_FIRST_BYTE:
        return None
    return _b64(compact)


def _base64(text: str) -> Iterator[str]:
    """The text base64 ``text`` encodes: the whole string once whitespace (line breaks, spaces)
    is removed, and every ``data:...;base64,`` URI in it."""
    decoded = _whole_b64(text)
    if decoded is not None:
        yield decoded
    if "data:" in text.lower():
        for found in _DATA_URI.finditer(text):
            body = _DATA_BODY.match(text, found.end())
            if body is None:
                continue
            whole = "".join(body.group(0).split())
            first = body.group(0).split()[0] if body.group(0).split() else ""
            for payload in dict.fromkeys((whole, first)):  # with line breaks, or the first run alone
                decoded = _b64(payload) if payload else None
                if decoded is not None:
                    yield decoded
                    break


def _b64(text: str) -> str | None:
    body = text.rstrip("=")
    padded = body + "=" * (-len(body) % 4)
    try:
        if "-" in text or "_" in text:
            raw = base64.urlsafe_b64decode(padded)
        elif len(body) % 4 == 1 and "=" not in body:
            return None  # what the strict decoder raises on (4n+1 characters), without the raise
        else:
            raw = binascii.a2b_base64(padded, strict_mode=True)  # ``b64decode(validate=True)``
        if raw.isascii():
            return raw.decode("ascii")
        # Not raising on the common case (words that happen to be base64-shaped decode to broken
        # UTF-8): a raise costs more than the decoding. A real U+FFFD goes the strict way.
        text = raw.decode("utf-8", "replace")
        if "\ufffd" not in text:
            return text
        return raw.decode("utf-8") if b"\xef\xbf\xbd" in raw else None
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        return None
