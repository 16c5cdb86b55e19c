"""Resource rows: one per (tenant, kind, namespace, name), with their labels indexed for selectors."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Select, and_, delete, exists, insert, not_, or_, select, update

from bastion.api import Requirement
from bastion.errors import UserError

from ._tables import resource_labels, resources


@dataclass(frozen=True, kw_only=True)
class ResourceRow:
    uid: str
    tenant_id: str
    namespace: str
    kind: str
    name: str
    api_version: str
    labels: dict[str, str]
    annotations: dict[str, str]
    spec: dict[str, Any]
    status: dict[str, Any] | None
    sealed: bytes | None
    generation: int
    resource_version: int
    created_at: datetime
    updated_at: datetime

    def manifest(self) -> dict[str, Any]:
        """The resource as the API returns it (Secret values must already be masked in ``spec``)."""
        body: dict[str, Any] = {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": self.labels,
                "annotations": self.annotations,
                "uid": self.uid,
                "generation": self.generation,
                "resourceVersion": str(self.resource_version),
                "creationTimestamp": self.created_at.isoformat().replace("+00:00", "Z"),
            },
            "spec": self.spec,
        }
        if self.status is not None:
            body["status"] = self.status
        return body


def _row(mapping: Any) -> ResourceRow:
    return ResourceRow(**{k: mapping[k] for k in ResourceRow.__dataclass_fields__})


def get_row(
    conn: Connection, tenant_id: str, kind: str, namespace: str, name: str, *, lock: bool = False
) -> ResourceRow | None:
    query = select(resources).where(
        resources.c.tenant_id == tenant_id,
        resources.c.kind == kind,
        resources.c.namespace == namespace,
        resources.c.name == name,
    )
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    found = conn.execute(query).mappings().first()
    return _row(found) if found is not None else None


def insert_row(conn: Connection, row: ResourceRow) -> None:
    conn.execute(insert(resources).values(**row.__dict__))
    _write_labels(conn, row.uid, row.labels)


def update_row(conn: Connection, row: ResourceRow) -> None:
    values = {
        k: v
        for k, v in row.__dict__.items()
        if k not in {"uid", "tenant_id", "kind", "namespace", "name", "created_at"}
    }
    conn.execute(update(resources).where(resources.c.uid == row.uid).values(**values))
    conn.execute(delete(resource_labels).where(resource_labels.c.resource_uid == row.uid))
    _write_labels(conn, row.uid, row.labels)


def delete_row(conn: Connection, uid: str) -> None:
    conn.execute(delete(resource_labels).where(resource_labels.c.resource_uid == uid))
    conn.execute(delete(resources).where(resources.c.uid == uid))


def _write_labels(conn: Connection, uid: str, labels: dict[str, str]) -> None:
    if labels:
        conn.execute(
            insert(resource_labels), [{"resource_uid": uid, "key": k, "value": v} for k, v in labels.items()]
        )


@dataclass(frozen=True, kw_only=True)
class Page:
    items: list[ResourceRow]
    next_cursor: str | None


def _selector_clause(req: Requirement) -> Any:
    has = exists().where(resource_labels.c.resource_uid == resources.c.uid, resource_labels.c.key == req.key)
    match req.op:
        case "exists":
            return has
        case "!exists":
            return not_(has)
        case "=" | "in":
            return has.where(resource_labels.c.value.in_(req.values))
        case "!=" | "notin":
            return not_(has.where(resource_labels.c.value.in_(req.values)))


_CURSOR_PART = re.compile(r"[\x21-\x7e]{1,253}")


def _encode_cursor(scope: str, last: ResourceRow) -> str:
    raw = json.dumps([scope, last.namespace, last.name, last.kind], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, scope: str) -> tuple[str, str, str]:
    bad = UserError(
        "the continue token is invalid or belongs to another listing",
        field="continue",
        hint="pass the 'continue' value of the previous page unchanged, with the same filters",
    )
    try:
        data: Any = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise bad from None
    if not isinstance(data, list):
        raise bad
    parts = [x for x in cast(list[Any], data) if isinstance(x, str)]
    # Names, namespaces and kinds are printable ASCII: anything else in a token was forged, and
    # must not reach SQL (PostgreSQL refuses NUL; no driver encodes a lone surrogate).
    if len(parts) != 4 or parts[0] != scope or not all(_CURSOR_PART.fullmatch(p) for p in parts):
        raise bad
    return parts[1], parts[2], parts[3]


def list_rows(
    conn: Connection,
    tenant_id: str,
    kind: str | None,
    namespace: str | None,
    selector: list[Requirement],
    *,
    limit: int,
    cursor: str | None,
) -> Page:
    """One page of resources ordered by (namespace, name, kind), filtered in SQL.

    The continue token carries the last row's key and a fingerprint of the filters, so a token
    cannot be replayed against another listing.
    """
    scope = hashlib.sha256(
        json.dumps([kind, namespace, [(r.key, r.op, r.values) for r in selector]]).encode()
    ).hexdigest()[:16]
    query: Select[Any] = select(resources).where(resources.c.tenant_id == tenant_id)
    if kind is not None:
        query = query.where(resources.c.kind == kind)
    if namespace is not None:
        query = query.where(resources.c.namespace == namespace)
    for req in selector:
        query = query.where(_selector_clause(req))
    if cursor:
        ns, name, knd = _decode_cursor(cursor, scope)
        c = resources.c
        query = query.where(
            or_(
                c.namespace > ns,
                and_(c.namespace == ns, c.name > name),
                and_(c.namespace == ns, c.name == name, c.kind > knd),
            )
        )
    query = query.order_by(resources.c.namespace, resources.c.name, resources.c.kind).limit(limit + 1)
    rows = [_row(m) for m in conn.execute(query).mappings()]
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(items=rows, next_cursor=_encode_cursor(scope, rows[-1]) if more else None)
