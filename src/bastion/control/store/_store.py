"""The store: transactions, tenants, API keys, namespaces and idempotency records."""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Generator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, delete, exists, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from bastion.api import DEFAULT_NAMESPACE, ROLES, Clock, IdSource, RandomIds, SystemClock
from bastion.errors import Conflict, NotFound

from ._engine import make_engine, migrate, migration_state
from ._tables import api_keys, idempotency_keys, namespaces, resources, tenants

KEY_PREFIX = "bst"
IDEMPOTENCY_TTL = timedelta(hours=24)


@dataclass(frozen=True, kw_only=True)
class Principal:
    """Who is calling: an API key, its tenant and its role."""

    key_id: str
    tenant_id: str
    tenant: str
    role: str
    system: bool
    """True for keys of the system tenant, whose admins manage tenants."""
    key_name: str = ""
    """The key's name (``bastion keys create NAME``): who did it, in audit trails."""

    def at_least(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


@dataclass(frozen=True, kw_only=True)
class TenantRecord:
    id: str
    name: str
    system: bool
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class KeyRecord:
    id: str
    name: str
    role: str
    tenant: str
    created_at: datetime
    revoked_at: datetime | None


def _hash_secret(secret: str) -> str:
    # API keys carry 256 bits of entropy, so a fast hash is enough: nothing to brute-force.
    return hashlib.sha256(secret.encode()).hexdigest()


class Store:
    """All control-plane state, behind short explicit transactions.

    ``read()`` and ``write()`` hand out a connection inside a transaction; on SQLite a writer takes
    the database's single write lock up front (``BEGIN IMMEDIATE``), so writers queue instead of
    failing.
    """

    def __init__(self, engine: Engine, *, clock: Clock | None = None, ids: IdSource | None = None) -> None:
        self.engine = engine
        # SQLite has one writer at a time. Queueing writers here, in order, keeps the tail short:
        # left to SQLite's busy handler they poll with growing sleeps and newcomers overtake them.
        self._write_lock = threading.Lock() if engine.dialect.name == "sqlite" else None
        self.clock: Clock = clock or SystemClock()
        self.ids: IdSource = ids or RandomIds()

    @classmethod
    def open(cls, url: str, *, clock: Clock | None = None, ids: IdSource | None = None) -> Store:
        """Connect and migrate to the newest schema."""
        store = cls(make_engine(url), clock=clock, ids=ids)
        migrate(store.engine)
        return store

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def read(self) -> Generator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self) -> Generator[Connection]:
        if self._write_lock is None:
            with self.engine.connect().execution_options(bastion_write=True) as conn, conn.begin():
                yield conn
            return
        with (
            self._write_lock,
            self.engine.connect().execution_options(bastion_write=True) as conn,
            conn.begin(),
        ):
            yield conn

    def raw_connection(self) -> Any:
        return self.engine.raw_connection()

    @contextmanager
    def raw_write(self, raw: Any) -> Generator[Any]:
        cursor = raw.cursor()
        sqlite = self._write_lock is not None
        if self._write_lock is not None:
            self._write_lock.acquire()
        try:
            if sqlite:
                cursor.execute("BEGIN IMMEDIATE")
            yield cursor
            raw.commit()
        except BaseException:
            raw.rollback()
            raise
        finally:
            cursor.close()
            if self._write_lock is not None:
                self._write_lock.release()

    def ping(self) -> tuple[str | None, str | None]:
        """Raises if the database is unreachable; returns (current, newest) migration revisions."""
        with self.read() as conn:
            conn.execute(text("SELECT 1"))
        return migration_state(self.engine)

    # --- tenants --------------------------------------------------------------------------

    def create_tenant(self, conn: Connection, name: str, *, system: bool = False) -> TenantRecord:
        if conn.execute(select(tenants.c.id).where(tenants.c.name == name)).first() is not None:
            raise Conflict(f"tenant {name!r} already exists", field="name", hint="choose another name")
        record = TenantRecord(id=self.ids.uid(), name=name, system=system, created_at=self.clock.now())
        conn.execute(
            insert(tenants).values(id=record.id, name=name, system=system, created_at=record.created_at)
        )
        conn.execute(
            insert(namespaces).values(
                tenant_id=record.id, name=DEFAULT_NAMESPACE, created_at=record.created_at
            )
        )
        return record

    def list_tenants(self, conn: Connection) -> list[TenantRecord]:
        rows = conn.execute(select(tenants).order_by(tenants.c.name)).mappings()
        return [
            TenantRecord(id=r["id"], name=r["name"], system=r["system"], created_at=r["created_at"])
            for r in rows
        ]

    def tenant_by_name(self, conn: Connection, name: str) -> TenantRecord:
        row = conn.execute(select(tenants).where(tenants.c.name == name)).mappings().first()
        if row is None:
            raise NotFound(
                f"tenant {name!r} not found", field="tenant", hint="list tenants with `bastion tenants list`"
            )
        return TenantRecord(
            id=row["id"], name=row["name"], system=row["system"], created_at=row["created_at"]
        )

    def has_system_tenant(self, conn: Connection) -> bool:
        return bool(conn.execute(select(exists().where(tenants.c.system.is_(True)))).scalar())

    # --- API keys -------------------------------------------------------------------------

    def create_key(
        self, conn: Connection, tenant: TenantRecord, name: str, role: str
    ) -> tuple[KeyRecord, str]:
        """Create a key; the returned token is the only time its secret exists outside a hash."""
        key_id = self.ids.token(12).replace("-", "x").replace("_", "y")
        secret = self.ids.token(32)
        now = self.clock.now()
        conn.execute(
            insert(api_keys).values(
                id=key_id,
                tenant_id=tenant.id,
                name=name,
                role=role,
                secret_hash=_hash_secret(secret),
                created_at=now,
            )
        )
        record = KeyRecord(
            id=key_id, name=name, role=role, tenant=tenant.name, created_at=now, revoked_at=None
        )
        return record, f"{KEY_PREFIX}_{key_id}_{secret}"

    def list_keys(self, conn: Connection, tenant_id: str) -> list[KeyRecord]:
        query = (
            select(api_keys, tenants.c.name.label("tenant"))
            .join(tenants, tenants.c.id == api_keys.c.tenant_id)
            .where(api_keys.c.tenant_id == tenant_id)
            .order_by(api_keys.c.created_at, api_keys.c.id)
        )
        return [
            KeyRecord(
                id=r["id"],
                name=r["name"],
                role=r["role"],
                tenant=r["tenant"],
                created_at=r["created_at"],
                revoked_at=r["revoked_at"],
            )
            for r in conn.execute(query).mappings()
        ]

    def revoke_key(self, conn: Connection, tenant_id: str, key_id: str) -> None:
        result = conn.execute(
            update(api_keys)
            .where(
                api_keys.c.id == key_id, api_keys.c.tenant_id == tenant_id, api_keys.c.revoked_at.is_(None)
            )
            .values(revoked_at=self.clock.now())
        )
        if result.rowcount == 0:
            raise NotFound(
                f"API key {key_id!r} not found or already revoked",
                field="id",
                hint="list keys with `bastion keys list`",
            )

    def authenticate(self, token: str) -> Principal | None:
        """The principal a bearer token stands for, or None for a malformed, unknown or revoked one."""
        prefix, _, rest = token.partition("_")
        key_id, _, secret = rest.partition("_")
        if prefix != KEY_PREFIX or not key_id or not secret or len(token) > 200:
            return None
        with self.read() as conn:
            row = (
                conn.execute(
                    select(api_keys, tenants.c.name.label("tenant"), tenants.c.system)
                    .join(tenants, tenants.c.id == api_keys.c.tenant_id)
                    .where(api_keys.c.id == key_id)
                )
                .mappings()
                .first()
            )
        if row is None or row["revoked_at"] is not None:
            return None
        if not hmac.compare_digest(row["secret_hash"], _hash_secret(secret)):
            return None
        return Principal(
            key_id=row["id"],
            tenant_id=row["tenant_id"],
            tenant=row["tenant"],
            role=row["role"],
            system=row["system"],
            key_name=row["name"],
        )

    # --- namespaces -----------------------------------------------------------------------

    def create_namespace(self, conn: Connection, tenant_id: str, name: str) -> datetime:
        if self.namespace_exists(conn, tenant_id, name):
            raise Conflict(f"namespace {name!r} already exists", field="name", hint="choose another name")
        now = self.clock.now()
        conn.execute(insert(namespaces).values(tenant_id=tenant_id, name=name, created_at=now))
        return now

    def namespace_exists(self, conn: Connection, tenant_id: str, name: str) -> bool:
        query = select(exists().where(namespaces.c.tenant_id == tenant_id, namespaces.c.name == name))
        return bool(conn.execute(query).scalar())

    def list_namespaces(self, conn: Connection, tenant_id: str) -> list[tuple[str, datetime, int]]:
        """(name, created, resource count) per namespace."""
        counts = (
            select(resources.c.namespace, func.count().label("n"))
            .where(resources.c.tenant_id == tenant_id)
            .group_by(resources.c.namespace)
            .subquery()
        )
        query = (
            select(namespaces.c.name, namespaces.c.created_at, func.coalesce(counts.c.n, 0))
            .outerjoin(counts, counts.c.namespace == namespaces.c.name)
            .where(namespaces.c.tenant_id == tenant_id)
            .order_by(namespaces.c.name)
        )
        return [(r[0], r[1], int(r[2])) for r in conn.execute(query)]

    def delete_namespace(self, conn: Connection, tenant_id: str, name: str) -> None:
        if not self.namespace_exists(conn, tenant_id, name):
            raise NotFound(
                f"namespace {name!r} not found",
                field="name",
                hint="list namespaces with `bastion namespaces list`",
            )
        in_use = select(exists().where(resources.c.tenant_id == tenant_id, resources.c.namespace == name))
        if conn.execute(in_use).scalar():
            raise Conflict(
                f"namespace {name!r} still holds resources",
                field="name",
                hint=f"delete them first (`bastion get all -n {name}` lists them)",
            )
        conn.execute(delete(namespaces).where(namespaces.c.tenant_id == tenant_id, namespaces.c.name == name))

    # --- idempotency ----------------------------------------------------------------------

    def idempotent_response(self, conn: Connection, tenant_id: str, key: str) -> tuple[str, int, str] | None:
        """(request hash, status, body) stored for this key, if it is fresh."""
        row = (
            conn.execute(
                select(idempotency_keys).where(
                    idempotency_keys.c.tenant_id == tenant_id, idempotency_keys.c.key == key
                )
            )
            .mappings()
            .first()
        )
        if row is None or row["created_at"] < self.clock.now() - IDEMPOTENCY_TTL:
            return None
        return row["request_hash"], row["status_code"], row["response_body"]

    def remember_response(
        self, conn: Connection, tenant_id: str, key: str, request_hash: str, status: int, body: str
    ) -> None:
        """Store a response under its key (replacing an expired one).

        Raises:
            IntegrityError: a concurrent request stored the same key first; the caller retries.
        """
        conn.execute(
            delete(idempotency_keys).where(
                idempotency_keys.c.tenant_id == tenant_id,
                idempotency_keys.c.key == key,
                idempotency_keys.c.created_at < self.clock.now() - IDEMPOTENCY_TTL,
            )
        )
        conn.execute(
            insert(idempotency_keys).values(
                tenant_id=tenant_id,
                key=key,
                request_hash=request_hash,
                status_code=status,
                response_body=body,
                created_at=self.clock.now(),
            )
        )


def is_unique_violation(exc: IntegrityError) -> bool:
    text_ = str(exc.orig).lower()
    return "unique" in text_ or "duplicate key" in text_
