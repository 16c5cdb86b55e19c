"""Egress judges a host exactly as the HTTP client connects to it (issue item 20).

The policy's decision (before the call) and ``http.fetch``'s own check (at the call) must agree
on every URL, and both must see the host httpx will resolve: IDNA 2008 (not Python's IDNA 2003
codec, which turns ``faß.de`` into ``fass.de`` while httpx connects to ``xn--fa-hia.de``), dots
that are not ASCII full stops, and numeric forms of IPv4 addresses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from bastion.errors import ToolCallFailed
from bastion.execution.tools import HttpFetch, ToolContext, ToolLimits
from bastion.policy import HttpTarget, compile_policy, encode_host, parse_target

from ._policy import call, grant

VECTORS = [
    "http://evil。example。com/",  # ideographic full stops
    "http://evil．example．com/",  # fullwidth full stops
    "http://evil｡example｡com/",  # halfwidth ideographic full stops
    "http://EVIL.Example.COM./",
    "http://ＥＶＩＬ.example.com/",  # fullwidth letters
    "http://faß.de/",
    "http://xn--fa-hia.de/",
    "http://fass.de/",
    "http://bücher.example/",
    "http://127.0.0.1/",
    "http://127.1/",
    "http://0x7f.0.0.1/",
    "http://2130706433/",
    "http://0177.0.0.1/",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://ex%61mple.com/",
    "http://exa\u200bmple.com/",  # zero-width space
    "http://example.com\u3002/",  # a trailing ideographic full stop
]
PATTERNS = [
    ["evil.example.com"],
    ["*.example.com"],
    ["fass.de"],
    ["faß.de"],
    ["xn--fa-hia.de"],
    ["bücher.example"],
    ["127.0.0.1"],
    ["[::1]"],
    ["example.com"],
]


def _client_host(url: str) -> str | None:
    """The host httpx will connect to, in the form egress compares."""
    try:
        raw = httpx.URL(url).raw_host.decode("ascii")
    except (httpx.InvalidURL, UnicodeError):
        return None
    return encode_host(raw)


@pytest.mark.parametrize("url", VECTORS)
def test_the_judged_host_is_the_host_the_client_connects_to(url: str) -> None:
    target = parse_target(url)
    if isinstance(target, HttpTarget):
        assert target.host == _client_host(url)


@pytest.mark.parametrize("patterns", PATTERNS, ids=lambda p: p[0])
@pytest.mark.parametrize("url", VECTORS)
def test_the_policy_and_the_tool_agree_on_every_url(url: str, patterns: list[str], tmp_path: Path) -> None:
    decision = compile_policy([], [grant("web", ["http.fetch"], egress=patterns)]).decide(
        call({"url": url}, tool="http.fetch", builtin="http.fetch")
    )
    ctx = ToolContext(
        run_id="r", seq=1, workspace=tmp_path, egress=patterns, limits=ToolLimits(timeout_seconds=0.5)
    )
    tool_allows = True
    try:
        HttpFetch().invoke({"url": url}, ctx)
    except ToolCallFailed as exc:
        # Past the allowlist, the call fails on resolution or connection: that is still "allowed".
        tool_allows = exc.retryable
    assert decision.allowed is tool_allows, (decision.reasons, url, patterns)
    if decision.allowed:
        host = _client_host(url)
        assert host is not None and any(host in e or e.startswith(f"[{host}]") for e in decision.egress)


@pytest.mark.parametrize(
    ("url", "patterns", "allowed"),
    [
        ("https://faß.de/", ["fass.de"], False),
        ("https://faß.de/", ["xn--fa-hia.de"], True),
        ("https://faß.de/", ["faß.de"], True),
        ("https://evil。example。com/", ["evil.example.com"], True),
        ("https://evil。example。com/", ["good.example.com"], False),
    ],
)
def test_idna_is_the_clients(url: str, patterns: list[str], allowed: bool) -> None:
    decision: Any = compile_policy([], [grant("web", ["http.fetch"], egress=patterns)]).decide(
        call({"url": url}, tool="http.fetch", builtin="http.fetch")
    )
    assert decision.allowed is allowed, decision.reasons
