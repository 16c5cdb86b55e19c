"""What the lower planes need of a database: short transactions on a SQLAlchemy engine.

``bastion.control.store.Store`` implements this; planes below control take it as a parameter
instead of importing the store, so imports keep flowing downward (DESIGN §4).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Connection, DateTime, Engine
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class Database(Protocol):
    engine: Engine

    def read(self) -> AbstractContextManager[Connection]:
        """A connection in a read transaction."""
        ...

    def write(self) -> AbstractContextManager[Connection]:
        """A connection in a write transaction (on SQLite, holding the single write lock)."""
        ...

    def raw_connection(self) -> Any:
        """A DBAPI connection of the pool, for a writer that holds one (close it to give it back)."""
        ...

    def raw_write(self, raw: Any) -> AbstractContextManager[Any]:
        """A DBAPI cursor on ``raw`` inside a write transaction, committed at the end of the block
        (rolled back on an exception); on SQLite it holds the single write lock, like ``write``."""
        ...


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite keeps no zone, so it is put back on read)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a Timestamp column")
        return (
            value.astimezone(UTC) if dialect.name != "sqlite" else value.astimezone(UTC).replace(tzinfo=None)
        )

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
