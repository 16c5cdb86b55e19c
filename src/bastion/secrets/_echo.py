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
* **binary decodings** at every alignment, over all of the alphabet's characters joined (line
  breaks) and over each run of them with the next (a split by words or JSON keys; the decoded
  pieces are searched for a split secret too): base64 (standard and URL-safe), base32, hex;
  on the response's own strings and binary bodies only (not nested, joined characters only):
  base32hex, base85, ascii85, decimal and octal byte codes, binary octets;
* **decompression** of any byte string, raw or decoded, from every position a header occurs:
  gzip, zlib, raw deflate, bzip2, xz/lzma; a search that reaches its work or output bound
  returns an unverified ``Echo`` (the caller refuses: fail closed);
* **comparison**, case-insensitive and over ASCII letters and digits only (punctuation, spaces,
  quotes and the NUL bytes of UTF-16 are dropped, so ``s-e-c-r-e-t`` matches), forwards,
  reversed, in ROT13 and ROT47, and every second, third or fourth character (interleaved).

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
import itertools
import lzma
import re
import struct
import unicodedata
import urllib.parse
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

MAX_OUTPUT = 8 * 1024 * 1024
"""A decompression stops here (a bomb must not stall the gateway), and the response is refused as
unverifiable: what lies beyond was not searched."""
MAX_WORK = 32 * 1024 * 1024
"""Bytes fed to and produced by decompressors over one search. Every position of a compression
header is tried, so decoys cost work; past this the response is refused as unverifiable."""
_FIRST_FEED = 1024
"""A decompression is fed this much first, then doubling chunks: a false header fails cheaply."""
_KEEP = b"abcdefghijklmnopqrstuvwxyz0123456789"
_DROP = bytes(b for b in range(256) if b not in _KEEP)
_ROT13 = bytes.maketrans(b"abcdefghijklmnopqrstuvwxyz", b"nopqrstuvwxyzabcdefghijklm")
_PRINTABLE = bytes(range(33, 127))
_ROT47 = bytes.maketrans(_PRINTABLE, _PRINTABLE[47:] + _PRINTABLE[:47])
_B32_TO_DIGITS = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789abcdefghijklmnopqrstuv")
_B85_ALPHABET = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&()*+-;<=>?@^_`{|}~"
_B85_VALUES = bytes.maketrans(_B85_ALPHABET, bytes(range(85)))
_A85_VALUES = bytes.maketrans(bytes(range(33, 118)), bytes(range(85)))
_MIN_RUN = 8
"""Runs of an alphabet's characters shorter than this are not decoded on their own."""
_NUMBERS = re.compile(rb"[0-9]+")
_BACKSLASH = re.compile(r"\\(u[0-9a-fA-F]{4}|x[0-9a-fA-F]{2}|[0-7]{1,3}|.)", re.DOTALL)
_SIMPLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", "0": "\0"}
_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda")
_DEEP = 256 * 1024
"""Texts and byte strings longer than this get one layer of decoding, not two (time bound)."""
_STRIDES = (2, 3, 4)
"""A secret interleaved with filler is found every k-th character for each k here."""
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
    """How it was found, e.g. ``base64 > gzip > reversed``: decodings outermost first; for an
    unverifiable response, which bound was reached."""
    verified: bool = True
    """False: the search reached a work bound before it was done, so the response could not be
    shown free of the secret (``secret`` is then the first secret the call carried). Refused
    the same way: fail closed."""


class _Unverifiable(Exception):
    """The search reached a bound; the message says which."""


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
    rot47: bytes
    """The value in ROT47, folded (or lowercased, when folding leaves too little of it)."""
    rot47_unfolded: bool


def _needles(secrets: Mapping[str, str]) -> list[_Needle]:
    needles: list[_Needle] = []
    for label, value in secrets.items():
        rot47 = value.encode("utf-8", "surrogatepass").translate(_ROT47)
        short = len(fold(rot47)) < _MIN_FOLDED
        folded, raw = _fold_text(value), value.casefold().encode("utf-8", "surrogatepass")
        needles.append(_Needle(label, folded, raw, rot47.lower() if short else fold(rot47), short))
    return needles


def _match(needles: list[_Needle], data: bytes, raw_lower: bytes) -> tuple[str, str] | None:
    """(label, comparison) of the first needle in ``data`` (already folded), or None."""
    slices: list[tuple[str, bytes]] = [("", data)]
    for step in _STRIDES:
        nth = f"every character {step}"
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
        if needle.rot47 in (raw_lower if needle.rot47_unfolded else data):
            return needle.label, "rot47"
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


def _decodings(data: bytes, *, rare: bool, runs: bool) -> Iterable[tuple[str, bytes, bool]]:
    """Each binary-to-text encoding of ``data``, at every alignment: once over all of the
    alphabet's characters joined (a line-wrapped encoding), and once over each maximal run of
    them decoded on its own and joined with the next run (an encoding split by words or JSON
    keys, whose characters would shift the alignment of what follows) when ``runs`` is set: on
    the outer layers, not inside another decoding (time bound). A partial last group is
    padded, not dropped, so a secret at the very end keeps its last bytes. The ``rare``
    encodings (base32hex, base85, ascii85 over their joined characters only, and bytes written
    as decimal or octal codes or binary octets) are tried only when asked: on a response's text as it is and its binary
    parts, not inside another decoding or unescaping, and what they yield is not decoded again
    (time bound). Each item: (name, decoded bytes, whether to decode it further)."""
    for name, not_alphabet, runs_of, normalize, decode, group, is_rare in _CODECS:
        if is_rare and not rare:
            continue
        normal = normalize(data)
        joined = normal.translate(None, not_alphabet)
        if len(joined) < _MIN_RUN:
            continue
        for start in range(group):
            yield name, decode(joined[start:]), not is_rare
        if not runs or is_rare:
            continue
        pieces = [run for run in normal.translate(runs_of).split() if len(run) >= _MIN_RUN]
        if len(pieces) > 1 or (pieces and len(pieces[0]) != len(joined)):
            # Each run with the next one from its own start (then its second character, ...),
            # so a split inside a group loses nothing; every span padded to whole groups, so
            # one decoding of them all keeps each span's alignment.
            spans = [*(a + b for a, b in itertools.pairwise(pieces)), pieces[-1]]
            pad = _PAD[name]
            aligned = [
                decode(b"".join(run[start:] + pad * (-(len(run) - start) % group + group) for run in spans))
                for start in range(group)
            ]
            yield name, b"\n".join(aligned), not is_rare
    if not rare:
        return
    for name, lists_of, number, base in _NUMBER_LISTS:
        lists = lists_of.findall(data)
        if lists:
            yield (
                name,
                b"\n".join(bytes(int(n, base) & 0xFF for n in number.findall(found)) for found in lists),
                False,
            )


def _codec(
    name: str,
    alphabet: bytes,
    normalize: Callable[[bytes], bytes],
    decode: Callable[[bytes], bytes],
    group: int,
) -> tuple[str, bytes, bytes, Callable[[bytes], bytes], Callable[[bytes], bytes], int, bool]:
    rare = name not in ("base64", "base32", "hex")
    keep = re.compile(rb"[" + alphabet + rb"]")
    return (
        name,
        bytes(b for b in range(256) if not keep.match(bytes([b]))),
        bytes(b if keep.match(bytes([b])) else 32 for b in range(256)),
        normalize,
        decode,
        group,
        rare,
    )


def _b64decode(chunk: bytes) -> bytes:
    chunk = chunk[: len(chunk) - 1] if len(chunk) % 4 == 1 else chunk
    return base64.b64decode(chunk + b"=" * (-len(chunk) % 4))


def _hexdecode(chunk: bytes) -> bytes:
    return bytes.fromhex(chunk[: len(chunk) - len(chunk) % 2].decode())


def _b32hexdecode(chunk: bytes) -> bytes:
    bits = len(chunk) * 5
    if not chunk:
        return b""
    return (int(chunk, 32) >> (bits % 8)).to_bytes(bits // 8, "big")


def _base85(values: bytes) -> bytes:
    """Digits 0..84, five to four bytes (a partial last group padded with the top digit, its
    padding bytes dropped); a group past 2**32 wraps rather than failing, so any alignment decodes."""
    pad = -len(values) % 5
    values += b"\x54" * pad
    words = [
        ((((a * 85 + b) * 85 + c) * 85 + d) * 85 + e) & 0xFFFFFFFF
        for a, b, c, d, e in zip(*(values[i::5] for i in range(5)), strict=True)
    ]
    out = struct.pack(f">{len(words)}I", *words)
    return out[: len(out) - pad] if pad else out


_CODECS = (
    _codec("base64", rb"A-Za-z0-9+/", lambda d: d.replace(b"-", b"+").replace(b"_", b"/"), _b64decode, 4),
    _codec("base32", rb"A-Z2-7", bytes.upper, lambda c: _b32decode(c), 8),
    _codec("hex", rb"0-9a-f", bytes.lower, _hexdecode, 2),
    _codec("base32hex", rb"0-9A-V", bytes.upper, _b32hexdecode, 8),
    _codec(
        "base85", rb"0-9A-Za-z!#$%&()*+\-;<=>?@^_`{|}~", bytes, lambda c: _base85(c.translate(_B85_VALUES)), 5
    ),
    _codec("ascii85", rb"!-u", bytes, lambda c: _base85(c.translate(_A85_VALUES)), 5),
)
_PAD = {"base64": b"A", "base32": b"A", "hex": b"0", "base32hex": b"0", "base85": b"0", "ascii85": b"!"}
"""The character of value zero in each alphabet: padding between runs decodes to NUL bytes."""
_NUMBER_LISTS: tuple[tuple[str, re.Pattern[bytes], re.Pattern[bytes], int], ...] = (
    # (name, a list: at least _MIN_RUN numbers with short separators, one number, its base)
    ("decimal byte codes", re.compile(rb"(?:[0-9]{1,3}[^0-9A-Za-z]{1,4}){7,}[0-9]{1,3}"), _NUMBERS, 10),
    ("octal byte codes", re.compile(rb"(?:[0-7]{1,3}[^0-9A-Za-z]{1,4}){7,}[0-7]{1,3}"), _NUMBERS, 8),
    ("binary octets", re.compile(rb"(?:[01]{8}[^0-9A-Za-z]{0,4}){7,}[01]{8}"), re.compile(rb"[01]{8}"), 2),
)


