"""What the gateway keeps for policy: compiled policies by their inputs, and rate-limit windows.

Compiling a namespace's Policies and ToolGrants (patterns, JSON Schemas, Rego) costs milliseconds,
a decision microseconds; so a compiled policy is kept per (tenant, namespace, digest of the inputs'
kinds, names and specs) and shared by every session of that namespace that sees the same inputs.
Never by names or resourceVersions alone: every new resource starts at resourceVersion 1, so a
twin namespace or tenant with same-named resources would be judged by the other's rules
(DESIGN invariant 6).

Which inputs are current is told by the namespace's *policy stamp* (``policy_stamps``, revision
0011): a random value the control plane replaces in the same transaction that creates, changes or
deletes a Policy or ToolGrant of that (tenant, namespace). Every decision reads the stamp (one
primary-key row) and reloads the manifests only when it differs from the one the cached policy was
loaded under, so a change bites on the very next call of every running session, on any worker,
and an unchanged namespace is never re-read or recompiled. The stamp is read *before* the
manifests, so what is cached under a stamp is never older than the stamp (a change racing the
load only costs one more reload). Rate limits count allowed calls per (tenant, namespace, agent or the whole
namespace, limit) in sliding windows held by this process (DESIGN §5: in-process by default).
``parameters_fault`` holds a call's arguments to its Tool's JSON Schema (``spec.parameters``),
whatever the runtime that made the call.
"""

from __future__ import annotations

import functools
import json
import secrets
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match  # pyright: ignore[reportUnknownVariableType]
from sqlalchemy import Column, Connection, MetaData, String, Table, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from bastion.api import schema_validator
from bastion.policy import CompiledPolicy, RateLimitRef, compile_policy, policy_version

CACHE_SIZE = 64
"""Compiled policies kept by content (what identical namespaces share)."""
CURRENT_SIZE = 1024
"""Namespaces whose current policy is kept: past it the least recently used one is reloaded on its
next decision, so it must exceed the namespaces a process serves at once (each entry holds one
compiled policy, which sessions held each for themselves before)."""
POLICY_KINDS = frozenset({"Policy", "ToolGrant"})
"""The kinds a namespace's compiled policy is made of: writing one replaces the namespace's stamp."""

metadata = MetaData(naming_convention={"pk": "pk_%(table_name)s"})

policy_stamps = Table(
    "policy_stamps",
    metadata,
    Column("tenant_id", String(36), primary_key=True),
    Column("namespace", String(63), primary_key=True),
    Column("stamp", String(32), nullable=False),
)
"""One random stamp per (tenant, namespace), replaced whenever a Policy or ToolGrant there is
created, changed or deleted (revision 0011). No row: none was written since the migration."""

STAMP_SQL = "SELECT stamp FROM policy_stamps WHERE tenant_id = ? AND namespace = ?"
"""The stamp as prebuilt SQL (qmark placeholders), for a caller that reads it on a DBAPI cursor."""

Manifests = tuple[list[dict[str, Any]], list[dict[str, Any]]]
"""A namespace's (Policies, ToolGrants)."""


def replace_policy_stamp(conn: Connection, tenant_id: str, namespace: str) -> None:
    """Give the namespace a new stamp, inside the caller's transaction that wrote a Policy or a
    ToolGrant there: every session sees the change on its next decision (or, if the transaction
    rolls back, nothing changed)."""
    stamp = secrets.token_hex(16)
    values = {"tenant_id": tenant_id, "namespace": namespace, "stamp": stamp}
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    statement = insert(policy_stamps).values(**values)
    conn.execute(
        statement.on_conflict_do_update(index_elements=["tenant_id", "namespace"], set_={"stamp": stamp})
    )


def read_policy_stamp(conn: Connection, tenant_id: str, namespace: str) -> str | None:
    """The namespace's current stamp (None: no Policy or ToolGrant was written there since 0011)."""
    return conn.execute(
        select(policy_stamps.c.stamp).where(
            policy_stamps.c.tenant_id == tenant_id, policy_stamps.c.namespace == namespace
        )
    ).scalar()


