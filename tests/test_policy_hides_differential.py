"""Differential: the lazy decoder reads exactly what the eager one did, and ``hides`` never says
"nothing hidden" where the eager one found something.

The reference below is the decision procedure before lazy decoding (percent, ``+`` form
encoding, base64 with its whitespace gone, ``data:`` URIs in any case, JSON in a string),
embedded verbatim so that the property holds the new code to the old semantics, not to itself.
Inputs mix base64 (standard, URL-safe, padded or not, broken by every kind of whitespace),
percent and form encodings, ``data:`` URIs, full-width and confusable characters, lone
surrogates and arbitrary text.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
import urllib.parse
from collections.abc import Collection, Iterator
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.policy._normalize import _hidden, hides  # pyright: ignore[reportPrivateUsage]

_B64 = re.compile(r"[A-Za-z0-9+/_-]{8,}={0,2}")
_DATA_URI = re.compile(r"data:[\w.+/=;-]{0,200}?;base64,", re.IGNORECASE)
_DATA_BODY = re.compile(r"[A-Za-z0-9+/_=\s-]*")


def _ref_hidden(text: str, decode: Collection[str]) -> Iterator[Any]:
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
        yield from _ref_base64(stripped)


def _ref_base64(text: str) -> Iterator[str]:
    if _B64.fullmatch(text):
        compact = text
    else:
        compact = "".join(text.split())
        if compact == text or len(compact) % 4 == 1 or not _B64.fullmatch(compact):
            compact = ""
    decoded = _ref_b64(compact) if compact else None
    if decoded is not None:
        yield decoded
    if "data:" in text.lower():
        for found in _DATA_URI.finditer(text):
            body = _DATA_BODY.match(text, found.end())
            if body is None:
                continue
            whole = "".join(body.group(0).split())
            first = body.group(0).split()[0] if body.group(0).split() else ""
            for payload in dict.fromkeys((whole, first)):
                decoded = _ref_b64(payload) if payload else None
                if decoded is not None:
                    yield decoded
                    break


def _ref_b64(text: str) -> str | None:
    padded = text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4)
    try:
        if "-" in text or "_" in text:
            raw = base64.urlsafe_b64decode(padded)
        else:
            raw = base64.b64decode(padded, validate=True)
        text = raw.decode("utf-8", "replace")
        if "\ufffd" not in text:
            return text
        return raw.decode("utf-8") if b"\xef\xbf\xbd" in raw else None
    except (binascii.Error, ValueError):
        return None


_WHITESPACE = [" ", "\n", "\t", "\r\n", "\x0b", "\x0c", "\x1c", "\x85", "\xa0", "\u2028", "\u3000", "  "]
_PAYLOADS = st.one_of(
    st.sampled_from(
        ["drop table", "rm -rf /", "ｄｒｏｐ table", "dr\u043ep", "caf\u00e9 \U0001f600", "\ufffd!"]
    ),
    st.text(max_size=16),
)


@st.composite
def _encoded(draw: st.DrawFn) -> str:
    payload: str = draw(_PAYLOADS)
    raw = payload.encode("utf-8", "surrogatepass")
    kind = draw(st.integers(0, 6))
    if kind == 0:
        text = base64.b64encode(raw).decode()
    elif kind == 1:
        text = base64.urlsafe_b64encode(raw).decode()
    elif kind == 2:
        text = urllib.parse.quote(payload, errors="surrogatepass")
    elif kind == 3:
        text = urllib.parse.quote_plus(payload, errors="surrogatepass")
    elif kind == 4:
        scheme = draw(st.sampled_from(["data:", "DATA:", "dAtA:", "data:text/plain;charset=utf-8"]))
        text = f"{scheme};base64,{base64.b64encode(raw).decode()}"
    else:
        text = base64.b64encode(raw).decode()
    if draw(st.booleans()):
        text = text.rstrip("=") + "=" * draw(st.integers(0, 3))
    pieces = list(text)
    for at in sorted(draw(st.lists(st.integers(0, len(pieces)), max_size=6)), reverse=True):
        pieces.insert(at, draw(st.sampled_from(_WHITESPACE)))
    return draw(st.sampled_from(["", " ", "\n", "x ", '"'])) + "".join(pieces)


_TEXTS = st.one_of(
    _encoded(),
    _encoded().map(lambda t: base64.b64encode(t.encode("utf-8", "surrogatepass")).decode()),
    st.text(alphabet=st.characters(exclude_categories=()), max_size=30),  # lone surrogates too
    st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_ %:\n\u3000", max_size=40
    ),
)
_DECODINGS = st.sampled_from([frozenset(), frozenset({"percent"}), frozenset({"base64"})])


@settings(max_examples=3000, deadline=None)
@given(_TEXTS, st.one_of(_DECODINGS, st.just(frozenset({"percent", "base64"}))))
def test_lazy_decoding_reads_what_eager_decoding_read(text: str, decode: frozenset[Any]) -> None:
    before = list(_ref_hidden(text, decode))
    if before:
        assert hides(text, decode), (text, before)
    assert list(_hidden(text, decode)) == before
