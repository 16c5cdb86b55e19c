"""The journal: one hash-chained row per gateway call, per run (DESIGN invariants 4 and 5).

A row's hash covers the previous row's hash and every stored field, so editing, removing,
inserting or reordering rows breaks the chain at a seq that ``verify`` names. Payloads larger than
``BLOB_THRESHOLD`` bytes go to the content-addressed ``blobs`` table and the row holds a
``{"$blob": digest, "size": n}`` reference, so rows stay small and replay stays fast.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, insert, select
from sqlalchemy.dialects import postgresql, sqlite

from bastion.api import Clock, SystemClock
from bastion.observe._db import Database

from ._canonical import GENESIS, canonical, digest
from ._tables import blobs, journal_entries

BLOB_THRESHOLD = 8 * 1024


@dataclass(frozen=True, kw_only=True)
class Entry:
    run_id: str
    seq: int
    attempt: int
    kind: str
    request: Any
    request_hash: str
    decision: str
    reasons: list[dict[str, str]]
    """``{"rule": id, "text": sentence}`` per deciding rule."""
    response: Any
    error: dict[str, Any] | None
    started_at: datetime
    duration_us: int
    prev_hash: str
    hash: str

    def hashed_fields(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "seq": self.seq,
            "attempt": self.attempt,
            "kind": self.kind,
            "request": self.request,
            "request_hash": self.request_hash,
            "decision": self.decision,
            "reasons": self.reasons,
            "response": self.response,
            "error": self.error,
            "started_at": self.started_at.isoformat(),
            "duration_us": self.duration_us,
        }


def _entry(row: Any) -> Entry:
    values: dict[str, Any] = {k: row[k] for k in Entry.__dataclass_fields__}
    return Entry(**values)


def entry_hash(prev_hash: str, fields: dict[str, Any]) -> str:
    return digest(prev_hash.encode() + b"\n" + canonical(fields))


@dataclass(frozen=True, kw_only=True)
class Prepared:
    """An entry ready to be written: hashed, its payloads JSON-encoded once, large ones as blobs."""

    entry: Entry
    request_json: str
    reasons_json: str
    response_json: str | None
    error_json: str | None
    blobs: list[tuple[str, bytes]]
    """(digest, canonical JSON bytes) of payloads moved out of the row."""


@dataclass(frozen=True, kw_only=True)
class Verdict:
    run_id: str
    ok: bool
    entries: int
    head: str
    broken_seq: int | None = None
    reason: str | None = None


class Journal:
    def __init__(self, db: Database, clock: Clock | None = None) -> None:
        self._db = db
        self._clock = clock or SystemClock()
        dialect = db.engine.dialect.name
        self._insert_blob = (
            sqlite.insert(blobs).on_conflict_do_nothing()
            if dialect == "sqlite"
            else postgresql.insert(blobs).on_conflict_do_nothing()
        )

    @staticmethod
    def prepare(
        *,
        run_id: str,
        seq: int,
        attempt: int,
        kind: str,
        request: Any,
        request_hash: str,
        decision: str,
        reasons: list[dict[str, str]],
        response: Any,
        error: dict[str, Any] | None,
        started_at: datetime,
        duration_us: int,
        prev_hash: str,
    ) -> Prepared:
        """Hash an entry and encode its payloads, touching no database (the gateway's hot path)."""
        found: list[tuple[str, bytes]] = []

        def stored(value: Any) -> tuple[Any, str | None]:
            if value is None:
                return None, None
            data = canonical(value)
            if len(data) <= BLOB_THRESHOLD:
                return value, data.decode()
            key = digest(data)
            found.append((key, data))
            ref = {"$blob": key, "size": len(data)}
            return ref, canonical(ref).decode()

        request_value, request_json = stored(request)
        response_value, response_json = stored(response)
        error_json = canonical(error).decode() if error is not None else None
        entry = Entry(
            run_id=run_id,
            seq=seq,
            attempt=attempt,
            kind=kind,
            request=request_value,
            request_hash=request_hash,
            decision=decision,
            reasons=reasons,
            response=response_value,
            error=error,
            started_at=started_at,
            duration_us=duration_us,
            prev_hash=prev_hash,
            hash="",
        )
        entry = replace(entry, hash=entry_hash(prev_hash, entry.hashed_fields()))
        assert request_json is not None
        return Prepared(
            entry=entry,
            request_json=request_json,
            reasons_json=canonical(reasons).decode(),
            response_json=response_json,
            error_json=error_json,
            blobs=found,
        )

    def append(
        self,
        conn: Connection,
        *,
        run_id: str,
        seq: int,
        attempt: int,
        kind: str,
        request: Any,
        request_hash: str,
        decision: str,
        reasons: list[dict[str, str]],
        response: Any,
        error: dict[str, Any] | None,
        started_at: datetime,
        duration_us: int,
        prev_hash: str,
    ) -> Entry:
        """Add one entry inside the caller's write transaction (which has already checked the fence).

        The readable reference of the write; the gateway's hot path writes the same rows from
        ``prepare``'s output with prebuilt SQL (``bastion.execution.runs.StepWriter``).
        """
        prepared = self.prepare(
            run_id=run_id,
            seq=seq,
            attempt=attempt,
            kind=kind,
            request=request,
            request_hash=request_hash,
            decision=decision,
            reasons=reasons,
            response=response,
            error=error,
            started_at=started_at,
            duration_us=duration_us,
            prev_hash=prev_hash,
        )
        now = self._clock.now()
        for key, data in prepared.blobs:
            conn.execute(
                self._insert_blob.values(
                    digest=key, size=len(data), data=data, created_at=now, media_type="application/json"
                )
            )
        conn.execute(insert(journal_entries).values(**prepared.entry.__dict__))
        return prepared.entry

    def copy_prefix(self, conn: Connection, source: list[Entry], *, run_id: str, upto: int) -> int:
        """Give a new run the first ``upto`` entries of another, re-chained under its own id (a
        fork): its first attempt replays them and goes live after. Returns the count copied."""
        head = GENESIS
        copied = 0
        for entry in source[:upto]:
            new = self.append(
                conn,
                run_id=run_id,
                seq=entry.seq,
                attempt=0,
                kind=entry.kind,
                request=entry.request,
                request_hash=entry.request_hash,
                decision=entry.decision,
                reasons=entry.reasons,
                response=entry.response,
                error=entry.error,
                started_at=entry.started_at,
                duration_us=entry.duration_us,
                prev_hash=head,
            )
            head, copied = new.hash, copied + 1
        return copied

    def entries(self, run_id: str, *, conn: Connection | None = None) -> list[Entry]:
        """Every entry of a run in seq order, as stored (blob references not resolved)."""
        query = (
            select(journal_entries).where(journal_entries.c.run_id == run_id).order_by(journal_entries.c.seq)
        )
        if conn is not None:
            rows = conn.execute(query).mappings().all()
        else:
            with self._db.read() as own:
                rows = own.execute(query).mappings().all()
        return [_entry(row) for row in rows]

    def resolve(self, value: Any, *, conn: Connection | None = None) -> Any:
        """A stored payload with its blob reference (if any) replaced by the blob's content."""
        if not isinstance(value, dict):
            return value
        ref = cast(dict[str, Any], value)
        if "$blob" not in ref:
            return ref
        key = str(ref["$blob"])
        query = select(blobs.c.data).where(blobs.c.digest == key)
        if conn is not None:
            data = conn.execute(query).scalar()
        else:
            with self._db.read() as own:
                data = own.execute(query).scalar()
        if data is None:
            raise LookupError(f"blob {key} is missing")
        return json.loads(bytes(data))

    def verify(
        self, run_id: str, *, expected_head: str | None = None, expected_count: int | None = None
    ) -> Verdict:
        """Recompute the chain; name the first seq where it breaks.

        Args:
            expected_head: the head hash recorded when the run finished, if it did: catches rows cut
                off the end, which a chain alone cannot.
            expected_count: the number of entries recorded when the run finished.
        """
        with self._db.read() as conn:
            entries = self.entries(run_id, conn=conn)
            prev = GENESIS
            for position, entry in enumerate(entries, start=1):
                broken = self._check(conn, entry, position, prev)
                if broken is not None:
                    return Verdict(
                        run_id=run_id,
                        ok=False,
                        entries=len(entries),
                        head=prev,
                        broken_seq=entry.seq,
                        reason=broken,
                    )
                prev = entry.hash
        if expected_count is not None and len(entries) != expected_count:
            seq = min(len(entries), expected_count) + 1
            return Verdict(
                run_id=run_id,
                ok=False,
                entries=len(entries),
                head=prev,
                broken_seq=seq,
                reason=f"the run recorded {expected_count} entries, the journal holds {len(entries)}",
            )
        if expected_head is not None and prev != expected_head:
            return Verdict(
                run_id=run_id,
                ok=False,
                entries=len(entries),
                head=prev,
                broken_seq=entries[-1].seq if entries else 1,
                reason="the last entry's hash is not the head recorded when the run finished",
            )
        return Verdict(run_id=run_id, ok=True, entries=len(entries), head=prev)

    def _check(self, conn: Connection, entry: Entry, position: int, prev: str) -> str | None:
        if entry.seq != position:
            return f"expected seq {position} here, found seq {entry.seq} (an entry was removed or inserted)"
        if entry.prev_hash != prev:
            return "its previous-hash does not match the entry before it (removed, inserted or reordered)"
        if entry_hash(prev, entry.hashed_fields()) != entry.hash:
            return "its content does not match its hash (edited)"
        for payload in (entry.request, entry.response):
            if isinstance(payload, dict) and "$blob" in payload:
                key = str(cast(dict[str, Any], payload)["$blob"])
                data = conn.execute(select(blobs.c.data).where(blobs.c.digest == key)).scalar()
                if data is None or digest(bytes(data)) != key:
                    return f"blob {key[:12]}… is missing or altered"
        return None
