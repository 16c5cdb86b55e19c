"""The journal's hash chain on SQLite and PostgreSQL: every kind of tampering is found, by seq."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import delete, select, update

from bastion.control.store import Store
from bastion.observe.journal import (
    BLOB_THRESHOLD,
    GENESIS,
    Journal,
    blobs,
    canonical,
    digest,
    journal_entries,
)

RUN = "run-under-test"


def fill(store: Store, journal: Journal, count: int = 5, *, big_at: int | None = None) -> str:
    head = GENESIS
    for seq in range(1, count + 1):
        request: dict[str, Any] = {
            "method": "tool.call",
            "params": {"name": "fs.read", "args": {"path": f"f{seq}"}},
        }
        response: Any = {"content": "x" * (BLOB_THRESHOLD + 10) if seq == big_at else f"content {seq}"}
        with store.write() as conn:
            entry = journal.append(
                conn,
                run_id=RUN,
                seq=seq,
                attempt=1,
                kind="tool",
                request=request,
                request_hash=digest(canonical(request)),
                decision="allow",
                reasons=[{"rule": "grant/g", "text": "granted"}],
                response=response,
                error=None,
                started_at=datetime(2026, 1, 1, 0, 0, seq, tzinfo=UTC),
                duration_us=10 * seq,
                prev_hash=head,
            )
        head = entry.hash
    return head


@pytest.fixture
def journal(store: Store) -> Journal:
    return Journal(store)


def test_an_untouched_chain_verifies(store: Store, journal: Journal) -> None:
    head = fill(store, journal)
    verdict = journal.verify(RUN, expected_head=head, expected_count=5)
    assert verdict.ok
    assert verdict.entries == 5
    assert verdict.head == head


def test_an_edited_entry_is_named(store: Store, journal: Journal) -> None:
    fill(store, journal)
    with store.write() as conn:
        conn.execute(update(journal_entries).where(journal_entries.c.seq == 3).values(decision="deny"))
    verdict = journal.verify(RUN)
    assert not verdict.ok
    assert verdict.broken_seq == 3
    assert verdict.reason is not None and "edited" in verdict.reason


def test_an_edited_response_is_named(store: Store, journal: Journal) -> None:
    fill(store, journal)
    with store.write() as conn:
        conn.execute(
            update(journal_entries).where(journal_entries.c.seq == 2).values(response={"content": "forged"})
        )
    assert journal.verify(RUN).broken_seq == 2


def test_a_removed_entry_is_named(store: Store, journal: Journal) -> None:
    fill(store, journal)
    with store.write() as conn:
        conn.execute(delete(journal_entries).where(journal_entries.c.seq == 2))
    verdict = journal.verify(RUN)
    assert verdict.broken_seq == 3
    assert verdict.reason is not None and "removed" in verdict.reason


def test_a_removed_tail_is_caught_by_the_recorded_head(store: Store, journal: Journal) -> None:
    head = fill(store, journal)
    with store.write() as conn:
        conn.execute(delete(journal_entries).where(journal_entries.c.seq == 5))
    assert journal.verify(RUN).ok  # a chain alone cannot see a cut-off end...
    verdict = journal.verify(RUN, expected_head=head, expected_count=5)
    assert not verdict.ok  # ...the head recorded on the run can
    assert verdict.broken_seq == 5


def test_reordered_entries_are_named(store: Store, journal: Journal) -> None:
    fill(store, journal)
    with store.write() as conn:
        rows = {r["seq"]: dict(r) for r in conn.execute(select(journal_entries)).mappings()}
        conn.execute(delete(journal_entries).where(journal_entries.c.seq.in_([2, 3])))
        two, three = rows[2], rows[3]
        conn.execute(journal_entries.insert().values(**{**three, "seq": 2}))
        conn.execute(journal_entries.insert().values(**{**two, "seq": 3}))
    verdict = journal.verify(RUN)
    assert verdict.broken_seq == 2


def test_an_inserted_entry_is_named(store: Store, journal: Journal) -> None:
    fill(store, journal, 3)
    with store.write() as conn:
        rows = [
            dict(r) for r in conn.execute(select(journal_entries).order_by(journal_entries.c.seq)).mappings()
        ]
        conn.execute(delete(journal_entries))
        forged = {**rows[0], "seq": 2, "kind": "time"}
        for row in [rows[0], forged, {**rows[1], "seq": 3}, {**rows[2], "seq": 4}]:
            conn.execute(journal_entries.insert().values(**row))
    assert journal.verify(RUN).broken_seq == 2


def test_large_payloads_go_to_blobs_and_a_changed_blob_is_named(store: Store, journal: Journal) -> None:
    fill(store, journal, 3, big_at=2)
    with store.read() as conn:
        stored = conn.execute(select(journal_entries.c.response).where(journal_entries.c.seq == 2)).scalar()
        assert set(stored) == {"$blob", "size"}
    [entry] = [e for e in journal.entries(RUN) if e.seq == 2]
    assert journal.resolve(entry.response)["content"].startswith("xxx")
    assert journal.verify(RUN).ok
    with store.write() as conn:
        conn.execute(update(blobs).values(data=b'{"content":"forged"}'))
    verdict = journal.verify(RUN)
    assert verdict.broken_seq == 2
    assert verdict.reason is not None and "blob" in verdict.reason
