"""Rego through regopy: compiled once per version, and every way it can fail is a deny."""

from __future__ import annotations

import pytest

from bastion.errors import InvalidManifest
from bastion.policy import compile_policy

from ._policy import call, grant, policy

GRANTS = [grant("g", ["kb.search", "fs.read"])]


def rego(source: str, name: str = "r") -> list[dict[str, object]]:
    return [policy(name, rego=source)]


ALLOW_SMALL = """
package bastion
import rego.v1
default allow := false
allow if { input.tool.name == "kb.search"; count(input.args.q) < 20 }
reasons contains "queries must be short" if count(input.args.q) >= 20
"""


def test_a_true_allow_passes_and_a_false_one_denies_with_the_modules_reasons() -> None:
    cp = compile_policy(rego(ALLOW_SMALL), GRANTS, strict=True)
    assert cp.decide(call({"q": "short"})).allowed
    long = cp.decide(call({"q": "x" * 30}))
    assert long.effect == "deny"
    assert long.rule_ids == ("policy/r/rego",)
    assert long.reasons == ("queries must be short",)


def test_the_module_sees_agent_tool_args_grant_and_counters() -> None:
    source = """
package bastion
import rego.v1
allow if {
  input.agent.name == "bot"
  input.agent.tier == "T1"
  input.tool.name == "kb.search"
  input.grant == "g"
  input.counters.toolCalls == 0
  input.args.nested[0].k == "v"
  startswith(input.now, "2026-01-01T12:00")
}
"""
    cp = compile_policy(rego(source), GRANTS, strict=True)
    assert cp.decide(call({"nested": [{"k": "v"}]})).allowed
    assert cp.decide(call({"nested": [{"k": "w"}]})).effect == "deny"


def test_rego_cannot_allow_without_a_grant() -> None:
    cp = compile_policy(rego("package bastion\nallow := true\n"), [], strict=True)
    assert cp.decide(call({})).rule_ids == ("default-deny",)


# --- fail closed, one test per failure kind --------------------------------------------------


def test_a_failing_builtin_is_a_deny_not_a_silent_allow() -> None:
    # By default a failing builtin makes `blocked` undefined, so `not blocked` is true and a naive
    # policy allows. Strict builtin errors make it a deny.
    source = """
package bastion
import rego.v1
default allow := false
allow if not blocked
blocked if to_number(input.args.q) > 5
"""
    cp = compile_policy(rego(source), GRANTS, strict=True)
    decision = cp.decide(call({"q": "hello"}))
    assert decision.effect == "deny"
    assert "Rego engine failed" in decision.reasons[0]


@pytest.mark.parametrize(
    "call_text",
    [
        'regex.match("^(a+)+$", input.args.q)',
        'regex.find_n("(a|aa)+$", input.args.q, 1) != []',
        'glob.match("*a*a*a*a*a*a*a*a*a*a*a*a*b", [], input.args.q)',
    ],
)
def test_a_rego_module_that_matches_patterns_by_backtracking_is_refused(call_text: str) -> None:
    # regopy backtracks: regex.match("^(a+)+$") took 7 s on 26 characters, glob.match 5 s on 28.
    source = f"package bastion\nimport rego.v1\ndefault allow := false\nallow if {call_text}  # {call_text}\n"
    with pytest.raises(InvalidManifest, match="backtracking") as caught:
        compile_policy(rego(source), GRANTS, strict=True)
    assert caught.value.problems[0].field == "spec.rego"
    lenient = compile_policy(rego(source), GRANTS)
    assert lenient.decide(call({"q": "a" * 40 + "!"})).effect == "deny"  # fail closed, and at once
    commented = "package bastion\nimport rego.v1\n# no regex.match(x, y) here\ndefault allow := true\n"
    assert compile_policy(rego(commented), GRANTS, strict=True).decide(call({})).allowed


