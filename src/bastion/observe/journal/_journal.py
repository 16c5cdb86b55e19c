"""The journal: one hash-chained row per gateway call, per run (DESIGN invariants 4 and 5).

A row's hash covers the previous row's hash and every stored field, so editing, removing,
inserting or reordering rows breaks the chain at a seq that ``verify`` names.

Verifying costs tens of microseconds per entry, so ``verify`` keeps a checkpoint per run: the
last (seq, head) a *full* verification found intact. An *incremental* verification
(``full=False``) recomputes only the entries after it, chained onto its head, and checks that
the row at the checkpoint still carries that head and that every row before it is still there
(counted, not hashed). What that guarantees, and what it does not:
the entries after the checkpoint are intact, and no rewrite of the chain up to the checkpoint
that recomputed its hashes (an insertion, removal, reorder, or an edit re-hashed to hide it) went
unnoticed; an edit of an already verified row's *content* that leaves its hash column alone, or
a change of the checkpoint itself, is caught only by a full verification. So the explicit verify
routes verify fully, and only a caller that says so takes the incremental path. Payloads larger than
``BLOB_THRESHOLD`` bytes go to the content-addressed ``blobs`` table and the row holds a
``{"$blob": digest, "size": n}`` reference, so rows stay small and replay stays fast.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from bastion.api import Clock, SystemClock
from bastion.observe._db import Database

from ._canonical import GENESIS, canonical, canonical_scalar, canonical_text, digest
from ._tables import blobs, journal_checkpoints, journal_entries

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


_HASHED = (
    "run_id",
    "seq",
    "attempt",
    "kind",
    "request",
    "request_hash",
    "decision",
    "reasons",
    "response",
    "error",
    "started_at",
    "duration_us",
)
_KEYS = [(name, canonical_text(name) + ":") for name in sorted(_HASHED)]
"""``Entry.hashed_fields``' keys in canonical (sorted) order, each as it opens its member."""


def _composed(pieces: dict[str, str]) -> str:
    """``canonical(fields)`` (as text) from the canonical text of each field's value: compact
    JSON encodes a nested value exactly as it encodes it alone, so the members can be joined in
    key order instead of encoding the payloads a second time."""
    return "{" + ",".join(key + pieces[name] for name, key in _KEYS) + "}"


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
    also: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    """Statements (qmark placeholders, portable SQL) written in the entry's transaction, after it:
    a model call's budget settlement. A writer that cannot write them must not write the entry."""


