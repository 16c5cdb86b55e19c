"""Finding a secret that a response echoes back, in any form of a documented family (invariant 2).

Redaction looks for a fixed list of encodings and cannot win against a hostile tool, which can
always pick another. So a response to a call that *carried* a secret (an injected header, a
provider's API key) is searched for that secret under the broad family below, and a match is a
refusal with an incident (the gateway's job), not a silent redaction. ``SECURITY.md`` lists the
family for users; keep the two in step.

The family. The response's strings (status, header names and values, body) are searched each on
its own and all joined in order, so a secret split across headers and body is found, and the
joined text of the previous responses to calls that carried the same secret can be prepended, so
one split across results is found when its last part arrives. Each text is searched as it is
and after decoding, up to two layers deep:

* **text unescapes**: URL percent-encoding (``%xx``, ``+``), HTML and XML character references
  (``&#x73;``, ``&amp;``), backslash escapes (``\\u0073``, ``\\x73``, ``\\163``, ``\\n``) of JSON,
  JavaScript, Python and C, and Unicode compatibility forms (NFKC: fullwidth letters, ...);
* **binary decodings**, over only that alphabet's characters and at every alignment, so line
  breaks, separators and splits do not hide them: base64 (standard and URL-safe), base32, hex;
* **decompression** of any byte string, raw or decoded: gzip, zlib, raw deflate, bzip2, xz/lzma;
* **comparison**, case-insensitive and over ASCII letters and digits only (punctuation, spaces,
  quotes and the NUL bytes of UTF-16 are dropped, so ``s-e-c-r-e-t`` matches), forwards,
  reversed, in ROT13, and every second or third character (a secret interleaved with filler).

Outside the family (not claimed): encryption or any keyed transform, arbitrary permutations or
substitutions, arithmetic on the value, a secret leaked a few characters per response whose
parts never come together in the window searched, or one spread over more responses than the
window keeps. Those are what destination binding (``spec.destinations``) is for.
"""

from __future__ import annotations

import base64
import bz2
import hashlib
import html
import lzma
import re
import unicodedata
import urllib.parse
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

MAX_OUTPUT = 8 * 1024 * 1024
"""A decompression stops here: a bomb must not stall the gateway (its start is still searched)."""
_KEEP = b"abcdefghijklmnopqrstuvwxyz0123456789"
_DROP = bytes(b for b in range(256) if b not in _KEEP)
_ROT13 = bytes.maketrans(b"abcdefghijklmnopqrstuvwxyz", b"nopqrstuvwxyzabcdefghijklm")
_B64_KEEP = re.compile(rb"[^A-Za-z0-9+/]+")
_B32_KEEP = re.compile(rb"[^A-Z2-7]+")
_B32_TO_DIGITS = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789abcdefghijklmnopqrstuv")
_HEX_KEEP = re.compile(rb"[^0-9a-f]+")
_BACKSLASH = re.compile(r"\\(u[0-9a-fA-F]{4}|x[0-9a-fA-F]{2}|[0-7]{1,3}|.)", re.DOTALL)
_SIMPLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", "0": "\0"}
_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda")
_DEEP = 256 * 1024
"""Texts and byte strings longer than this get one layer of decoding, not two (time bound)."""
_MIN_PIECE = 6
"""A split secret's pieces are searched for only when each is at least this long."""
_MAX_PIECES = 4
_MIN_FOLDED = 6
"""A secret shorter than this once folded is also compared as it is (folding would match by chance)."""


@dataclass(frozen=True, kw_only=True)
class Echo:
    """A secret found in a response."""

    secret: str
    """The secret's label (``name`` or ``name/key``)."""
    form: str
    """How it was found, e.g. ``base64 > gzip > reversed``: decodings outermost first."""


def fold(data: bytes) -> bytes:
    """Lowercase ASCII letters and digits only: the form every comparison is made in."""
    return data.lower().translate(None, _DROP)


def _fold_text(text: str) -> bytes:
    return fold(unicodedata.normalize("NFKC", text).casefold().encode("utf-8", "surrogatepass"))


@dataclass(frozen=True)
class _Needle:
    label: str
    folded: bytes
    raw: bytes
    """The value as UTF-8, compared case-insensitively when folding leaves too little of it."""


def _needles(secrets: Mapping[str, str]) -> list[_Needle]:
    return [
        _Needle(label, _fold_text(value), value.casefold().encode("utf-8", "surrogatepass"))
        for label, value in secrets.items()
    ]