def _b32decode(chunk: bytes) -> bytes:
    """Base32 of any length (a partial last group's spare bits dropped), in linear time: mapped
    onto the digits Python's ``int`` reads in base 32 (the standard library's decoder is slow)."""
    bits = len(chunk) * 5
    if not chunk:
        return b""
    number = int(chunk.translate(_B32_TO_DIGITS), 32) >> (bits % 8)
    return number.to_bytes(bits // 8, "big")


def _decompressions(data: bytes, budget: _Budget) -> Iterable[tuple[str, bytes]]:
    """Every compressed stream that starts at a known magic number (every position: decoys or
    ordinary binary data in front must not hide one), or raw deflate at the start. What a
    stream yields before it breaks off is kept.

    Raises:
        _Unverifiable: the search's decompression work or one stream's output reached its bound.
    """
    starts = sorted({pos for magic in _MAGIC for pos in _positions(data, magic)} | {0})
    view = memoryview(data)
    for pos in starts:
        for name, decompressor in _decompressors(data[pos : pos + 2]):
            out = _inflate(decompressor, view[pos:], budget)
            if out:
                yield name, out


def _inflate(decompressor: _Decompressor, data: memoryview, budget: _Budget) -> bytes:
    out = bytearray()
    fed, size = 0, _FIRST_FEED
    while fed < len(data) and not decompressor.eof:
        chunk = data[fed : fed + size]
        budget.spend(len(chunk))
        try:
            piece = decompressor.decompress(chunk, MAX_OUTPUT - len(out))
        except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError):
            break
        budget.spend(len(piece))
        out += piece
        if len(out) >= MAX_OUTPUT:
            raise _Unverifiable(f"a compressed part expands past {MAX_OUTPUT >> 20} MiB")
        fed, size = fed + len(chunk), min(size * 2, 1 << 20)
    return bytes(out)


