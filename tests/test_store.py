"""The store and the apply rules, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select, text, update

from bastion.api import Resource, parse_selector, validate_documents
from bastion.control import Bastion
from bastion.control.store import Principal, Store, metadata, migrate, migration_state
from bastion.control.store._tables import resources
from bastion.errors import Conflict, NotFound, ServerError

from ._docs import agent, raw, secret


def docs(*bodies: Any) -> list[Resource]:
    return validate_documents(raw(*bodies))


@pytest.fixture
def bastion(make_bastion: Callable[..., Bastion]) -> Bastion:
    return make_bastion()


@pytest.fixture
def admin(bastion: Bastion) -> Principal:
    with bastion.store.write() as conn:
        tenant = bastion.store.create_tenant(conn, "acme")
        key, token = bastion.store.create_key(conn, tenant, "k", "admin")
    principal = bastion.store.authenticate(token)
    assert principal is not None and principal.key_id == key.id
    return principal


def apply(bastion: Bastion, who: Principal, *bodies: Any) -> list[tuple[str, int, int]]:
    with bastion.store.write() as conn:
        done = bastion.resources.apply(conn, who, docs(*bodies))
    return [(a.action, a.row.generation, a.row.resource_version) for a in done]


def test_migrations_create_exactly_the_declared_schema(store: Store) -> None:
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []
    assert migration_state(store.engine)[0] == migration_state(store.engine)[1] is not None


def test_migrating_twice_is_harmless(store: Store) -> None:
    migrate(store.engine)
    current, head = migration_state(store.engine)
    assert current == head


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'b.db'}")
    try:
        with store.read() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    finally:
        store.close()


def test_apply_is_idempotent_and_generation_follows_spec(bastion: Bastion, admin: Principal) -> None:
    assert apply(bastion, admin, agent("a")) == [("created", 1, 1)]
    assert apply(bastion, admin, agent("a")) == [("unchanged", 1, 1)]
    assert apply(bastion, admin, agent("a", labels={"team": "x"})) == [("configured", 1, 2)]
    assert apply(bastion, admin, agent("a", labels={"team": "x"}, tier="T2")) == [("configured", 2, 3)]
    with bastion.store.read() as conn:
        row = bastion.resources.get(conn, admin, "Agent", "default", "a")
    assert row.status is not None and row.status["observedGeneration"] == 2
    assert row.spec["tier"] == "T2"


def test_stale_resource_version_is_a_conflict(bastion: Bastion, admin: Principal) -> None:
    apply(bastion, admin, agent("a"))
    apply(bastion, admin, agent("a", tier="T1"))
    stale = agent("a", tier="T3")
    stale["metadata"]["resourceVersion"] = "1"
    with pytest.raises(Conflict) as caught:
        apply(bastion, admin, stale)
    assert caught.value.field == "metadata.resourceVersion"
    fresh = agent("a", tier="T3")
    fresh["metadata"]["resourceVersion"] = "2"
    assert apply(bastion, admin, fresh) == [("configured", 3, 3)]


def test_resource_version_on_a_missing_resource_is_a_conflict(bastion: Bastion, admin: Principal) -> None:
    body = agent("ghost")
    body["metadata"]["resourceVersion"] = "7"
    with pytest.raises(Conflict):
        apply(bastion, admin, body)


def test_multi_document_apply_is_all_or_nothing(bastion: Bastion, admin: Principal) -> None:
    with pytest.raises(NotFound):
        apply(bastion, admin, agent("first"), agent("second", namespace="missing"))
    with bastion.store.read() as conn:
        page = bastion.resources.list(conn, admin, "Agent", None, [], limit=10, cursor=None)
    assert page.items == []


def test_stale_document_late_in_an_apply_rolls_back_earlier_ones(bastion: Bastion, admin: Principal) -> None:
    apply(bastion, admin, agent("b"))
    stale = agent("b", tier="T1")
    stale["metadata"]["resourceVersion"] = "99"
    with pytest.raises(Conflict):
        apply(bastion, admin, agent("a"), stale)
    with bastion.store.read() as conn, pytest.raises(NotFound):
        bastion.resources.get(conn, admin, "Agent", "default", "a")


def test_pagination_walks_every_item_once_with_selectors(bastion: Bastion, admin: Principal) -> None:
    with bastion.store.write() as conn:
        bastion.store.create_namespace(conn, admin.tenant_id, "zeta")
    bodies = [agent(f"a{i:02d}", labels={"parity": "even" if i % 2 == 0 else "odd"}) for i in range(23)]
    bodies += [agent(f"z{i}", namespace="zeta", labels={"parity": "even"}) for i in range(3)]
    apply(bastion, admin, *bodies)
    seen: list[str] = []
    cursor: str | None = None
    selector = parse_selector("parity=even")
    while True:
        with bastion.store.read() as conn:
            page = bastion.resources.list(conn, admin, "Agent", None, selector, limit=4, cursor=cursor)
        seen += [f"{r.namespace}/{r.name}" for r in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    expected = [f"default/a{i:02d}" for i in range(0, 23, 2)] + [f"zeta/z{i}" for i in range(3)]
    assert seen == expected


def test_a_cursor_cannot_be_reused_for_another_listing(bastion: Bastion, admin: Principal) -> None:
    apply(bastion, admin, *[agent(f"a{i}") for i in range(3)])
    with bastion.store.read() as conn:
        page = bastion.resources.list(conn, admin, "Agent", "default", [], limit=1, cursor=None)
        assert page.next_cursor is not None
        with pytest.raises(Exception, match="continue token"):
            bastion.resources.list(conn, admin, "Tool", "default", [], limit=1, cursor=page.next_cursor)
        with pytest.raises(Exception, match="continue token"):
            bastion.resources.list(conn, admin, "Agent", "default", [], limit=1, cursor="garbage!!")


def test_secret_values_are_stored_sealed(bastion: Bastion, admin: Principal) -> None:
    plaintext = "s3cr3t-value-that-must-not-be-stored"
    apply(bastion, admin, secret("db", password=plaintext))
    with bastion.store.read() as conn:
        raw_rows = conn.execute(select(resources)).mappings().all()
        row = bastion.resources.get(conn, admin, "Secret", "default", "db")
    dumped = repr([dict(r) for r in raw_rows])
    assert plaintext not in dumped
    assert plaintext.encode() not in (row.sealed or b"")
    assert bastion.resources.open_secret(row) == {"password": plaintext}


def test_a_changed_secret_value_bumps_generation_an_equal_one_does_not(
    bastion: Bastion, admin: Principal
) -> None:
    apply(bastion, admin, secret("db", password="one"))
    assert apply(bastion, admin, secret("db", password="one")) == [("unchanged", 1, 1)]
    assert apply(bastion, admin, secret("db", password="two")) == [("configured", 2, 2)]


def test_a_sealed_value_moved_to_another_secret_does_not_open(bastion: Bastion, admin: Principal) -> None:
    apply(bastion, admin, secret("a", k="value-a"), secret("b", k="value-b"))
    with bastion.store.write() as conn:
        a = bastion.resources.get(conn, admin, "Secret", "default", "a")
        conn.execute(
            update(resources)
            .where(resources.c.name == "b", resources.c.kind == "Secret")
            .values(sealed=a.sealed)
        )
    with bastion.store.read() as conn:
        b = bastion.resources.get(conn, admin, "Secret", "default", "b")
    with pytest.raises(ServerError, match="failed authentication"):
        bastion.resources.open_secret(b)


def test_concurrent_applies_of_one_resource_never_fail_or_lose_a_version(
    bastion: Bastion, admin: Principal
) -> None:
    def one(i: int) -> str:
        for _ in range(5):
            try:
                return apply(bastion, admin, agent("hot", maxTurns=i + 1))[0][0]
            except Exception as exc:  # a unique-key race on create is retried by the API layer
                if "unique" not in str(exc).lower() and "duplicate" not in str(exc).lower():
                    raise
        raise AssertionError("kept racing")

    with ThreadPoolExecutor(8) as pool:
        actions = list(pool.map(one, range(16)))
    assert actions.count("created") == 1
    with bastion.store.read() as conn:
        row = bastion.resources.get(conn, admin, "Agent", "default", "hot")
    assert row.resource_version == row.generation == 1 + actions.count("configured")
