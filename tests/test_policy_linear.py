"""Every user-supplied pattern is matched in linear time (RE2), and what RE2 cannot compile is
refused when applied, naming the field (issue: hardening, item 14)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from pydantic import ValidationError

from bastion.api import Tool, ToolGrant
from bastion.errors import InvalidManifest
from bastion.policy import compile_policy

from ._policy import blocking, call, grant

EVIL = "a" * 60 + "!"
"""Backtracking regexes spend 2^n steps on this; RE2 one pass."""


def _quick(fn: Any) -> Any:
    started = time.perf_counter()
    out = fn()
    assert time.perf_counter() - started < 1.0, "a pattern took more than linear time"
    return out


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("policies", "grants"),
    [
        ([], [grant("g", ["kb.search"], argumentPatterns={"kb.search": {"q": "^(a+)+$"}})]),
        (
            [],
            [
                grant(
                    "g",
                    ["kb.search"],
                    arguments={
                        "kb.search": {"properties": {"q": {"type": "string", "pattern": "^(a|aa)+$"}}}
                    },
                )
            ],
        ),
        (
            [],
            [
                grant(
                    "g",
                    ["kb.search"],
                    requireArguments={"kb.search": {"patternProperties": {"^(a+)+$": {"type": "integer"}}}},
                )
            ],
        ),
        ([blocking({"match": "regex", "pattern": "^(a+)+$"})], [grant("g", ["kb.search"])]),
        ([blocking({"match": "glob", "pattern": "*a*a*a*a*a*a*a*a*a*a*a*a*b"})], [grant("g", ["kb.search"])]),
    ],
    ids=["argumentPatterns", "schema pattern", "requireArguments patternProperties", "regex", "glob"],
)
def test_catastrophic_patterns_are_matched_in_linear_time(
    policies: list[dict[str, Any]], grants: list[dict[str, Any]]
) -> None:
    cp = compile_policy(policies, grants, strict=True)
    _quick(lambda: cp.decide(call({"q": EVIL, EVIL: 1})))
    _quick(lambda: cp.decide(call({"q": EVIL * 100})))


@pytest.mark.timeout(20)
def test_a_rules_tool_glob_is_matched_in_linear_time() -> None:
    rule = {"id": "r", "tools": ["*a*a*a*a*a*a*a*a*a*a*a*a*b"], "blockedPatterns": [{"pattern": "x"}]}
    cp = compile_policy([{"kind": "Policy", "metadata": {"name": "p"}, "spec": {"rules": [rule]}}], [])
    _quick(lambda: cp.decide(call({}, tool="a" * 60)))


@pytest.mark.parametrize(
    ("bad", "where"),
    [
        ({"argumentPatterns": {"kb.search": {"q": "(a)\\1"}}}, "argumentPatterns"),
        ({"arguments": {"kb.search": {"properties": {"q": {"pattern": "(?=x)y"}}}}}, "properties/q/pattern"),
        ({"requireArguments": {"kb.search": {"patternProperties": {"(?<!x)y": {}}}}}, "patternProperties"),
    ],
)
def test_a_grant_pattern_re2_cannot_compile_is_refused_naming_the_field(
    bad: dict[str, Any], where: str
) -> None:
    manifest = grant("g", ["kb.search"], **bad)
    with pytest.raises(ValidationError) as caught:
        ToolGrant.model_validate(manifest)
    assert where.split("/")[0] in str(caught.value) and "linear time" in str(caught.value)
    with pytest.raises(InvalidManifest, match="linear time"):
        compile_policy([], [manifest], strict=True)
    assert compile_policy([], [manifest]).decide(call({"q": "y"})).effect == "deny"  # fail closed


def test_a_blocked_regex_re2_cannot_compile_is_refused() -> None:
    with pytest.raises(InvalidManifest, match="linear time"):
        compile_policy([blocking({"match": "regex", "pattern": "(drop)\\s+\\1"})], [], strict=True)


def test_a_tool_whose_parameters_hold_a_lookahead_is_refused_naming_the_field() -> None:
    tool = {
        "apiVersion": "bastion/v1",
        "kind": "Tool",
        "metadata": {"name": "kb.search"},
        "spec": {
            "description": "search",
            "implementation": {"type": "builtin", "name": "fs.list"},
            "parameters": {
                "type": "object",
                "properties": {"q": {"type": "string", "pattern": "^(?!admin)"}},
            },
        },
    }
    with pytest.raises(ValidationError, match="properties/q/pattern") as caught:
        Tool.model_validate(tool)
    assert "lookaround" in str(caught.value)


@pytest.mark.timeout(20)
def test_the_gateway_holds_arguments_to_a_tools_schema_in_linear_time_and_fails_closed() -> None:
    from bastion.execution.gateway._policy import parameters_fault

    def tool(parameters: dict[str, Any]) -> dict[str, Any]:
        return {"spec": {"parameters": parameters}}

    slow = tool({"properties": {"q": {"type": "string", "pattern": "^(a+)+$"}}})
    fault = _quick(lambda: parameters_fault("kb.search", slow, {"q": EVIL}))
    assert fault is not None and "at 'q'" in fault
    assert parameters_fault("kb.search", slow, {"q": "aaa"}) is None
    # A schema stored before patterns were checked, or one whose $ref cannot be resolved: refused.
    stored = tool({"properties": {"q": {"pattern": "^(?!admin)"}}})
    assert "cannot be enforced" in (parameters_fault("kb.search", stored, {"q": "x"}) or "")
    dangling = tool({"$ref": "https://schemas.example/args.json"})
    assert "cannot be evaluated" in (parameters_fault("kb.search", dangling, {}) or "")
    assert parameters_fault("kb.search", None, {"anything": 1}) is None  # no Tool: policy denies it


@pytest.mark.timeout(20)
def test_pattern_properties_and_additional_properties_match_with_re2() -> None:
    from bastion.api import schema_validator

    schema = {
        "type": "object",
        "patternProperties": {"^(x+)+$": {"type": "integer"}},
        "additionalProperties": False,
    }
    validator = schema_validator(schema)
    assert validator.is_valid({"xxx": 1})
    assert not validator.is_valid({"xxx": "one"})
    assert _quick(lambda: not validator.is_valid({"x" * 60 + "!": 1}))  # not covered: additional
    with pytest.raises(ValueError, match="unevaluatedProperties"):
        schema_validator({"patternProperties": {"a": {}}, "unevaluatedProperties": False})


def test_a_lone_surrogate_is_matched_not_an_error() -> None:
    # JSON allows "\ud800"; RE2 reads UTF-8, which has no such character: it must still answer.
    cp = compile_policy(
        [blocking({"match": "regex", "pattern": "drop\\s+table"}, {"match": "glob", "pattern": "*/etc/*"})],
        [grant("g", ["kb.search"])],
        strict=True,
    )
    assert cp.decide(call({"q": "fine \ud800 text"})).allowed
    denied = cp.decide(call({"q": "drop \ud800 table", "p": "x/etc/\ud800"}))
    assert denied.effect == "deny" and "policy/error" not in denied.rule_ids
    scoped = compile_policy(
        [], [grant("g", ["kb.search"], argumentPatterns={"kb.search": {"q": "^[a-z ]+$"}})]
    )
    assert scoped.decide(call({"q": "abc \ud800"})).rule_ids == ("grant/g/arguments",)
