"""The Kubernetes-shaped envelope every resource shares: apiVersion, kind, metadata, spec, status."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

API_VERSION = "bastion/v1"
DEFAULT_NAMESPACE = "default"

_NAME = re.compile(r"[a-z0-9](?:[-a-z0-9.]{0,61}[a-z0-9])?")
_NAMESPACE = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")
_LABEL_NAME = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_LABEL_PREFIX = re.compile(r"[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?")
NAME_HINT = (
    "use 1-63 lowercase ASCII letters, digits, '-' and '.', starting and ending with a letter or digit "
    "(e.g. 'support-bot' or 'kb.search')"
)
NAMESPACE_HINT = "use 1-63 lowercase ASCII letters, digits and '-', starting and ending with a letter or digit (e.g. 'team-a')"


def check_name(value: str) -> str:
    """Validate a resource name: lowercase ASCII, digits, '-' and '.', at most 63 characters."""
    if not _NAME.fullmatch(value) or ".." in value:
        raise ValueError(f"{value!r} is not a valid name: {NAME_HINT}")
    return value


def check_namespace(value: str) -> str:
    """Validate a namespace, tenant or key name (an RFC 1123 label, ASCII only)."""
    if not _NAMESPACE.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid namespace name: {NAMESPACE_HINT}")
    return value


def check_label_key(key: str) -> str:
    prefix, _, name = key.rpartition("/")
    if (prefix and not _LABEL_PREFIX.fullmatch(prefix)) or not _LABEL_NAME.fullmatch(name):
        raise ValueError(
            f"label key {key!r} is invalid: use an optional DNS prefix and '/', then 1-63 ASCII letters, "
            "digits, '-', '_' or '.', starting and ending with a letter or digit"
        )
    return key


def check_label_value(value: str) -> str:
    if value and not _LABEL_NAME.fullmatch(value):
        raise ValueError(
            f"label value {value!r} is invalid: use at most 63 ASCII letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return value


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        check_label_key(key)
        check_label_value(value)
    return labels


def _check_annotations(annotations: dict[str, str]) -> dict[str, str]:
    for key in annotations:
        check_label_key(key)
    if sum(len(k) + len(v) for k, v in annotations.items()) > 256 * 1024:
        raise ValueError("annotations are larger than 256 KiB in total: keep large data out of metadata")
    return annotations


Name = Annotated[str, Field(min_length=1, max_length=63), AfterValidator(check_name)]
NamespaceName = Annotated[str, Field(min_length=1, max_length=63), AfterValidator(check_namespace)]
Labels = Annotated[dict[str, str], AfterValidator(_check_labels)]


class Model(BaseModel):
    """Base of every manifest model: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )

    def wire(self) -> dict[str, Any]:
        """The JSON-ready form, camelCase, without unset optional fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ObjectMeta(Model):
    """Identity and bookkeeping of a resource. Clients set name, namespace, labels, annotations."""

    name: Name
    """The resource's name, unique per kind within a namespace."""
    namespace: NamespaceName = DEFAULT_NAMESPACE
    """The namespace inside the caller's tenant."""
    labels: Labels = Field(default_factory=dict[str, str])
    """Key/value pairs that label selectors match."""
    annotations: Annotated[dict[str, str], AfterValidator(_check_annotations)] = Field(
        default_factory=dict[str, str]
    )
    """Free-form notes for tools and people; not used for selection."""
    uid: str | None = None
    """Set by Bastion on creation; ignored on apply."""
    generation: int | None = None
    """Set by Bastion; bumps when the spec changes. Ignored on apply."""
    resource_version: str | None = None
    """Set by Bastion on every write. Send it back on apply to refuse a stale update (409)."""
    creation_timestamp: datetime | None = None
    """Set by Bastion on creation."""


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(Model):
    type: str
    status: ConditionStatus
    reason: str = ""
    message: str = ""
    last_transition_time: datetime | None = None


class Status(Model):
    """Written by Bastion, never by clients: what it has observed of the spec."""

    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list[Condition])
