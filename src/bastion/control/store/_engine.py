"""Engines for SQLite (WAL, one writer at a time) and PostgreSQL, and running the migrations."""

from __future__ import annotations

import json
import re
from collections.abc import Generator
from contextlib import contextmanager
from importlib import resources as importlib_resources
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.pool import QueuePool

from bastion.errors import UserError

if TYPE_CHECKING:
    from alembic.config import Config

SQLITE_BUSY_TIMEOUT_MS = 10_000


def _to_json(value: Any) -> str:
    """JSON columns as the store writes them: NaN and the infinities are not JSON, so a value
    holding one fails its statement (ValueError) instead of being stored to fail every reader."""
    return json.dumps(value, allow_nan=False)


def make_engine(url: str, *, pool_size: int = 20) -> Engine:
    """An engine for ``sqlite:///path`` or ``postgresql+psycopg://…``.

    Raises:
        UserError: the URL names another database or does not parse.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UserError(
            f"database URL {url!r} does not parse",
            field="database_url",
            hint="use sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DB",
        ) from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        # Enough pooled connections for the server's thread pool, so none is opened per request.
        engine = create_engine(
            parsed,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            poolclass=QueuePool,
            pool_size=40,
            max_overflow=10,
            json_serializer=_to_json,
        )
        _sqlite_setup(engine)
        return engine
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(
            parsed,
            pool_size=pool_size,
            max_overflow=pool_size * 2,
            pool_pre_ping=True,
            json_serializer=_to_json,
        )
    raise UserError(
        f"database {backend!r} is not supported",
        field="database_url",
        hint="use sqlite:///PATH (embedded default) or postgresql+psycopg://USER@HOST:PORT/DB",
    )


def _sqlite_setup(engine: Engine) -> None:
    """WAL, foreign keys, and transactions that take the write lock up front when they will write.

    pysqlite's own transaction handling is switched off so that a writer says ``BEGIN IMMEDIATE``:
    two deferred transactions that both upgrade to writing would otherwise fail with SQLITE_BUSY
    instead of waiting their turn.
    """

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("bastion_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


@contextmanager
def _alembic(engine: Engine) -> Generator[tuple[Config, Connection]]:
    from alembic.config import Config

    location = importlib_resources.files("bastion.control.store") / "migrations"
    config = Config()
    config.set_main_option("script_location", str(location))
    with engine.connect() as conn:
        config.attributes["connection"] = conn
        yield config, conn


_REVISION = re.compile(r"^(down_revision|revision) = (?:\"(\w+)\"|None)$", re.MULTILINE)


def _newest_revision() -> str | None:
    """The head of the migration scripts, read from their text (without importing Alembic)."""
    revisions: set[str] = set()
    replaced: set[str] = set()
    versions = importlib_resources.files("bastion.control.store") / "migrations" / "versions"
    for script in versions.iterdir():
        if script.name.endswith(".py"):
            for kind, value in _REVISION.findall(script.read_text(encoding="utf-8")):
                if value:
                    (revisions if kind == "revision" else replaced).add(value)
    heads = revisions - replaced
    return heads.pop() if len(heads) == 1 else None


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (idempotent).

    A database already at the newest revision is left alone without importing Alembic (a third
    of a second): every worker start comes through here, and a takeover can wait for one."""
    newest = _newest_revision()
    if newest is not None:
        try:
            with engine.connect() as conn:
                current = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        except DBAPIError:  # no such table yet: a new database
            current = []
        if current == [newest]:
            return
    from alembic import command

    with _alembic(engine) as (config, conn):
        command.upgrade(config, "head")
        conn.commit()


def migration_state(engine: Engine) -> tuple[str | None, str | None]:
    """The database's current revision and the newest one this code knows."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    with _alembic(engine) as (config, conn):
        current = MigrationContext.configure(conn).get_current_revision()
        head = ScriptDirectory.from_config(config).get_current_head()
        conn.rollback()
    return current, head
