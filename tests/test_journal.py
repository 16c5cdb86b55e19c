"""The journal's hash chain on SQLite and PostgreSQL: every kind of tampering is found, by seq."""

from __future__ import annotations

import time
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
    entry_hash,
    journal_entries,
)

from ._agents import FINISHED, code_agent
from ._docs import raw
from .conftest import Tenant

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
        assert stored is not None and set(stored) == {"$blob", "size"}
    [entry] = [e for e in journal.entries(RUN) if e.seq == 2]
    assert journal.resolve(entry.response)["content"].startswith("xxx")
    assert journal.verify(RUN).ok
    with store.write() as conn:
        conn.execute(update(blobs).values(data=b'{"content":"forged"}'))
    verdict = journal.verify(RUN)
    assert verdict.broken_seq == 2
    assert verdict.reason is not None and "blob" in verdict.reason


# --- checkpoints: incremental verification -------------------------------------------------


def extend(store: Store, journal: Journal, head: str, first: int, last: int) -> str:
    """Append seqs ``first``..``last`` onto ``head`` (what later calls of the run do)."""
    for seq in range(first, last + 1):
        request = {"method": "time.now", "params": {"n": seq}}
        with store.write() as conn:
            head = journal.append(
                conn,
                run_id=RUN,
                seq=seq,
                attempt=1,
                kind="time",
                request=request,
                request_hash=digest(canonical(request)),
                decision="allow",
                reasons=[],
                response=f"t{seq}",
                error=None,
                started_at=datetime(2026, 1, 1, 0, 1, seq, tzinfo=UTC),
                duration_us=1,
                prev_hash=head,
            ).hash
    return head


def test_an_incremental_verify_recomputes_only_what_came_after_the_checkpoint(
    store: Store, journal: Journal
) -> None:
    head = fill(store, journal)
    assert journal.verify(RUN, full=False).verified_from == 1, "no checkpoint yet: from the start"
    head = extend(store, journal, head, 6, 8)
    verdict = journal.verify(RUN, expected_head=head, expected_count=8, full=False)
    assert (verdict.ok, verdict.entries, verdict.head, verdict.verified_from) == (True, 8, head, 6)
    # Appended after the checkpoint and then edited: caught incrementally, at its seq.
    extend(store, journal, head, 9, 10)
    with store.write() as conn:
        conn.execute(update(journal_entries).where(journal_entries.c.seq == 10).values(decision="deny"))
    broken = journal.verify(RUN, full=False)
    assert (broken.ok, broken.broken_seq, broken.verified_from) == (False, 10, 9)


def test_a_tampered_verified_entry_is_caught_by_a_full_verify(store: Store, journal: Journal) -> None:
    head = fill(store, journal)
    assert journal.verify(RUN, expected_head=head, expected_count=5).ok  # checkpoint at seq 5
    with store.write() as conn:
        conn.execute(update(journal_entries).where(journal_entries.c.seq == 3).values(decision="deny"))
    # What incremental verification does not promise: content edited under an unchanged hash,
    # before the checkpoint. It says where it started, and the full verify (the default) catches it.
    quick = journal.verify(RUN, expected_head=head, expected_count=5, full=False)
    assert quick.verified_from == 6
    verdict = journal.verify(RUN, expected_head=head, expected_count=5)
    assert (verdict.ok, verdict.broken_seq, verdict.verified_from) == (False, 3, 1)
    assert journal.verify(RUN).broken_seq == 3, "a failed verify does not move the checkpoint"


@pytest.mark.parametrize("rewrite", ["rehashed-before-checkpoint", "checkpointed-row-removed"])
def test_an_incremental_verify_catches_a_rewritten_verified_chain(
    store: Store, journal: Journal, rewrite: str
) -> None:
    head = fill(store, journal)
    assert journal.verify(RUN).ok  # checkpoint at seq 5
    extend(store, journal, head, 6, 6)
    with store.write() as conn:
        if rewrite == "checkpointed-row-removed":
            conn.execute(delete(journal_entries).where(journal_entries.c.seq >= 5))
        else:  # forge seq 5 and re-hash it, as someone hiding an edit would
            row = conn.execute(select(journal_entries).where(journal_entries.c.seq == 5)).mappings().one()
            conn.execute(
                update(journal_entries)
                .where(journal_entries.c.seq == 5)
                .values(hash=digest(row["hash"].encode()))
            )
    verdict = journal.verify(RUN, full=False)
    assert not verdict.ok
    assert verdict.broken_seq == 5


TIMES = """
from bastion import agent

def main(input):
    return [agent.now().isoformat() for _ in range(3)]
"""


