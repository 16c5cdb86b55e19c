"""The compiled policy's built-in rules: grants, arguments, limits, rate limits, egress, versions."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from bastion.errors import InvalidManifest
from bastion.policy import (
    Counters,
    RateLimitRef,
    Subject,
    compile_policy,
)

from ._policy import BOT, NOW, blocking, call, grant, policy


def test_a_matching_grant_allows_and_names_itself() -> None:
    cp = compile_policy([], [grant("read", ["kb.search"])])
    decision = cp.decide(call({"q": "hello"}))
    assert decision.effect == "allow"
    assert decision.rule_ids == ("grant/read",)
    assert decision.grant == "read"
    assert decision.version == cp.version and cp.version.startswith("sha256:")


def test_no_grant_is_a_default_deny() -> None:
    decision = compile_policy([], [grant("other", ["fs.read"])]).decide(call({"q": "x"}))
    assert decision.effect == "deny"
    assert decision.rule_ids == ("default-deny",)
    assert "default deny" in decision.reasons[0]


@pytest.mark.parametrize(
    ("subjects", "allowed"),
    [
        ({"agents": ["bot"]}, True),
        ({"agents": ["someone-else"]}, False),
        ({"labels": {"team": "a"}}, True),
        ({"labels": {"team": "b"}}, False),
        ({"tiers": ["T1"]}, True),
        ({"tiers": ["T2"]}, False),
    ],
)
def test_grants_match_by_name_labels_or_tier(subjects: dict[str, Any], allowed: bool) -> None:
    subject = Subject(name="bot", labels={"team": "a"}, tier="T1", tools=("kb.search",))
    cp = compile_policy([], [grant("g", ["kb.search"], subjects=subjects)])
    assert cp.decide(call({}, subject=subject)).allowed is allowed


def test_a_deny_grant_wins_over_any_allow() -> None:
    grants = [grant("a-allow", ["kb.search"]), grant("z-deny", ["kb.search"], effect="deny")]
    for order in (grants, grants[::-1]):
        decision = compile_policy([], order).decide(call({}))
        assert decision.effect == "deny"
        assert decision.rule_ids == ("grant/z-deny",)


def test_an_expired_grant_allows_nothing_and_says_when() -> None:
    expires = (NOW - timedelta(seconds=1)).isoformat()
    decision = compile_policy([], [grant("g", ["kb.search"], expiresAt=expires)]).decide(call({}))
    assert decision.effect == "deny"
    assert "expired" in decision.reasons[0]
    live = compile_policy([], [grant("g", ["kb.search"], expiresAt=(NOW + timedelta(hours=1)).isoformat())])
    assert live.decide(call({})).allowed


def test_an_expired_deny_grant_stops_denying() -> None:
    grants = [
        grant("allow", ["kb.search"]),
        grant("freeze", ["kb.search"], effect="deny", expiresAt=(NOW - timedelta(minutes=1)).isoformat()),
    ]
    assert compile_policy([], grants).decide(call({})).allowed


def test_tiers_below_the_tool_or_the_grant_are_denied() -> None:
    cp = compile_policy([], [grant("g", ["kb.search"], minTier="T2")])
    assert cp.decide(call({})).effect == "deny"
    high = Subject(name="bot", tier="T3", tools=("kb.search",))
    assert cp.decide(call({}, subject=high)).allowed
    cp2 = compile_policy([], [grant("g", ["kb.search"])])
    from bastion.policy import CallContext, ToolInfo

    strict_tool = CallContext(subject=BOT, tool=ToolInfo(name="kb.search", min_tier="T3"), args={}, now=NOW)
    decision = cp2.decide(strict_tool)
    assert decision.effect == "deny" and "tool/min-tier" in decision.rule_ids


def test_a_tool_the_agent_does_not_list_or_that_does_not_exist_is_denied() -> None:
    cp = compile_policy([], [grant("g", ["kb.search", "secret.tool"])])
    assert cp.decide(call({}, tool="secret.tool")).rule_ids[0] == "agent/tools"
    from bastion.policy import CallContext, ToolInfo

    gone = CallContext(subject=BOT, tool=ToolInfo(name="kb.search", exists=False), args={}, now=NOW)
    assert "tool/missing" in cp.decide(gone).rule_ids


def test_max_calls_per_grant_then_the_next_grant() -> None:
    cp = compile_policy([], [grant("a", ["kb.search"], maxCalls=2)])
    assert cp.decide(call({}, counters=Counters(calls_by_grant={"a": 1}))).allowed
    used = cp.decide(call({}, counters=Counters(calls_by_grant={"a": 2})))
    assert used.effect == "deny" and "all are used" in used.reasons[0]
    two = compile_policy([], [grant("a", ["kb.search"], maxCalls=2), grant("b", ["kb.search"])])
    assert two.decide(call({}, counters=Counters(calls_by_grant={"a": 2}))).grant == "b"


def test_rate_limits_per_agent_and_per_tenant() -> None:
    cp = compile_policy(
        [policy("p", rules=[{"id": "burst", "rateLimit": {"calls": 5, "per": "1m", "scope": "tenant"}}])],
        [grant("g", ["kb.search"], rateLimit={"calls": 2, "per": "10s"})],
    )
    allowed = cp.decide(call({}))
    assert allowed.allowed
    assert set(allowed.consumes) == {
        RateLimitRef("grant/g", "agent", 10),
        RateLimitRef("policy/p/burst", "tenant", 60),
    }
    counts = {RateLimitRef("grant/g", "agent", 10): 2}
    over = cp.decide(call({}, counters=Counters(in_window=lambda ref: counts.get(ref, 0))))
    assert over.effect == "deny" and over.rule_ids == ("grant/g/rate",)
    tenant = {RateLimitRef("policy/p/burst", "tenant", 60): 5}
    busy = cp.decide(call({}, counters=Counters(in_window=lambda ref: tenant.get(ref, 0))))
    assert busy.effect == "deny" and busy.rule_ids == ("policy/p/burst",)


def test_tool_calls_and_tokens_per_run() -> None:
    cp = compile_policy(
        [policy("p", limits={"toolCallsPerRun": 3, "tokensPerRun": 1000})], [grant("g", ["kb.search"])]
    )
    assert cp.decide(call({}, counters=Counters(tool_calls=2, tokens=999))).allowed
    calls = cp.decide(call({}, counters=Counters(tool_calls=3)))
    assert calls.effect == "deny" and calls.rule_ids == ("policy/p/limits.toolCallsPerRun",)
    tokens = cp.decide(call({}, counters=Counters(tokens=1000)))
    assert tokens.rule_ids == ("policy/p/limits.tokensPerRun",)
    capped = Subject(name="bot", tools=("kb.search",), max_tool_calls=1)
    assert compile_policy([], [grant("g", ["kb.search"])]).decide(
        call({}, subject=capped, counters=Counters(tool_calls=1))
    ).rule_ids == ("agent/limits.toolCalls",)


def test_argument_schema_and_allowed_value_patterns() -> None:
    schema = {"type": "object", "properties": {"limit": {"type": "integer", "maximum": 10}}}
    cp = compile_policy(
        [],
        [
            grant(
                "g",
                ["kb.search"],
                arguments={"kb.search": schema},
                argumentPatterns={"kb.search": {"index": "docs-[a-z]+"}},
            )
        ],
    )
    assert cp.decide(call({"limit": 5, "index": "docs-public"})).allowed
    too_many = cp.decide(call({"limit": 50}))
    assert too_many.effect == "deny" and too_many.rule_ids == ("grant/g/arguments",)
    assert "limit" in too_many.reasons[0]
    other_index = cp.decide(call({"index": "docs-public/../private"}))
    assert other_index.effect == "deny" and "index" in other_index.reasons[0]
    nested = cp.decide(call({"index": {"name": "docs-a"}}))
    assert nested.effect == "deny"


def test_require_approval_from_a_grant_and_from_a_rule_and_deny_beats_both() -> None:
    cp = compile_policy([], [grant("g", ["kb.search"], requireApproval=True)])
    held = cp.decide(call({"q": "x"}))
    assert held.effect == "require_approval" and held.grant == "g"
    rules = [blocking("wire money", action="require_approval", name="a"), blocking("drop table", name="b")]
    cp2 = compile_policy(rules, [grant("g", ["kb.search"])])
    assert cp2.decide(call({"q": "please wire money"})).effect == "require_approval"
    both = cp2.decide(call({"q": "wire money then drop table"}))
    assert both.effect == "deny" and both.rule_ids == ("policy/b/block",)


def test_redact_carries_the_arguments_with_the_matches_masked() -> None:
    cp = compile_policy([blocking("internal-only", action="redact")], [grant("g", ["kb.search"])])
    decision = cp.decide(call({"q": "INTERNAL-ONLY roadmap", "n": 3, "tags": ["ok", "internal-only"]}))
    assert decision.effect == "redact"
    assert decision.redacted == {"q": "[REDACTED]", "n": 3, "tags": ["ok", "[REDACTED]"]}


def test_egress_for_http_fetch_is_decided_before_the_call() -> None:
    grants = [grant("web", ["http.fetch"], egress=["*.example.com", "api.partner.io:8443"])]
    cp = compile_policy([], grants)

    def fetch(url: Any) -> Any:
        return cp.decide(call({"url": url}, tool="http.fetch", builtin="http.fetch"))

    ok = fetch("https://docs.example.com/a")
    assert ok.allowed and ok.egress == ("docs.example.com:443",)
    assert fetch("https://api.partner.io:8443/v1").allowed
    for bad in (
        "https://example.com/",  # the apex is not a subdomain
        "https://evil.com/?x=docs.example.com",
        "https://docs.example.com.evil.com/",
        "https://user:pw@docs.example.com/",
        "http://docs.example.com:8080/",
        "file:///etc/passwd",
        "https://docs.example.com\\@evil.com/",
        None,
    ):
        assert fetch(bad).effect == "deny", bad
    narrowed = compile_policy(
        [policy("p", rules=[{"id": "web", "tools": ["http.*"], "egressAllow": ["docs.example.com"]}])], grants
    )
    assert narrowed.decide(
        call({"url": "https://docs.example.com/"}, tool="http.fetch", builtin="http.fetch")
    ).allowed
    other = narrowed.decide(
        call({"url": "https://blog.example.com/"}, tool="http.fetch", builtin="http.fetch")
    )
    assert other.effect == "deny" and other.rule_ids == ("policy/p/web",)


def test_the_version_is_stable_and_ignores_order_and_metadata() -> None:
    a, b = grant("a", ["kb.search"]), grant("b", ["fs.read"])
    p = blocking("x")
    v1 = compile_policy([p], [a, b]).version
    b2 = dict(b, metadata={**b["metadata"], "resourceVersion": "7", "uid": "u"})
    assert compile_policy([p], [b2, a]).version == v1
    assert compile_policy([blocking("y")], [a, b]).version != v1


def test_a_policy_that_does_not_compile_denies_everything_or_raises_in_strict_mode() -> None:
    bad = blocking({"match": "substring", "pattern": "\u200b\u200b"})  # normalizes to nothing
    cp = compile_policy([bad], [grant("g", ["kb.search"])])
    assert cp.errors
    decision = cp.decide(call({"q": "anything"}))
    assert decision.effect == "deny" and decision.rule_ids == ("policy/invalid",)
    assert cp.inspect_output("hello").effect == "deny"
    with pytest.raises(InvalidManifest) as info:
        compile_policy([bad], [], strict=True)
    assert "match every string" in str(info.value)
    with pytest.raises(InvalidManifest):
        compile_policy([], [grant("g", [])], strict=True)  # tools: at least one


def test_an_error_while_deciding_is_a_deny() -> None:
    cp = compile_policy([], [grant("g", ["kb.search"], rateLimit={"calls": 1, "per": "1m"})])

    def broken(_: RateLimitRef) -> int:
        raise RuntimeError("counter store is down")

    decision = cp.decide(call({}, counters=Counters(in_window=broken)))
    assert decision.effect == "deny" and decision.rule_ids == ("policy/error",)
    assert "counter store is down" in decision.reasons[0]


def test_deeply_nested_arguments_are_denied_not_skipped() -> None:
    cp = compile_policy([blocking("x")], [grant("g", ["kb.search"])])
    deep: Any = "fine"
    for _ in range(100):
        deep = [deep]
    assert cp.decide(call({"q": deep})).effect == "deny"


@pytest.mark.parametrize(("quick", "careful"), [("a", "b"), ("b", "a")])
def test_grant_names_never_change_the_decision(quick: str, careful: str) -> None:
    # The same two grants, names swapped: the stricter outcome wins either way.
    cp = compile_policy(
        [], [grant(quick, ["kb.search"]), grant(careful, ["kb.search"], requireApproval=True)]
    )
    decision = cp.decide(call({"q": "x"}))
    assert decision.effect == "require_approval"
    assert decision.rule_ids == (f"grant/{careful}", f"grant/{quick}")  # the one that decided first
    assert decision.grants == ("a", "b")


def test_an_allowed_call_counts_against_every_grant_that_covered_it() -> None:
    cp = compile_policy([], [grant("z", ["kb.search"], maxCalls=1), grant("a", ["kb.search"])])
    first = cp.decide(call({}))
    assert first.allowed and first.grants == ("a", "z")
    second = cp.decide(call({}, counters=Counters(calls_by_grant={"a": 1, "z": 1})))
    assert second.allowed and second.grants == ("a",)  # z is used up and steps aside


def test_require_arguments_denies_unless_they_hold_whatever_other_grants_allow() -> None:
    narrow = grant(
        "narrow",
        ["kb.search"],
        requireArguments={"kb.search": {"properties": {"limit": {"type": "integer", "maximum": 10}}}},
    )
    broad = grant("broad", ["kb.search"])
    other = grant(
        "other", ["kb.search"], agents=["someone-else"], requireArguments={"kb.search": {"required": ["x"]}}
    )
    cp = compile_policy([], [narrow, broad, other], strict=True)
    assert cp.decide(call({"limit": 5})).allowed
    over = cp.decide(call({"limit": 50}))
    assert over.effect == "deny" and over.rule_ids == ("grant/narrow/requireArguments",)
    assert "'limit'" in over.reasons[0] and "denied" in over.reasons[0]
    # An argument constraint on its own (``arguments``) only scopes its grant: the broad one allows.
    scoped = compile_policy(
        [],
        [
            grant(
                "narrow", ["kb.search"], arguments={"kb.search": {"properties": {"limit": {"maximum": 10}}}}
            ),
            broad,
        ],
    )
    assert scoped.decide(call({"limit": 50})).grants == ("broad",)
    expired = grant(
        "narrow",
        ["kb.search"],
        expiresAt="2020-01-01T00:00:00Z",
        requireArguments=narrow["spec"]["requireArguments"],
    )
    assert compile_policy([], [expired, broad]).decide(call({"limit": 50})).allowed


def test_require_arguments_on_a_deny_grant_or_an_unlisted_tool_is_refused() -> None:
    with pytest.raises(InvalidManifest, match="requireArguments"):
        compile_policy(
            [], [grant("g", ["kb.search"], effect="deny", requireArguments={"kb.search": {}})], strict=True
        )
    with pytest.raises(InvalidManifest, match=r"fs\.read"):
        compile_policy([], [grant("g", ["kb.search"], requireArguments={"fs.read": {}})], strict=True)


def test_egress_picks_the_grants_whose_allowlist_covers_the_host() -> None:
    cp = compile_policy(
        [],
        [
            grant("a", ["http.fetch"], egress=["docs.example.com"]),
            grant("b", ["http.fetch"], egress=["api.example.com"], requireApproval=True),
        ],
    )
    docs = cp.decide(call({"url": "https://docs.example.com/x"}, tool="http.fetch", builtin="http.fetch"))
    assert docs.allowed and docs.grants == ("a",) and docs.egress == ("docs.example.com:443",)
    api = cp.decide(call({"url": "https://api.example.com/x"}, tool="http.fetch", builtin="http.fetch"))
    assert api.effect == "require_approval" and api.grants == ("b",)
    other = cp.decide(call({"url": "https://evil.test/"}, tool="http.fetch", builtin="http.fetch"))
    assert other.effect == "deny"


def test_confusable_folding_is_opt_in_per_pattern() -> None:
    folded = compile_policy(
        [blocking({"pattern": "drop table", "confusables": True})], [grant("g", ["kb.search"])], strict=True
    )
    plain = compile_policy([blocking("drop table")], [grant("g", ["kb.search"])], strict=True)
    for text in ("dr\u043ep t\u0430ble", "DR0P TABLE", "\u0501rop table", "drop\u200btable"):
        assert folded.decide(call({"q": text})).effect == "deny", text
    assert plain.decide(call({"q": "dr\u043ep t\u0430ble"})).allowed
    assert folded.decide(call({"q": "dropdown tables"})).allowed
    with pytest.raises(InvalidManifest, match="confusables"):
        compile_policy([blocking({"match": "regex", "pattern": "x", "confusables": True})], [], strict=True)


@pytest.mark.timeout(30)
def test_normalizing_a_huge_run_of_combining_marks_is_linear() -> None:
    import time

    from bastion.policy import normalize

    started = time.perf_counter()
    assert normalize("a" + "\u0301\u0316" * 80_000 + " b") == "a b"
    assert normalize("\U0001d165\U0001d16d" * 80_000) == ""
    assert time.perf_counter() - started < 2.0
