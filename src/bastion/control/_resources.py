"""Applying, diffing, reading and deleting resources: the rules of DESIGN §2 over the store.

* ``apply`` is idempotent: applying the same manifest twice changes nothing, not even the
  resourceVersion. ``generation`` bumps only when ``spec`` changes.
* A manifest that carries ``metadata.resourceVersion`` is an optimistic-concurrency write: if the
  stored version differs, the apply is refused with 409.
* A multi-document apply is one transaction: every document lands or none does.
* Secret values are sealed (AES-256-GCM) on the way in and never leave again; reads show
  ``[REDACTED]``. What is stored in ``spec`` is a keyed fingerprint per value, so a changed value
  still bumps ``generation`` and shows in a diff without the value being readable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Literal

import jsonpatch  # pyright: ignore[reportMissingTypeStubs]
from sqlalchemy import Connection

from bastion.api import SECRET_PLACEHOLDER, Clock, IdSource, Requirement, Resource, Secret
from bastion.errors import Conflict, Forbidden, NotFound, Problem
from bastion.execution.gateway import POLICY_KINDS, replace_policy_stamp
from bastion.secrets import Sealer

from ._privileged import check_privileged_fields
from .store import Page, Principal, ResourceRow, Store, delete_row, get_row, insert_row, list_rows, update_row

Action = Literal["created", "configured", "unchanged"]


@dataclass(frozen=True, kw_only=True)
class Applied:
    action: Action
    row: ResourceRow


@dataclass(frozen=True, kw_only=True)
class Planned:
    """What applying one document would do: the action and the JSON patch from stored to new."""

    kind: str
    namespace: str
    name: str
    action: Literal["create", "update", "unchanged"]
    patch: list[dict[str, Any]]


def _aad(tenant_id: str, resource: Resource) -> bytes:
    return f"{tenant_id}/{resource.metadata.namespace}/Secret/{resource.metadata.name}".encode()


def public_spec(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The spec as readers see it: Secret values masked."""
    if kind != Secret.kind_name:
        return spec
    data: dict[str, Any] = spec.get("stringData", {})
    return {**spec, "stringData": dict.fromkeys(data, SECRET_PLACEHOLDER)}


def public_manifest(row: ResourceRow) -> dict[str, Any]:
    return {**row.manifest(), "spec": public_spec(row.kind, row.spec)}


def _view(labels: dict[str, str], annotations: dict[str, str], spec: dict[str, Any]) -> dict[str, Any]:
    """The client-owned part of a resource: what a diff compares."""
    return {"metadata": {"labels": labels, "annotations": annotations}, "spec": spec}