def test_the_verify_routes_never_call_a_tampered_journal_verified(tenant: Tenant) -> None:
    with tenant.client() as client:
        client.apply(raw(code_agent("timer", TIMES)))
        run_id = client.create_run("timer", None)["id"]
        deadline = time.monotonic() + 60
        while client.get_run(run_id)["state"] not in FINISHED:
            assert time.monotonic() < deadline, "the run never finished"
            time.sleep(0.05)
        assert client.get_run(run_id)["state"] == "Succeeded"
        first = client.verify_run(run_id)
        assert (first["ok"], first["verifiedFrom"]) == (True, 1)
        assert first["entries"] >= 3
        with tenant.server.bastion.store.write() as conn:  # an entry verified already, edited
            conn.execute(
                update(journal_entries)
                .where(journal_entries.c.run_id == run_id, journal_entries.c.seq == 2)
                .values(decision="deny")
            )
        again = client.verify_run(run_id)
        assert (again["ok"], again["brokenSeq"], again["verifiedFrom"]) == (False, 2, 1)
        audit = {item["run"]: item for item in client.verify_all()["items"]}
        assert not audit[run_id]["ok"], "the audit verifies fully unless asked otherwise"


@pytest.mark.parametrize(
    ("request_", "response", "error"),
    [
        (
            {"method": "tool.call", "params": {"name": "fs.read", "args": {"path": "é/日本/\u2028"}}},
            "ok",
            None,
        ),
        ({"method": "random.random", "params": {}}, 0.1 + 0.2, None),
        (
            {"method": "tool.call", "params": {"b": [1, 2.5, None, True], "a": {"z": 1, "y": -0}}},
            None,
            {"type": "x"},
        ),
        (
            {"method": "tool.call", "params": {"big": "x" * (BLOB_THRESHOLD + 1)}},
            {"r": "y" * BLOB_THRESHOLD},
            None,
        ),
        (
            {"method": "tool.call", "params": {"n": 10**30, "e": 1e16, "q": '"\\\n\t'}},
            [],
            {"k": {"nested": []}},
        ),
    ],
)
def test_prepare_hashes_exactly_what_verify_recomputes(request_: Any, response: Any, error: Any) -> None:
    prepared = Journal.prepare(
        run_id="r-ü",
        seq=7,
        attempt=2,
        kind="tool",
        request=request_,
        request_hash=digest(canonical(request_)),
        decision="allow",
        reasons=[{"rule": "grant/g", "text": "granted — ok", "policy": "v1"}],
        response=response,
        error=error,
        started_at=datetime(2026, 1, 1, 0, 0, 0, 123, tzinfo=UTC),
        duration_us=42,
        prev_hash="ab" * 32,
    )
    entry = prepared.entry
    assert entry.hash == entry_hash("ab" * 32, entry.hashed_fields())
    assert prepared.request_json == canonical(entry.request).decode()
    assert prepared.response_json == (None if entry.response is None else canonical(entry.response).decode())
    assert prepared.error_json == (None if error is None else canonical(error).decode())
    given = Journal.prepare(
        run_id="r-ü",
        seq=7,
        attempt=2,
        kind="tool",
        request=request_,
        request_hash=digest(canonical(request_)),
        decision="allow",
        reasons=[{"rule": "grant/g", "text": "granted — ok", "policy": "v1"}],
        response=response,
        error=error,
        started_at=datetime(2026, 1, 1, 0, 0, 0, 123, tzinfo=UTC),
        duration_us=42,
        prev_hash="ab" * 32,
        request_text=canonical(request_).decode(),  # as the gateway hands it over
    )
    assert (given.entry, given.request_json, given.blobs) == (entry, prepared.request_json, prepared.blobs)


@pytest.mark.parametrize("removed", [1, 3])
def test_an_incremental_verify_catches_a_verified_entry_removed_without_rehashing(
    store: Store, journal: Journal, removed: int
) -> None:
    # A tamperer deletes one already verified row (a denied call it wants gone) and touches
    # nothing else: the row at the checkpoint, its hash and the run's count and head all stand.
    head = fill(store, journal)
    assert journal.verify(RUN, expected_head=head, expected_count=5).ok  # checkpoint at seq 5
    with store.write() as conn:
        conn.execute(delete(journal_entries).where(journal_entries.c.seq == removed))
    verdict = journal.verify(RUN, expected_head=head, expected_count=5, full=False)
    assert not verdict.ok, "a removed verified entry must not be called verified"
    assert verdict.broken_seq == removed
    assert not journal.verify(RUN, expected_head=head, expected_count=5).ok, "and the full verify agrees"
