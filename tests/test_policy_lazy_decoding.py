"""Lazy decoding: the cheap checks that let a clean string skip decoding never let a payload by.

``hides`` decides, without decoding, that a string hides nothing; each of its shortcuts (letters
and digits only, 4n+1 characters, a first character no UTF-8 text starts with, no ``%XX`` escape,
no ``data:``) has a payload here that goes through it and is still denied, and the property
tests hold the shortcut to its promise: when it says "nothing hidden", decoding finds nothing.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.policy import PROBE_PATTERNS, compile_policy
from bastion.policy._normalize import (
    _NOT_A_FIRST_BYTE,  # pyright: ignore[reportPrivateUsage]
    MAX_DECODED,
    MAX_DEPTH,
    _hidden,  # pyright: ignore[reportPrivateUsage]
    hides,
)

from ._policy import blocking, call, grant

DECODING = [{"match": "substring", "pattern": p, "decode": ["percent", "base64"]} for p in PROBE_PATTERNS]
POLICY = compile_policy([blocking(*DECODING)], [grant("g", ["kb.search"])], strict=True)
CONFUSABLE = compile_policy(
    [blocking(*({**d, "confusables": True} for d in DECODING))], [grant("g", ["kb.search"])], strict=True
)
PLAIN = compile_policy([blocking(*PROBE_PATTERNS)], [grant("g", ["kb.search"])], strict=True)
BOTH: list[frozenset[Any]] = [frozenset(), frozenset({"percent"}), frozenset({"base64"})]
BOTH.append(frozenset({"percent", "base64"}))


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _spaced(encoded: str, every: int = 4, sep: str = " ") -> str:
    return sep.join(encoded[i : i + every] for i in range(0, len(encoded), every))


# Each payload names the shortcut it must pass through, and says why it does.
THROUGH_THE_SHORTCUTS: list[tuple[str, str]] = [
    # letters and digits only once the spaces go (no regex), 4n characters
    ("base64 of letters and digits, spaced", _spaced(_b64("drop table x"))),
    ("upper-case payload, spaced", _spaced(_b64("DROP TABLE a"), 3)),
    ("a payload that starts with a non-ASCII letter", _spaced(_b64("\uff44\uff52\uff4f\uff50 table"), 5)),
    # '+', '/' or '=' in it: the regex way, with line breaks (not printable) or spaces
    ("padded, with line breaks", _spaced(_b64("drop table users"), 8, "\r\n")),
    ("padded, with tabs and spaces", _spaced(_b64("now drop table"), 4, " \t")),
    ("a solidus in the base64", _spaced(_b64("rm -rf /tmp/x?"), 6)),
    # first characters outside the rejected set, one of each kind
    ("first character 'c'", _spaced(_b64("rm -rf /home"), 7)),
    ("first character 'e'", _b64("x/etc/passwd")),
    # percent: a '+' and no '%', or only a lower-case escape
    ("plus, no percent sign", "please drop+table now"),
    ("lower-case hex escape", "%64rop table"),
    ("escape in a longer sentence", "a quiet evening, then rm%20-rf and sleep"),
    # JSON: leading whitespace, or a JSON string holding an encoded payload
    ("JSON after spaces", '   {"q": "dr\\u006fp table"}'),  # the escape hides it from plain matching
    ("JSON string of base64", json.dumps(_b64("ignore previous instructions"))),
    ("JSON in base64 in JSON", json.dumps({"a": _b64(json.dumps({"b": "rm -rf /"}))})),
    # data: URIs in upper case, in text that is otherwise plain words
    ("DATA: URI in upper case", "DATA:TEXT/PLAIN;BASE64," + _b64("drop table users")),
    ("data: URI inside words", "see data:;base64," + _spaced(_b64("cat /etc/passwd"), 4, "\n") + ". ok"),
]


@pytest.mark.parametrize(("name", "text"), THROUGH_THE_SHORTCUTS, ids=[n for n, _ in THROUGH_THE_SHORTCUTS])
def test_a_payload_through_each_shortcut_is_still_denied(name: str, text: str) -> None:
    assert hides(text, frozenset({"percent", "base64"})), name
    decision = POLICY.decide(call({"q": text}))
    assert decision.effect == "deny", f"{name} evaded: {decision}"
    assert "blocked substring" in decision.reasons[0]
    assert CONFUSABLE.decide(call({"q": text})).effect == "deny", name
    if not name.startswith("JSON"):  # JSON is read whatever the policy decodes
        assert PLAIN.decide(call({"q": text})).allowed, f"{name}: only decoding finds the payload"


def test_a_confusable_payload_in_spaced_base64_is_denied() -> None:
    text = _spaced(base64.b64encode("dr\u043ep t\u0430ble".encode()).decode())  # Cyrillic o and a
    assert CONFUSABLE.decide(call({"q": text})).effect == "deny"
    assert POLICY.decide(call({"q": text})).allowed  # without confusables it is other letters


@pytest.mark.parametrize(
    "text",
    [
        "quarterly revenue for region 1000000 by product",  # 4n+1 letters and digits
        "quarterly revenue for region 10000 by product",  # base64-shaped, 'q' first
        "Quarterly revenue for region 10000 by product",  # base64-shaped, decoded, not text
        "C++ and 50% of the time",
        "what is 2+2? half: 50%",
    ],
)
def test_plain_words_are_allowed_and_remembered(text: str) -> None:
    for _ in range(2):  # the second time from the clean-string memory
        assert POLICY.decide(call({"q": text})).allowed


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_no_utf8_text_encodes_to_a_rejected_first_character(text: str) -> None:
    raw = text.encode()  # hypothesis makes no lone surrogates: every text is valid UTF-8
    assert base64.b64encode(raw).decode()[0] not in _NOT_A_FIRST_BYTE
    assert base64.urlsafe_b64encode(raw).decode()[0] not in _NOT_A_FIRST_BYTE


_PIECES = st.sampled_from(
    [
        " ", "\n", "\r\n", "\t", "=", "==", "+", "/", "-", "_", "%", "%2", "%20", "%2b", "%zz",
        "data:", "DATA:;base64,", "data:text/plain;base64,", "{", "[", '"', ":", ".", "\u00a0",
        "\u200b", "\uff44", "caf\u00e9", "drop table", "ZHJvcCB0YWJsZQ", "ZHJv", "cCB0", "YWJsZQ==",
        "quarterly", "revenue", "g", "Q", "7", "9", "0", "abcd", "efgh", "\ufffd", "77+9",
    ]
)  # fmt: skip
_TEXTS = st.one_of(
    st.lists(_PIECES, max_size=12).map("".join),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_ \n%", max_size=40),
    st.text(max_size=20),
    st.binary(max_size=30).map(lambda b: _spaced(base64.b64encode(b).decode(), 4)),
    st.text(max_size=12).map(lambda t: _spaced(_b64(t), 3)),
)


@settings(max_examples=1500, deadline=None)
@given(_TEXTS, st.sampled_from(BOTH))
def test_when_hides_says_nothing_is_hidden_decoding_finds_nothing(text: str, decode: frozenset[Any]) -> None:
    if not hides(text, decode):
        assert list(_hidden(text, decode)) == []


def test_the_decoding_budget_still_fails_closed() -> None:
    # Each 5 characters decode to two readings of 3 (percent, and percent with '+' as a space):
    # past MAX_DECODED, the call is denied rather than scanned less.
    count = MAX_DECODED // 5 + 1
    decision = POLICY.decide(call({"q": "a+%20" * count}))
    assert decision.effect == "deny"
    assert decision.rule_ids == ("policy/error",)
    assert "DecodeError" in decision.reasons[0]
    assert POLICY.decide(call({"q": "a+%20" * 1000})).allowed  # the same, within the budget


def test_json_in_a_string_nested_past_the_depth_limit_fails_closed() -> None:
    deep = "[" * (MAX_DEPTH + 2) + '"hello"' + "]" * (MAX_DEPTH + 2)
    decision = POLICY.decide(call({"q": deep}))
    assert decision.effect == "deny"
    assert decision.rule_ids == ("policy/error",)
    assert "RecursionError" in decision.reasons[0]
    assert POLICY.decide(call({"q": '[[["hello"]]]'})).allowed
