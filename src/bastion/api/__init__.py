"""Resource models and manifests (DESIGN §2). No I/O happens here."""

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
from ._schema import field_names_at, kind_schema, schema_at
from ._seams import Clock, IdSource, RandomIds, SystemClock
from ._selectors import Requirement, parse_selector

ROLES = ("viewer", "developer", "operator", "admin")
"""API key roles, least to most."""

__all__ = [
    "API_VERSION",
    "DEFAULT_NAMESPACE",
    "IMAGE_BASES",
    "KINDS",
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
    "MemoryScope",
    "ModelPolicy",
    "ObjectMeta",
    "Policy",
    "RandomIds",
    "RawDocument",
    "Requirement",
    "Resource",
    "ScriptTurn",
    "Secret",
    "Status",
    "SystemClock",
    "Tool",
    "ToolGrant",
    "check_name",
    "check_namespace",
    "field_names_at",
    "kind_schema",
    "parse_duration",
    "parse_selector",
    "parse_yaml",
    "resolve_kind",
    "schema_at",
    "validate_document",
    "validate_documents",
]
