"""Control-plane persistence: SQLite (WAL) by default, PostgreSQL by URL; schema by Alembic."""

from ._engine import make_engine, migrate, migration_state
from ._resources import Page, ResourceRow, delete_row, get_row, insert_row, list_rows, update_row
from ._store import KeyRecord, Principal, Store, TenantRecord, is_unique_violation
from ._tables import metadata

__all__ = [
    "KeyRecord",
    "Page",
    "Principal",
    "ResourceRow",
    "Store",
    "TenantRecord",
    "delete_row",
    "get_row",
    "insert_row",
    "is_unique_violation",
    "list_rows",
    "make_engine",
    "metadata",
    "migrate",
    "migration_state",
    "update_row",
]