@dataclass(frozen=True, kw_only=True)
class Verdict:
    run_id: str
    ok: bool
    entries: int
    head: str
    broken_seq: int | None = None
    reason: str | None = None
    verified_from: int = 1
    """The first seq whose hash this verification recomputed: 1 for a full one; past the stored
    checkpoint for an incremental one (``entries + 1`` when nothing was new)."""


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
        request_text: str | None = None,
    ) -> Prepared:
        """Hash an entry and encode its payloads, touching no database (the gateway's hot path).
        Each payload is encoded once: the same bytes are stored and hashed (``_composed``);
        ``request_text``, when given, is ``canonical_text(request)`` already made by the caller."""
        found: list[tuple[str, bytes]] = []

        def stored(value: Any, text: str | None = None) -> tuple[Any, str]:
            if value is None:
                return None, "null"
            if text is None:
                text = canonical_text(value)
            if len(text) * 4 <= BLOB_THRESHOLD:  # UTF-8 takes at most 4 bytes a character
                return value, text
            data = text.encode()
            if len(data) <= BLOB_THRESHOLD:
                return value, text
            key = digest(data)
            found.append((key, data))
            ref = {"$blob": key, "size": len(data)}
            return ref, canonical_text(ref)

        request_value, request_text = stored(request, request_text)
        response_value, response_text = stored(response)
        error_text = canonical_text(error) if error is not None else "null"
        reasons_text = canonical_text(reasons)
        pieces = {
            "run_id": canonical_scalar(run_id),
            "seq": canonical_scalar(seq),
            "attempt": canonical_scalar(attempt),
            "kind": canonical_scalar(kind),
            "request": request_text,
            "request_hash": canonical_scalar(request_hash),
            "decision": canonical_scalar(decision),
            "reasons": reasons_text,
            "response": response_text,
            "error": error_text,
            "started_at": canonical_scalar(started_at.isoformat()),
            "duration_us": canonical_scalar(duration_us),
        }
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
            hash=digest(f"{prev_hash}\n{_composed(pieces)}".encode()),
        )
        return Prepared(
            entry=entry,
            request_json=request_text,
            reasons_json=reasons_text,
            response_json=None if response_value is None else response_text,
            error_json=None if error is None else error_text,
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
        self,
        run_id: str,
        *,
        expected_head: str | None = None,
        expected_count: int | None = None,
        full: bool = True,
    ) -> Verdict:
        """Recompute the chain; name the first seq where it breaks. A verification that finds the
        chain intact moves the run's checkpoint to its head.

        Args:
            expected_head: the head hash recorded when the run finished, if it did: catches rows cut
                off the end, which a chain alone cannot.
            expected_count: the number of entries recorded when the run finished.
            full: recompute every entry (the default); False: only those after the run's
                checkpoint (see the module's docstring for what that does not catch).
        """
        with self._db.read() as conn:
            stored = self._checkpoint(conn, run_id)
            checkpoint = None if full else stored
            start, prev = (0, GENESIS) if checkpoint is None else checkpoint
            query = select(journal_entries).where(journal_entries.c.run_id == run_id)
            if start:
                query = query.where(journal_entries.c.seq >= start)
            entries = [_entry(r) for r in conn.execute(query.order_by(journal_entries.c.seq)).mappings()]
            anchor = entries[0] if start and entries and entries[0].seq == start else None
            if start and anchor is None:
                return Verdict(
                    run_id=run_id,
                    ok=False,
                    entries=start - 1 + len(entries),
                    head=prev,
                    broken_seq=start,
                    reason=f"seq {start}, verified before, is gone (removed since)",
                    verified_from=start,
                )
            if anchor is not None:
                if anchor.hash != prev:
                    return Verdict(
                        run_id=run_id,
                        ok=False,
                        entries=start - 1 + len(entries),
                        head=prev,
                        broken_seq=start,
                        reason="its hash is not the one verified before (the chain was rewritten since)",
                        verified_from=start,
                    )
                entries = entries[1:]
                gone = self._gap_before(conn, run_id, start)
                if gone is not None:
                    return Verdict(
                        run_id=run_id,
                        ok=False,
                        entries=start + len(entries),
                        head=prev,
                        broken_seq=gone,
                        reason=f"seq {gone}, verified before, is gone or moved (removed or inserted since)",
                        verified_from=start,
                    )
            count = start + len(entries)
            for position, entry in enumerate(entries, start=start + 1):
                broken = self._check(conn, entry, position, prev)
                if broken is not None:
                    return Verdict(
                        run_id=run_id,
                        ok=False,
                        entries=count,
                        head=prev,
                        broken_seq=entry.seq,
                        reason=broken,
                        verified_from=start + 1,
                    )
                prev = entry.hash
        if expected_count is not None and count != expected_count:
            seq = min(count, expected_count) + 1
            return Verdict(
                run_id=run_id,
                ok=False,
                entries=count,
                head=prev,
                broken_seq=seq,
                reason=f"the run recorded {expected_count} entries, the journal holds {count}",
                verified_from=start + 1,
            )
        if expected_head is not None and prev != expected_head:
            return Verdict(
                run_id=run_id,
                ok=False,
                entries=count,
                head=prev,
                broken_seq=count or 1,
                reason="the last entry's hash is not the head recorded when the run finished",
                verified_from=start + 1,
            )
        if count > (0 if stored is None else stored[0]):
            self._save_checkpoint(run_id, count, prev)
        return Verdict(run_id=run_id, ok=True, entries=count, head=prev, verified_from=start + 1)

    @staticmethod
    def _gap_before(conn: Connection, run_id: str, start: int) -> int | None:
        """The first seq below ``start`` that is not where a verified chain had it (None: rows 1 to
        ``start - 1`` are all there). Incremental verification recomputes none of them, so a row
        deleted from among them would break no hash it reads: it counts them (an index range,
        not a hash each)."""
        below = journal_entries.c.seq < start
        where = (journal_entries.c.run_id == run_id, below)
        count, lowest = conn.execute(
            select(func.count(), func.min(journal_entries.c.seq)).where(*where)
        ).one()
        if int(count) == start - 1 and (start == 1 or int(lowest) == 1):
            return None
        seqs = conn.execute(
            select(journal_entries.c.seq).where(*where).order_by(journal_entries.c.seq)
        ).scalars()
        for expected, seq in enumerate(seqs, start=1):
            if seq != expected:
                return expected
        return int(count) + 1

    @staticmethod
    def _checkpoint(conn: Connection, run_id: str) -> tuple[int, str] | None:
        row = conn.execute(
            select(journal_checkpoints.c.seq, journal_checkpoints.c.head).where(
                journal_checkpoints.c.run_id == run_id
            )
        ).first()
        return None if row is None else (int(row[0]), str(row[1]))

    def _save_checkpoint(self, run_id: str, seq: int, head: str) -> None:
        """Move the run's checkpoint to (seq, head), never backwards (a concurrent verification
        may have gone further)."""
        values = {"run_id": run_id, "seq": seq, "head": head, "verified_at": self._clock.now()}
        with self._db.write() as conn:
            insert_ = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
            statement = insert_(journal_checkpoints).values(**values)
            conn.execute(
                statement.on_conflict_do_update(
                    index_elements=["run_id"],
                    set_={"seq": seq, "head": head, "verified_at": values["verified_at"]},
                    where=journal_checkpoints.c.seq < seq,
                )
            )

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