def test_an_undefined_allow_is_a_deny() -> None:
    cp = compile_policy(rego('package bastion\nimport rego.v1\nallow if input.args.q == "yes"\n'), GRANTS)
    decision = cp.decide(call({"q": "no"}))
    assert decision.effect == "deny" and "undefined" in decision.reasons[0]
    assert cp.decide(call({"q": "yes"})).allowed


def test_a_module_in_another_package_is_undefined_and_denies() -> None:
    cp = compile_policy(rego("package other\nallow := true\n"), GRANTS)
    assert cp.decide(call({})).effect == "deny"


@pytest.mark.parametrize(
    ("value", "shown"), [("1", "1"), ('"yes"', '"yes"'), ("[true]", "[true]"), ("{}", "{}")]
)
def test_a_non_boolean_allow_is_a_deny(value: str, shown: str) -> None:
    cp = compile_policy(rego(f"package bastion\nallow := {value}\n"), GRANTS)
    decision = cp.decide(call({}))
    assert decision.effect == "deny"
    assert "not a boolean" in decision.reasons[0] and shown in decision.reasons[0]


def test_an_unknown_builtin_is_a_deny() -> None:
    cp = compile_policy(rego("package bastion\nimport rego.v1\nallow if foo.bar(1)\n"), GRANTS)
    decision = cp.decide(call({}))
    assert decision.effect == "deny"
    assert "foo.bar" in " ".join(decision.reasons)


def test_an_unsupported_builtin_is_a_deny() -> None:
    source = 'package bastion\nimport rego.v1\nallow if http.send({"method": "get", "url": "http://127.0.0.1:1"}).status_code == 200\n'
    decision = compile_policy(rego(source), GRANTS).decide(call({}))
    assert decision.effect == "deny"


def test_a_runtime_error_is_a_deny() -> None:
    conflict = (
        "package bastion\nimport rego.v1\nallow := true if input.args.a\nallow := false if input.args.b\n"
    )
    decision = compile_policy(rego(conflict), GRANTS).decide(call({"a": True, "b": True}))
    assert decision.effect == "deny" and "Rego engine failed" in decision.reasons[0]
    division = "package bastion\nimport rego.v1\nallow if 1 / input.args.n > 0\n"
    assert compile_policy(rego(division), GRANTS).decide(call({"n": 0})).effect == "deny"


def test_a_module_that_does_not_parse_denies_every_call_and_strict_mode_reports_it() -> None:
    broken = rego("package bastion\nallow if {\n")
    cp = compile_policy(broken, GRANTS)
    assert cp.errors and "Rego" in cp.errors[0]
    assert cp.decide(call({})).effect == "deny"
    with pytest.raises(InvalidManifest) as info:
        compile_policy(broken, GRANTS, strict=True)
    assert info.value.problems[0].field == "spec.rego"


def test_the_module_is_compiled_once_per_version_not_per_call() -> None:
    cp = compile_policy(rego(ALLOW_SMALL), GRANTS, strict=True)
    module = cp._c.rego[0][1]  # pyright: ignore[reportPrivateUsage]
    bundle = module._bundle  # pyright: ignore[reportPrivateUsage]
    for _ in range(20):
        cp.decide(call({"q": "short"}))
    assert module._bundle is bundle  # pyright: ignore[reportPrivateUsage]


def test_a_module_sees_every_grant_that_covers_the_call() -> None:
    source = 'package bastion\nimport rego.v1\ndefault allow := false\nallow if "audited" in input.grants\n'
    both = [grant("audited", ["kb.search"]), grant("basic", ["kb.search"])]
    assert compile_policy(rego(source), both, strict=True).decide(call({})).allowed
    renamed = [grant("audited", ["kb.search"]), grant("aaa", ["kb.search"])]  # sorts first now
    assert compile_policy(rego(source), renamed, strict=True).decide(call({})).allowed
    assert not compile_policy(rego(source), [both[1]], strict=True).decide(call({})).allowed