def _match(needles: list[_Needle], data: bytes, raw_lower: bytes) -> tuple[str, str] | None:
    """(label, comparison) of the first needle in ``data`` (already folded), or None."""
    slices: list[tuple[str, bytes]] = [("", data)]
    for step, nth in ((2, "every second character"), (3, "every third character")):
        slices.extend((nth, data[start::step]) for start in range(step))
        # Filler between a secret's characters may be punctuation, which folding drops but the
        # secret's own punctuation keeps its place: stride over the unfolded text as well.
        slices.extend((nth, fold(raw_lower[start::step])) for start in range(step))
    for needle in needles:
        if len(needle.folded) < _MIN_FOLDED and needle.raw in raw_lower:
            return needle.label, "as is"
        if len(needle.folded) < _MIN_FOLDED:
            continue
        for how, text in slices:
            if needle.folded in text:
                return needle.label, how or "as is"
        if needle.folded[::-1] in data:
            return needle.label, "reversed"
        if needle.folded.translate(_ROT13) in data:
            return needle.label, "rot13"
    return None


def _text_views(text: str) -> Iterable[tuple[str, str]]:
    """(name, text) for each unescaping that changes ``text``."""
    steps: list[tuple[str, Callable[[str], str]]] = [
        ("url-decoded", urllib.parse.unquote_plus),
        ("html-unescaped", html.unescape),
        ("backslash-unescaped", _unbackslash),
        ("nfkc", lambda t: unicodedata.normalize("NFKC", t)),
    ]
    for name, step in steps:
        try:
            changed = step(text)
        except (ValueError, UnicodeError):
            continue
        if changed != text:
            yield name, changed


def _unbackslash(text: str) -> str:
    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        if code[0] in "ux" and len(code) > 1:
            return chr(int(code[1:], 16))
        if code.isdigit():
            return chr(int(code, 8))
        return _SIMPLE_ESCAPES.get(code, code)

    return _BACKSLASH.sub(one, text) if "\\" in text else text


def _decodings(data: bytes) -> Iterable[tuple[str, bytes]]:
    """Base64, base32 and hex of ``data``'s characters in each alphabet, at every alignment; a
    partial last group is padded, not dropped, so a secret at the very end keeps its last bytes."""
    b64 = _B64_KEEP.sub(b"", data.replace(b"-", b"+").replace(b"_", b"/"))
    if len(b64) >= 8:
        for start in range(4):
            chunk = b64[start:]
            chunk = chunk[: len(chunk) - 1] if len(chunk) % 4 == 1 else chunk
            yield "base64", base64.b64decode(chunk + b"=" * (-len(chunk) % 4))
    b32 = _B32_KEEP.sub(b"", data.upper())
    if len(b32) >= 8:
        for start in range(8):
            yield "base32", _b32decode(b32[start:])
    hexed = _HEX_KEEP.sub(b"", data.lower())
    if len(hexed) >= 8:
        for start in range(2):
            chunk = hexed[start:]
            yield "hex", bytes.fromhex(chunk[: len(chunk) - len(chunk) % 2].decode())


def _b32decode(chunk: bytes) -> bytes:
    """Base32 of any length (a partial last group's spare bits dropped), in linear time: mapped
    onto the digits Python's ``int`` reads in base 32 (the standard library's decoder is slow)."""
    bits = len(chunk) * 5
    if not chunk:
        return b""
    number = int(chunk.translate(_B32_TO_DIGITS), 32) >> (bits % 8)
    return number.to_bytes(bits // 8, "big")


def _decompressions(data: bytes) -> Iterable[tuple[str, bytes]]:
    """Every compressed stream that starts at a known magic number, or raw deflate at the start."""
    starts = sorted({pos for magic in _MAGIC for pos in _positions(data, magic)})
    for pos in [*starts[:8], 0]:
        for name, decompressor in _decompressors(data[pos : pos + 2]):
            try:
                out = decompressor.decompress(data[pos:], MAX_OUTPUT)
            except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError):
                continue
            if out:
                yield name, out


def _decompressors(head: bytes) -> list[tuple[str, _Decompressor]]:
    if head.startswith(b"\x1f\x8b"):
        return [("gzip", zlib.decompressobj(16 + zlib.MAX_WBITS))]
    if head.startswith(b"BZ"):
        return [("bzip2", _Capped(bz2.BZ2Decompressor()))]
    if head.startswith(b"\xfd7"):
        return [("xz", _Capped(lzma.LZMADecompressor()))]
    if head[:1] == b"\x78":
        return [("zlib", zlib.decompressobj())]
    return [("deflate", zlib.decompressobj(-zlib.MAX_WBITS))]


class _Decompressor(Protocol):
    def decompress(self, data: bytes, max_length: int = ..., /) -> bytes: ...