class _Budget:
    def __init__(self) -> None:
        self.left = MAX_WORK

    def spend(self, amount: int) -> None:
        self.left -= amount
        if self.left < 0:
            raise _Unverifiable(f"decompression work past {MAX_WORK >> 20} MiB")


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
    @property
    def eof(self) -> bool: ...

    def decompress(self, data: bytes | memoryview, max_length: int = ..., /) -> bytes: ...


class _Capped:
    """bz2 and lzma decompressors behind zlib's ``decompress(data, max_length)``."""

    def __init__(self, inner: bz2.BZ2Decompressor | lzma.LZMADecompressor) -> None:
        self._inner = inner

    @property
    def eof(self) -> bool:
        return self._inner.eof

    def decompress(self, data: bytes | memoryview, max_length: int = -1, /) -> bytes:
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
        self.budget = _Budget()

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
        for index, (where, view) in enumerate(views):
            data = view.encode("utf-8", "surrogatepass")
            folded = _fold_text(view)
            found = self._check(data, folded, where) or self._split(folded, where)
            if found is None:
                found = self.binary(data, where, depth, decode_only=True, rare=index == 0 and depth > 0)
            if found is not None:
                return found
        return None

    def binary(
        self, data: bytes, path: tuple[str, ...], depth: int, *, decode_only: bool = False, rare: bool = False
    ) -> Echo | None:
        if not decode_only:
            found = self._check(data, fold(data), path)
            if found is not None:
                return found
        for name, out in _decompressions(data, self.budget):
            found = self._nested(out, (*path, name), depth)
            if found is not None:
                return found
        for name, out, nest in _decodings(data, rare=rare, runs=depth > 0):
            # Decoded pieces are searched for a split secret too (base64 of it in two fields).
            where = (*path, name)
            found = self._nested(out, where, depth if nest else 0) or self._split(fold(out), where)
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
    try:
        for where, text in [("", joined), *(("", s) for s in strings if s != joined)]:
            found = search.text(text, (where,), depth=1)
            if found is not None:
                return found
        for blob in blobs:
            found = search.binary(blob, ("binary body",), depth=1, rare=True)
            if found is not None:
                return found
    except _Unverifiable as bound:
        return Echo(secret=needles[0].label, form=f"unverifiable: {bound}", verified=False)
    return None
