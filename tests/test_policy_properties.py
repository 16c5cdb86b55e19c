"""Properties of every decision, whatever the inputs (Hypothesis)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.policy import Counters, Subject, compile_policy

from ._policy import blocking, call, grant

TOOLS = ["kb.search", "fs.read", "http.fetch", "mail.send"]
WORDS = ["alpha", "beta", "drop table", "gamma", "rm -rf", "x"]

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=12), st.sampled_from(WORDS)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.sampled_from(WORDS), children, max_size=4)
    ),
    max_leaves=12,
)
grant_specs = st.lists(
    st.tuples(
        st.sampled_from(["allow", "deny"]),
        st.lists(st.sampled_from(TOOLS), min_size=1, max_size=3, unique=True),
    ),
    min_size=1,
    max_size=6,
)
rule_specs = st.lists(
    st.tuples(
        st.sampled_from(["deny", "redact", "require_approval"]),
        st.lists(st.sampled_from(WORDS), min_size=1, max_size=2, unique=True),
    ),
    max_size=4,
)


def _grants(specs: list[tuple[str, list[str]]]) -> list[dict[str, Any]]:
    return [grant(f"g{i}", tools, effect=effect) for i, (effect, tools) in enumerate(specs)]


def _policies(specs: list[tuple[str, list[str]]]) -> list[dict[str, Any]]:
    return [blocking(*words, name=f"p{i}", action=action) for i, (action, words) in enumerate(specs)]


@settings(max_examples=150, deadline=None)
@given(grant_specs, rule_specs, st.sampled_from(TOOLS), json_values, st.randoms(use_true_random=False))
def test_rule_order_never_changes_a_decision_and_deny_beats_allow(
    gspecs: list[tuple[str, list[str]]], rspecs: list[tuple[str, list[str]]], tool: str, value: Any, rnd: Any
) -> None:
    grants, policies = _grants(gspecs), _policies(rspecs)
    args = {"v": value}
    subject = Subject(name="bot", tools=TOOLS)
    first = compile_policy(policies, grants).decide(call(args, tool=tool, subject=subject))
    shuffled_g, shuffled_p = grants[:], policies[:]
    rnd.shuffle(shuffled_g)
    rnd.shuffle(shuffled_p)
    for p in shuffled_p:
        rnd.shuffle(p["spec"]["rules"][0]["blockedPatterns"])
    again = compile_policy(shuffled_p, shuffled_g).decide(call(args, tool=tool, subject=subject))
    assert (again.effect, again.rule_ids, again.reasons, again.redacted) == (
        first.effect,
        first.rule_ids,
        first.reasons,
        first.redacted,
    )
    if any(effect == "deny" and tool in tools for effect, tools in gspecs):
        assert first.effect == "deny"
    if not any(effect == "allow" and tool in tools for effect, tools in gspecs):
        assert first.effect == "deny"


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(TOOLS) | st.text(min_size=1, max_size=20),
    json_values,
    st.sampled_from(["T0", "T2", "T4"]),
)
def test_an_empty_policy_denies_every_tool(tool: str, value: Any, tier: str) -> None:
    subject = Subject(name="bot", tier=tier, tools=[tool])
    decision = compile_policy([], []).decide(call({"v": value}, tool=tool, subject=subject))
    assert decision.effect == "deny"


def _reorder(value: Any, rnd: Any) -> Any:
    if isinstance(value, dict):
        items = [(k, _reorder(v, rnd)) for k, v in value.items()]
        rnd.shuffle(items)
        return dict(items)
    if isinstance(value, list):
        return [_reorder(v, rnd) for v in value]
    return value


@settings(max_examples=150, deadline=None)
@given(
    rule_specs,
    st.dictionaries(st.text(max_size=8) | st.sampled_from(WORDS), json_values, max_size=6),
    st.randoms(use_true_random=False),
)
def test_a_decision_never_depends_on_the_order_of_keys(
    rspecs: list[tuple[str, list[str]]], args: dict[str, Any], rnd: Any
) -> None:
    cp = compile_policy(_policies(rspecs), [grant("g", ["kb.search"])])
    first = cp.decide(call(args))
    fresh = compile_policy(_policies(rspecs), [grant("g", ["kb.search"])])  # no remembered strings
    again = fresh.decide(call(_reorder(args, rnd)))
    assert (again.effect, again.rule_ids, again.reasons) == (first.effect, first.rule_ids, first.reasons)
    assert again.redacted == first.redacted  # dicts compare without regard to order


approval_specs = st.lists(
    st.tuples(
        st.sampled_from(["allow", "deny"]),
        st.booleans(),
        st.sampled_from([None, 1]),
        st.lists(st.sampled_from(TOOLS), min_size=1, max_size=3, unique=True),
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=150, deadline=None)
@given(approval_specs, st.sampled_from(TOOLS), st.permutations(list(range(5))), st.integers(0, 2))
def test_renaming_grants_never_changes_a_decision(
    specs: list[tuple[str, bool, int | None, list[str]]], tool: str, names: list[int], used: int
) -> None:
    def grants(naming: list[int]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for i, (effect, approval, max_calls, tools) in enumerate(specs):
            extra: dict[str, Any] = {"effect": effect}
            if effect == "allow":
                extra["requireApproval"] = approval
                if max_calls is not None:
                    extra["maxCalls"] = max_calls
            out.append(grant(f"g{naming[i]}", tools, **extra))
        return out

    subject = Subject(name="bot", tools=TOOLS)
    first = compile_policy([], grants(list(range(5))))
    again = compile_policy([], grants(names))
    rename = {f"g{i}": f"g{names[i]}" for i in range(5)}
    counts = {f"g{i}": used for i in range(5)}
    renamed_counts = {rename[k]: v for k, v in counts.items()}
    one = first.decide(call({}, tool=tool, subject=subject, counters=Counters(calls_by_grant=counts)))
    two = again.decide(call({}, tool=tool, subject=subject, counters=Counters(calls_by_grant=renamed_counts)))
    assert one.effect == two.effect
    assert sorted(rename[g] for g in one.grants) == list(two.grants)