class ResourceService:
    def __init__(self, store: Store, sealer: Sealer) -> None:
        self._store = store
        self._sealer = sealer
        self._clock: Clock = store.clock
        self._ids: IdSource = store.ids

    def _stored_spec(self, tenant_id: str, resource: Resource) -> tuple[dict[str, Any], bytes | None]:
        """The spec to store and, for a Secret, its sealed values."""
        spec = resource.wire()["spec"]
        if not isinstance(resource, Secret):
            return spec, None
        values: dict[str, str] = dict(resource.spec.string_data)
        plaintext = json.dumps(values, sort_keys=True).encode()
        fingerprints = {
            k: "sha256-hmac:" + self._sealer.fingerprint(v.encode())[:32] for k, v in values.items()
        }
        return {**spec, "stringData": fingerprints}, self._sealer.seal(plaintext, _aad(tenant_id, resource))

    def open_secret(self, row: ResourceRow) -> dict[str, str]:
        """The plaintext values of a Secret row: for the gateway, after a policy decision only."""
        if row.sealed is None:
            raise NotFound(f"Secret {row.name!r} holds no values")
        aad = f"{row.tenant_id}/{row.namespace}/Secret/{row.name}".encode()
        values: dict[str, str] = json.loads(self._sealer.open(row.sealed, aad))
        return values

    def check_writable(self, principal: Principal, resources: list[Resource]) -> None:
        for index, resource in enumerate(resources):
            if not principal.at_least(resource.write_role):
                raise Forbidden(
                    f"role {principal.role!r} may not write {resource.kind_name} resources",
                    field="kind",
                    hint=f"use a key with role {resource.write_role!r} or higher",
                    problems=[
                        Problem(
                            message=f"{resource.kind_name} needs role {resource.write_role!r}", document=index
                        )
                    ],
                )

    def _check_namespaces(self, conn: Connection, principal: Principal, resources: list[Resource]) -> None:
        for index, resource in enumerate(resources):
            ns = resource.metadata.namespace
            if not self._store.namespace_exists(conn, principal.tenant_id, ns):
                raise NotFound(
                    f"namespace {ns!r} not found",
                    field="metadata.namespace",
                    hint=f"create it with `bastion namespaces create {ns}`",
                    problems=[
                        Problem(
                            message=f"namespace {ns!r} not found", field="metadata.namespace", document=index
                        )
                    ],
                )

    def authorize(self, conn: Connection, principal: Principal, resources: list[Resource]) -> None:
        """Every check of an apply that depends on the caller: the role each kind needs, and
        the operator-owned fields (``_privileged``) against what is stored now."""
        self.check_writable(principal, resources)
        for index, resource in enumerate(resources):
            meta = resource.metadata
            existing = get_row(conn, principal.tenant_id, resource.kind_name, meta.namespace, meta.name)
            check_privileged_fields(principal, index, resource, existing)

    def apply(self, conn: Connection, principal: Principal, resources: list[Resource]) -> list[Applied]:
        """Apply every document in one transaction (the caller's)."""
        self.check_writable(principal, resources)
        self._check_namespaces(conn, principal, resources)
        return [self._apply_one(conn, principal, index, r) for index, r in enumerate(resources)]

    def _apply_one(self, conn: Connection, principal: Principal, index: int, resource: Resource) -> Applied:
        meta = resource.metadata
        now = self._clock.now()
        existing = get_row(
            conn, principal.tenant_id, resource.kind_name, meta.namespace, meta.name, lock=True
        )
        check_privileged_fields(principal, index, resource, existing)
        wanted_version = meta.resource_version
        if existing is None and wanted_version is not None:
            raise Conflict(
                f"{resource.kind_name} {meta.name!r} does not exist, but the manifest names resourceVersion {wanted_version!r}",
                field="metadata.resourceVersion",
                hint="it was deleted meanwhile; remove metadata.resourceVersion to create it again",
                problems=[
                    Problem(message="stale resourceVersion", field="metadata.resourceVersion", document=index)
                ],
            )
        if (
            existing is not None
            and wanted_version is not None
            and wanted_version != str(existing.resource_version)
        ):
            raise Conflict(
                f"{resource.kind_name} {meta.name!r} was changed since resourceVersion {wanted_version!r} "
                f"(now {existing.resource_version})",
                field="metadata.resourceVersion",
                hint="get the resource again, reapply your change to it, or drop metadata.resourceVersion to overwrite",
                problems=[
                    Problem(message="stale resourceVersion", field="metadata.resourceVersion", document=index)
                ],
            )
        spec, sealed = self._stored_spec(principal.tenant_id, resource)
        labels, annotations = dict(meta.labels), dict(meta.annotations)
        if existing is None:
            row = ResourceRow(
                uid=self._ids.uid(),
                tenant_id=principal.tenant_id,
                namespace=meta.namespace,
                kind=resource.kind_name,
                name=meta.name,
                api_version=resource.api_version,
                labels=labels,
                annotations=annotations,
                spec=spec,
                status=_status(1, now),
                sealed=sealed,
                generation=1,
                resource_version=1,
                created_at=now,
                updated_at=now,
            )
            insert_row(conn, row)
            if row.kind in POLICY_KINDS:
                replace_policy_stamp(conn, row.tenant_id, row.namespace)
            return Applied(action="created", row=row)
        spec_changed = spec != existing.spec
        if not spec_changed and labels == existing.labels and annotations == existing.annotations:
            return Applied(action="unchanged", row=existing)
        generation = existing.generation + (1 if spec_changed else 0)
        row = replace(
            existing,
            labels=labels,
            annotations=annotations,
            spec=spec,
            sealed=sealed if spec_changed else existing.sealed,
            generation=generation,
            resource_version=existing.resource_version + 1,
            status=_status(generation, now) if spec_changed else existing.status,
            updated_at=now,
        )
        update_row(conn, row)
        if row.kind in POLICY_KINDS:
            replace_policy_stamp(conn, row.tenant_id, row.namespace)
        return Applied(action="configured", row=row)

    def plan(self, conn: Connection, principal: Principal, resources: list[Resource]) -> list[Planned]:
        """What ``apply`` would do, as JSON patches (RFC 6902) on the client-owned fields."""
        plans: list[Planned] = []
        for resource in resources:
            meta = resource.metadata
            spec, _ = self._stored_spec(principal.tenant_id, resource)
            new = _view(dict(meta.labels), dict(meta.annotations), public_spec(resource.kind_name, spec))
            existing = get_row(conn, principal.tenant_id, resource.kind_name, meta.namespace, meta.name)
            old: dict[str, Any] = (
                {}
                if existing is None
                else _view(existing.labels, existing.annotations, public_spec(existing.kind, existing.spec))
            )
            if existing is not None and isinstance(resource, Secret):
                old, new = self._secret_views(existing, spec, old, new)
            patch: list[dict[str, Any]] = jsonpatch.make_patch(old, new).patch  # pyright: ignore[reportUnknownMemberType]
            action = "create" if existing is None else ("update" if patch else "unchanged")
            plans.append(
                Planned(
                    kind=resource.kind_name,
                    namespace=meta.namespace,
                    name=meta.name,
                    action=action,
                    patch=patch,
                )
            )
        return plans

    @staticmethod
    def _secret_views(
        existing: ResourceRow, spec: dict[str, Any], old: dict[str, Any], new: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Make a changed secret value show as a replace of ``[REDACTED]`` without showing either value."""
        old_fp: dict[str, str] = existing.spec.get("stringData", {})
        new_fp: dict[str, str] = spec.get("stringData", {})
        changed = {k for k in new_fp if k in old_fp and old_fp[k] != new_fp[k]}
        for key in changed:
            old["spec"]["stringData"][key] = f"{SECRET_PLACEHOLDER} (old)"
            new["spec"]["stringData"][key] = f"{SECRET_PLACEHOLDER} (new)"
        return old, new

    def get(
        self, conn: Connection, principal: Principal, kind: str, namespace: str, name: str
    ) -> ResourceRow:
        row = get_row(conn, principal.tenant_id, kind, namespace, name)
        if row is None:
            raise NotFound(
                f"{kind} {name!r} not found in namespace {namespace!r}",
                field="name",
                hint=f"list what exists with `bastion get {kind.lower()} -n {namespace}`",
            )
        return row

    def list(
        self,
        conn: Connection,
        principal: Principal,
        kind: str | None,
        namespace: str | None,
        selector: list[Requirement],
        *,
        limit: int,
        cursor: str | None,
    ) -> Page:
        return list_rows(conn, principal.tenant_id, kind, namespace, selector, limit=limit, cursor=cursor)

    def delete(
        self, conn: Connection, principal: Principal, kind: str, namespace: str, name: str
    ) -> ResourceRow:
        row = self.get(conn, principal, kind, namespace, name)
        delete_row(conn, row.uid)
        if row.kind in POLICY_KINDS:
            replace_policy_stamp(conn, row.tenant_id, row.namespace)
        return row


def _status(generation: int, now: Any) -> dict[str, Any]:
    stamp = now.isoformat().replace("+00:00", "Z")
    return {
        "observedGeneration": generation,
        "conditions": [
            {
                "type": "Accepted",
                "status": "True",
                "reason": "Valid",
                "message": "spec validated and stored",
                "lastTransitionTime": stamp,
            }
        ],
    }


class StoreResourceReader:
    """The gateway's view of resources (``bastion.execution.gateway.ResourceReader``)."""

    def __init__(self, store: Store, service: ResourceService) -> None:
        self._store = store
        self._service = service

    def resource(self, tenant_id: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._store.read() as conn:
            row = get_row(conn, tenant_id, kind, namespace, name)
        return public_manifest(row) if row is not None else None

    def resources(self, tenant_id: str, kind: str, namespace: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        cursor: str | None = None
        with self._store.read() as conn:
            while True:
                page = list_rows(conn, tenant_id, kind, namespace, [], limit=500, cursor=cursor)
                found.extend(public_manifest(row) for row in page.items)
                cursor = page.next_cursor
                if cursor is None:
                    return found

    def secret_values(self, tenant_id: str, namespace: str, name: str) -> dict[str, str]:
        with self._store.read() as conn:
            row = get_row(conn, tenant_id, "Secret", namespace, name)
        if row is None:
            raise NotFound(f"Secret {name!r} not found in namespace {namespace!r}")
        return self._service.open_secret(row)