class _Capped:
    """bz2 and lzma decompressors behind zlib's ``decompress(data, max_length)``."""

    def __init__(self, inner: bz2.BZ2Decompressor | lzma.LZMADecompressor) -> None:
        self._inner = inner

    def decompress(self, data: bytes, max_length: int = -1, /) -> bytes:
        return self._inner.decompress(data, max_length)


def _positions(data: bytes, magic: bytes) -> Iterable[int]:
    pos = data.find(magic)
    while pos != -1:
        yield pos
        pos = data.find(magic, pos + 1)


class _Search:
    def __init__(self, needles: list[_Needle]) -> None:
        self.needles = needles
        self.seen: set[bytes] = set()

    def text(self, text: str, path: tuple[str, ...], depth: int) -> Echo | None:
        views = [(path, text)]
        views.extend(((*path, name), view) for name, view in _text_views(text))
        if (
            depth > 0 and len(text) <= _DEEP
        ):  # an unescaped text may itself be escaped again (a URL in a JSON string)
            views.extend(
                ((*path, first, name), again)
                for first, once in list(_text_views(text))
                for name, again in _text_views(once)
            )
        for where, view in views:
            data = view.encode("utf-8", "surrogatepass")
            folded = _fold_text(view)
            found = self._check(data, folded, where) or self._split(folded, where)
            if found is None:
                found = self.binary(data, where, depth, decode_only=True)
            if found is not None:
                return found
        return None

    def binary(
        self, data: bytes, path: tuple[str, ...], depth: int, *, decode_only: bool = False
    ) -> Echo | None:
        if not decode_only:
            found = self._check(data, fold(data), path)
            if found is not None:
                return found
        for name, out in _decompressions(data):
            found = self._nested(out, (*path, name), depth)
            if found is not None:
                return found
        for name, out in _decodings(data):
            found = self._nested(out, (*path, name), depth)
            if found is not None:
                return found
        return None

    def _nested(self, data: bytes, path: tuple[str, ...], depth: int) -> Echo | None:
        found = self._check(data, fold(data), path)
        if found is not None or depth <= 0 or len(data) > _DEEP:
            return found
        return self.binary(data, path, depth - 1, decode_only=True)

    def _split(self, folded: bytes, path: tuple[str, ...]) -> Echo | None:
        """A secret cut into pieces (each at least ``_MIN_PIECE`` long) found anywhere in
        ``folded``, in any order of appearance: greedy longest pieces, which is the fewest."""
        for needle in self.needles:
            rest, pieces = needle.folded, 0
            if len(rest) < 2 * _MIN_PIECE:
                continue
            while rest and pieces < _MAX_PIECES:
                low, high = 0, len(rest)  # the longest prefix of rest found: binary search,
                while low < high:  # since a prefix of a found prefix is found too
                    mid = (low + high + 1) // 2
                    if rest[:mid] in folded:
                        low = mid
                    else:
                        high = mid - 1
                if low < min(_MIN_PIECE, len(rest)) or (low < len(rest) and len(rest) - low < _MIN_PIECE):
                    break
                rest, pieces = rest[low:], pieces + 1
            if not rest and pieces > 1:
                return Echo(secret=needle.label, form=" > ".join([*filter(None, path), f"split in {pieces}"]))
        return None

    def _check(self, data: bytes, folded: bytes, path: tuple[str, ...]) -> Echo | None:
        key = hashlib.blake2b(folded, digest_size=16).digest()
        if key in self.seen:
            return None
        self.seen.add(key)
        hit = _match(self.needles, folded, data.lower())
        if hit is None:
            return None
        label, how = hit
        steps = [p for p in path if p]
        if how != "as is":
            steps.append(how)
        return Echo(secret=label, form=" > ".join(steps) or "as is")


def find_echo(secrets: Mapping[str, str], texts: Iterable[str], blobs: Iterable[bytes] = ()) -> Echo | None:
    """The first of ``secrets`` (label -> value) that ``texts`` or ``blobs`` carry in a form of
    the family, or None.

    Args:
        secrets: the values the call carried.
        texts: the response's strings, in order; they are searched each alone and all joined.
        blobs: binary parts (a body that is not text), searched as bytes.
    """
    needles = _needles(secrets)
    if not needles:
        return None
    search = _Search(needles)
    strings = list(texts)
    joined = "\n".join(strings)
    for where, text in [("", joined), *(("", s) for s in strings if s != joined)]:
        found = search.text(text, (where,), depth=1)
        if found is not None:
            return found
    for blob in blobs:
        found = search.binary(blob, ("binary body",), depth=1)
        if found is not None:
            return found
    return None
