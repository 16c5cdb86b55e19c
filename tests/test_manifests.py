"""Manifest validation: every fault names the file, the document, the field, what and the fix."""

from __future__ import annotations

from typing import Any

import pytest

from bastion.api import KINDS, kind_schema, parse_selector, parse_yaml, schema_at, validate_documents
from bastion.errors import InvalidManifest, UserError

from ._docs import agent, raw


def faults(*bodies: Any) -> list[tuple[str | None, str | None, str, str | None]]:
    with pytest.raises(InvalidManifest) as caught:
        validate_documents(raw(*bodies))
    return [(p.source, p.field, p.message, p.hint) for p in caught.value.problems]


def test_a_valid_agent_validates_with_defaults() -> None:
    [resource] = validate_documents(raw(agent("a")))
    assert resource.kind_name == "Agent"
    assert resource.metadata.namespace == "default"
    assert resource.wire()["spec"]["limits"]["cpuSeconds"] == 30.0


def test_unknown_field_is_named_with_a_suggestion() -> None:
    [(source, field, message, hint)] = faults(agent("a", entrypont="x"))
    assert source == "test.yaml, document 1"
    assert field == "spec.entrypont"
    assert "unknown field" in message
    assert hint is not None and "entrypoint" in hint


def test_wrong_type_names_the_field() -> None:
    [(_, field, message, hint)] = faults(agent("a", limits={"cpuSeconds": "lots"}))
    assert field == "spec.limits.cpuSeconds"
    assert "number" in message
    assert hint


@pytest.mark.parametrize(
    ("body", "field", "hint_part"),
    [
        (
            {"apiVersion": "bastion/v2", "kind": "Agent", "metadata": {"name": "a"}},
            "apiVersion",
            "bastion/v1",
        ),
        ({"kind": "Agent", "metadata": {"name": "a"}}, "apiVersion", "bastion/v1"),
        ({"apiVersion": "bastion/v1", "kind": "Agnet", "metadata": {"name": "a"}}, "kind", "Agent"),
        ({"apiVersion": "bastion/v1", "metadata": {"name": "a"}}, "kind", "Agent"),
        (["not", "a", "mapping"], None, "apiVersion"),
        ("just a string", None, "apiVersion"),
    ],
)
def test_envelope_faults(body: Any, field: str | None, hint_part: str) -> None:
    [(_, got_field, _message, hint)] = faults(body)
    assert got_field == field
    assert hint is not None and hint_part in hint


@pytest.mark.parametrize(
    "name",
    [
        "Upper",
        "under_score",
        "-lead",
        "trail-",
        "a" * 64,
        "ａgent",
        "agent\u200b",
        "café",
        "a b",
        "",
        "a..b",
        "agent\n",
    ],
)
def test_odd_names_are_refused(name: str) -> None:
    [(_, field, message, hint)] = faults(agent(name))
    assert field == "metadata.name"
    assert message
    assert hint is None or hint


def test_runtime_rules_need_their_fields() -> None:
    [(_, field, message, _)] = faults({**agent("a"), "spec": {"runtime": "llm"}})
    assert field == "spec"
    assert "instructions" in message


def test_duplicate_names_in_one_apply_are_refused() -> None:
    problems = faults(agent("a"), agent("b"), agent("a"))
    assert len(problems) == 1
    source, field, message, _ = problems[0]
    assert source == "test.yaml, document 3"
    assert field == "metadata.name"
    assert "document 1" in message


def test_same_name_in_other_namespace_or_kind_is_fine() -> None:
    secret = {
        "apiVersion": "bastion/v1",
        "kind": "Secret",
        "metadata": {"name": "a"},
        "spec": {"stringData": {"k": "v"}},
    }
    assert len(validate_documents(raw(agent("a"), agent("a", namespace="other"), secret))) == 3


def test_every_bad_document_is_reported_not_just_the_first() -> None:
    problems = faults(agent("ok"), agent("BAD"), agent("ok2", tier="T9"))
    assert [p[0] for p in problems] == ["test.yaml, document 2", "test.yaml, document 3"]


def test_malformed_yaml_names_line_and_column() -> None:
    with pytest.raises(InvalidManifest) as caught:
        parse_yaml("apiVersion: bastion/v1\nkind: Agent\nmetadata: {name: [unclosed\n", "bad.yaml")
    text = str(caught.value)
    assert "bad.yaml" in text
    assert "line" in text


def test_yaml_alias_bombs_are_refused() -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 10) + "]")
    with pytest.raises(InvalidManifest, match="expands to more than"):
        parse_yaml("\n".join(lines), "bomb.yaml")


def test_empty_documents_are_skipped_and_numbered_by_position() -> None:
    docs = parse_yaml("a: 1\n---\n---\napiVersion: bastion/v1\nkind: Agent\n", "f.yaml")[1:]
    assert [d.source for d in docs] == ["f.yaml, document 3"]


def test_invalid_tool_parameters_schema_is_refused() -> None:
    tool = {
        "apiVersion": "bastion/v1",
        "kind": "Tool",
        "metadata": {"name": "t"},
        "spec": {
            "description": "d",
            "parameters": {"type": "no-such-type"},
            "implementation": {"type": "builtin", "name": "fs.read"},
        },
    }
    [(_, field, message, _)] = faults(tool)
    assert field == "spec.parameters"
    assert "JSON Schema" in message


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_exports_a_json_schema(kind: str) -> None:
    schema = kind_schema(kind)
    assert (
        schema["properties"]["kind"]["const"] == kind or schema["properties"]["kind"].get("default") == kind
    )
    assert "spec" in schema["required"]
    assert schema_at(kind, ["metadata", "name"]) is not None


def test_schema_walks_into_nested_fields_with_descriptions() -> None:
    node = schema_at("Agent", ["spec", "limits", "cpuSeconds"])
    assert node is not None
    assert node["type"] == "number"
    assert "CPU" in node["description"]


@pytest.mark.parametrize(
    ("text", "labels", "selected"),
    [
        ("app=web", {"app": "web"}, True),
        ("app=web", {"app": "db"}, False),
        ("app!=web", {}, True),
        ("env in (dev, prod)", {"env": "prod"}, True),
        ("env notin (dev,prod)", {"env": "prod"}, False),
        ("owner", {"owner": "x"}, True),
        ("!owner", {"owner": "x"}, False),
        ("app=web,!legacy", {"app": "web", "legacy": "1"}, False),
        ("", {"anything": "x"}, True),
    ],
)
def test_label_selectors(text: str, labels: dict[str, str], selected: bool) -> None:
    assert all(r.matches(labels) for r in parse_selector(text)) is selected


@pytest.mark.parametrize("text", ["app=", "=web", "app in web", "a b", "app==(x)", "app=w@b"])
def test_bad_selectors_say_how_to_write_one(text: str) -> None:
    if text == "app=":
        assert parse_selector(text)[0].values == ("",)
        return
    with pytest.raises(UserError) as caught:
        parse_selector(text)
    assert caught.value.field == "labelSelector"
