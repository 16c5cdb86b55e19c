"""Resource models and manifests (DESIGN §2). No I/O happens here.

Every name is imported from its module when first used: the client and the CLI's client commands
need a few light ones (the kind names, the clock, the packaged schemas) and must not pay for
pydantic, jsonschema and the models (tests/test_cli_startup.py checks).
"""

from __future__ import annotations

import typing
from typing import Any

from ._names import KIND_PLURALS, kind_named

if typing.TYPE_CHECKING:
    from ._json import NonFiniteNumber, parse_json
    from ._kinds import (
        IMAGE_BASES,
        KINDS,
        SECRET_PLACEHOLDER,
        TIERS,
        Agent,
        AgentSpec,
        MemoryScope,
        ModelPolicy,
        Policy,
        Resource,
        ScriptTurn,
        Secret,
        Tool,
        ToolGrant,
        ToolSpec,
        parse_duration,
        resolve_kind,
    )
    from ._manifest import RawDocument, parse_yaml, validate_document, validate_documents
    from ._meta import (
        API_VERSION,
        DEFAULT_NAMESPACE,
        NAME_HINT,
        NAMESPACE_HINT,
        Condition,
        ObjectMeta,
        Status,
        check_name,
        check_namespace,
    )
    from ._patterns import (
        LinearRegex,
        LinearSet,
        RegexError,
        check_regex,
        check_rego,
        check_schema,
        glob_source,
        linear,
        literal_source,
        schema_validator,
    )
    from ._schema import field_names_at, kind_schema, packaged_schema, schema_at, walk_schema
    from ._seams import Clock, IdSource, RandomIds, SystemClock
    from ._selectors import Requirement, parse_selector

ROLES = ("viewer", "developer", "operator", "admin")
"""API key roles, least to most."""

_LAZY: dict[str, str] = {
    "NonFiniteNumber": "_json",
    "parse_json": "_json",
    "IMAGE_BASES": "_kinds",
    "KINDS": "_kinds",
    "SECRET_PLACEHOLDER": "_kinds",
    "TIERS": "_kinds",
    "Agent": "_kinds",
    "AgentSpec": "_kinds",
    "MemoryScope": "_kinds",
    "ModelPolicy": "_kinds",
    "Policy": "_kinds",
    "Resource": "_kinds",
    "ScriptTurn": "_kinds",
    "Secret": "_kinds",
    "Tool": "_kinds",
    "ToolGrant": "_kinds",
    "ToolSpec": "_kinds",
    "parse_duration": "_kinds",
    "resolve_kind": "_kinds",
    "RawDocument": "_manifest",
    "parse_yaml": "_manifest",
    "validate_document": "_manifest",
    "validate_documents": "_manifest",
    "API_VERSION": "_meta",
    "DEFAULT_NAMESPACE": "_meta",
    "NAME_HINT": "_meta",
    "NAMESPACE_HINT": "_meta",
    "Condition": "_meta",
    "ObjectMeta": "_meta",
    "Status": "_meta",
    "check_name": "_meta",
    "check_namespace": "_meta",
    "LinearRegex": "_patterns",
    "LinearSet": "_patterns",
    "RegexError": "_patterns",
    "check_regex": "_patterns",
    "check_rego": "_patterns",
    "check_schema": "_patterns",
    "glob_source": "_patterns",
    "linear": "_patterns",
    "literal_source": "_patterns",
    "schema_validator": "_patterns",
    "field_names_at": "_schema",
    "kind_schema": "_schema",
    "schema_at": "_schema",
    "packaged_schema": "_schema",
    "walk_schema": "_schema",
    "Clock": "_seams",
    "IdSource": "_seams",
    "RandomIds": "_seams",
    "SystemClock": "_seams",
    "Requirement": "_selectors",
    "parse_selector": "_selectors",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # __import__ rather than importlib.import_module: -X importtime then shows the submodule
    value = getattr(__import__(f"{__name__}.{module}", fromlist=[name]), name)
    globals()[name] = value  # once imported, an ordinary attribute
    return value


__all__ = [
    "API_VERSION",
    "DEFAULT_NAMESPACE",
    "IMAGE_BASES",
    "KINDS",
    "KIND_PLURALS",
    "NAMESPACE_HINT",
    "NAME_HINT",
    "ROLES",
    "SECRET_PLACEHOLDER",
    "TIERS",
    "Agent",
    "AgentSpec",
    "Clock",
    "Condition",
    "IdSource",
    "LinearRegex",
    "LinearSet",
    "MemoryScope",
    "ModelPolicy",
    "NonFiniteNumber",
    "ObjectMeta",
    "Policy",
    "RandomIds",
    "RawDocument",
    "RegexError",
    "Requirement",
    "Resource",
    "ScriptTurn",
    "Secret",
    "Status",
    "SystemClock",
    "Tool",
    "ToolGrant",
    "ToolSpec",
    "check_name",
    "check_namespace",
    "check_regex",
    "check_rego",
    "check_schema",
    "field_names_at",
    "glob_source",
    "kind_named",
    "kind_schema",
    "linear",
    "literal_source",
    "packaged_schema",
    "parse_duration",
    "parse_json",
    "parse_selector",
    "parse_yaml",
    "resolve_kind",
    "schema_at",
    "schema_validator",
    "validate_document",
    "validate_documents",
    "walk_schema",
]