class PolicyCache:
    """Compiled policies by (tenant, namespace, content digest), and which of them is current in
    each (tenant, namespace) by its stamp. One per gateway, shared by all of its sessions."""

    def __init__(self, size: int = CACHE_SIZE, current_size: int = CURRENT_SIZE) -> None:
        self._size = size
        self._current_size = current_size
        self._lock = threading.Lock()
        self._compiled: OrderedDict[tuple[Any, ...], CompiledPolicy] = OrderedDict()
        self._current: OrderedDict[
            tuple[str, str], tuple[str | None, CompiledPolicy, dict[str, dict[str, Any]]]
        ] = OrderedDict()
        self.loads = 0
        """How many times ``current`` read a namespace's manifests (a miss): for tests and benches."""

    def current(
        self, *, tenant: str, namespace: str, stamp: str | None, load: Callable[[], Manifests]
    ) -> tuple[CompiledPolicy, dict[str, dict[str, Any]]]:
        """The compiled policy of ``tenant``'s ``namespace`` and its grants by name, as of ``stamp``
        (read by the caller before this call): cached while the stamp is the one it was loaded
        under, else ``load``-ed (the manifests, read after the stamp) and compiled (or found
        compiled, by content)."""
        where = (tenant, namespace)
        with self._lock:
            found = self._current.get(where)
            if found is not None and found[0] == stamp:
                self._current.move_to_end(where)
                return found[1], found[2]
            self.loads += 1
        policies, grants = load()
        compiled = self.get(policies, grants, tenant=tenant, namespace=namespace)
        by_name = {m["metadata"]["name"]: m for m in grants}
        with self._lock:
            self._current[where] = (stamp, compiled, by_name)
            self._current.move_to_end(where)
            while len(self._current) > self._current_size:
                self._current.popitem(last=False)
        return compiled, by_name

    def get(
        self,
        policies: Sequence[dict[str, Any]],
        grants: Sequence[dict[str, Any]],
        *,
        tenant: str,
        namespace: str,
    ) -> CompiledPolicy:
        """The compiled policy of ``tenant``'s ``namespace`` for exactly these manifests."""
        key = (tenant, namespace, policy_version(policies, grants))
        with self._lock:
            found = self._compiled.get(key)
            if found is not None:
                self._compiled.move_to_end(key)
                return found
        # Outside the lock: another session may compile the same set meanwhile; both results are equal.
        compiled = compile_policy(policies, grants)
        with self._lock:
            self._compiled[key] = compiled
            while len(self._compiled) > self._size:
                self._compiled.popitem(last=False)
        return compiled


class RateWindows:
    """Timestamps of allowed calls per (tenant, namespace, agent or all agents, limit).

    A limit is owned by a grant or rule of one namespace (``ref.owner`` is its name there), so the
    namespace is part of the key: a same-named grant in another namespace or tenant is another limit.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str, str, str], deque[float]] = {}

    @staticmethod
    def _key(ref: RateLimitRef, tenant: str, namespace: str, agent: str) -> tuple[str, str, str, str]:
        return (tenant, namespace, agent if ref.scope == "agent" else "", ref.owner)

    def count(self, ref: RateLimitRef, *, tenant: str, namespace: str, agent: str, now: float) -> int:
        with self._lock:
            seen = self._seen.get(self._key(ref, tenant, namespace, agent))
            if not seen:
                return 0
            while seen and now - seen[0] >= ref.seconds:
                seen.popleft()
            return len(seen)

    def record(
        self, refs: Sequence[RateLimitRef], *, tenant: str, namespace: str, agent: str, now: float
    ) -> None:
        with self._lock:
            for ref in refs:
                self._seen.setdefault(self._key(ref, tenant, namespace, agent), deque()).append(now)


@functools.lru_cache(maxsize=256)
def _validator(schema_json: str) -> Draft202012Validator | str:
    """The validator of a Tool's parameters (patterns matched by RE2), or why there is none."""
    try:
        return schema_validator(json.loads(schema_json))
    except ValueError as exc:
        return str(exc)


def parameters_fault(tool: str, manifest: Mapping[str, Any] | None, args: Mapping[str, Any]) -> str | None:
    """Why ``args`` do not fit the JSON Schema the Tool ``manifest`` declares (naming the field),
    or None when they do. No manifest is no fault here (policy denies a missing tool)."""
    if manifest is None:
        return None
    spec = cast(Mapping[str, Any], manifest.get("spec") or {})
    schema = spec.get("parameters")
    if schema is None:
        return None
    validator = _validator(json.dumps(schema, sort_keys=True, separators=(",", ":")))
    if isinstance(validator, str):
        return f"tool {tool!r} declares parameters that cannot be enforced ({validator}); refused"
    try:
        if validator.is_valid(args):  # pyright: ignore[reportUnknownMemberType]
            return None
        errors = cast(Iterable[ValidationError], validator.iter_errors(args))  # pyright: ignore[reportUnknownMemberType]
        error = cast(ValidationError, best_match(errors))
    except Exception as exc:  # an unresolvable $ref, say: refused (fail closed), and journaled as such
        return f"tool {tool!r} declares parameters that cannot be evaluated ({type(exc).__name__}: {str(exc)[:200]}); refused"
    where = "/".join(str(p) for p in error.absolute_path) or "(the arguments)"
    return (
        f"the arguments of {tool!r} do not match the Tool's parameters at {where!r}: "
        f"{str(error.message)[:200]}"
    )


__all__ = [
    "POLICY_KINDS",
    "STAMP_SQL",
    "PolicyCache",
    "RateWindows",
    "metadata",
    "parameters_fault",
    "policy_stamps",
    "read_policy_stamp",
    "replace_policy_stamp",
]
