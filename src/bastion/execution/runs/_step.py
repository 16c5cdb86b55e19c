"""One gateway step in one transaction: fence, blobs, the journal entry, the run's events, and
what the entry carries (``Prepared.also``: a model call's budget settlement).

This is on the path of every call an agent makes, so it runs prebuilt SQL on a DBAPI cursor:
measured with bench/journal.py, SQLAlchemy's per-statement building cost several times the
database work itself, and a pool checkout per call (with PostgreSQL's pre-ping round trip) cost
as much again, so an attempt holds one connection for its calls. The semantics are those of
``RunStore.fence`` followed by ``Journal.append`` and ``RunStore.add_events``, which stay the
readable reference.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from bastion.errors import LeaseLost
from bastion.observe import Database
from bastion.observe.journal import Prepared

from ._states import ACTIVE, FINISHED

_FENCE = "SELECT attempt, lease_owner, state FROM runs WHERE id = ?"
_BLOB = (
    "INSERT INTO blobs (digest, size, data, created_at, media_type) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (digest) DO NOTHING"
)
_ENTRY = (
    "INSERT INTO journal_entries (run_id, seq, attempt, kind, request, request_hash, decision, reasons, "
    "response, error, started_at, duration_us, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_EVENT = "INSERT INTO run_events (run_id, type, data, at) VALUES (?, ?, ?, ?)"
_RENEW = (
    "UPDATE runs SET lease_expires_at = ? "
    "WHERE id = ? AND attempt = ? AND lease_owner = ? AND state IN (?, ?)"
)
_ACTIVE_STATES = tuple(sorted(str(s) for s in ACTIVE))
_FINISHED_STATES = frozenset(str(s) for s in FINISHED)

# PostgreSQL: the whole step as one statement, one round trip, on a held connection in autocommit.
# Every insert hangs off the fence row, so a lost lease writes nothing and returns 0 entries.
_PG_STEP = """
WITH fence AS (
    SELECT id FROM runs
    WHERE id = %(run)s AND attempt = %(attempt)s AND lease_owner = %(owner)s AND state <> ALL(%(finished)s)
    FOR UPDATE
), blob AS (
    INSERT INTO blobs (digest, size, data, created_at, media_type)
    SELECT b.digest, b.size, b.data, %(at)s, 'application/json'
    FROM unnest(%(blob_digests)s::text[], %(blob_sizes)s::int[], %(blob_data)s::bytea[]) AS b(digest, size, data)
    WHERE EXISTS (SELECT 1 FROM fence)
    ON CONFLICT (digest) DO NOTHING
), entry AS (
    INSERT INTO journal_entries (run_id, seq, attempt, kind, request, request_hash, decision, reasons,
                                 response, error, started_at, duration_us, prev_hash, hash)
    SELECT id, %(seq)s, %(attempt)s, %(kind)s, %(request)s::json, %(request_hash)s, %(decision)s,
           %(reasons)s::json, %(response)s::json, %(error)s::json, %(started_at)s, %(duration_us)s,
           %(prev_hash)s, %(hash)s
    FROM fence
    RETURNING run_id
), event AS (
    INSERT INTO run_events (run_id, type, data, at)
    SELECT entry.run_id, e.type, e.data::json, %(at)s
    FROM entry, unnest(%(event_types)s::text[], %(event_data)s::text[]) WITH ORDINALITY AS e(type, data, n)
    ORDER BY e.n
)
SELECT count(*) FROM entry
"""

Events = list[tuple[str, dict[str, Any]]]


class StepWriter:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._postgres = db.engine.dialect.name == "postgresql"
        # psycopg takes %s and passes JSON text as an untyped value the json columns accept.
        mark = "%s" if self._postgres else "?"
        self._fence = _FENCE.replace("?", mark) + (" FOR UPDATE" if self._postgres else "")
        self._blob = _BLOB.replace("?", mark)
        self._entry = _ENTRY.replace("?", mark)
        self._event = _EVENT.replace("?", mark)
        self._renew = _RENEW.replace("?", mark)

    def _stamp(self, at: datetime) -> Any:
        # SQLAlchemy's SQLite DateTime format, so rows read back exactly as Core-written ones.
        return at if self._postgres else at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")

    @contextmanager
    def held(self) -> Generator[HeldStepWriter]:
        """A writer on one DBAPI connection held for an attempt (one thread uses it)."""
        raw = self.db.raw_connection()
        try:
            yield HeldStepWriter(self, raw)
        finally:
            if self._postgres:
                raw.driver_connection.autocommit = False  # as the pool expects it back
            raw.close()

    def pg_step(
        self,
        raw: Any,
        *,
        run_id: str,
        attempt: int,
        owner: str,
        prepared: Prepared,
        events: Events,
        at: datetime,
    ) -> None:
        """PostgreSQL: the step as one statement on ``raw`` (autocommit): one round trip."""
        entry = prepared.entry
        params = {
            "run": run_id,
            "attempt": attempt,
            "owner": owner,
            "finished": sorted(_FINISHED_STATES),
            "at": at,
            "blob_digests": [key for key, _ in prepared.blobs],
            "blob_sizes": [len(data) for _, data in prepared.blobs],
            "blob_data": [data for _, data in prepared.blobs],
            "seq": entry.seq,
            "kind": entry.kind,
            "request": prepared.request_json,
            "request_hash": entry.request_hash,
            "decision": entry.decision,
            "reasons": prepared.reasons_json,
            "response": prepared.response_json,
            "error": prepared.error_json,
            "started_at": entry.started_at,
            "duration_us": entry.duration_us,
            "prev_hash": entry.prev_hash,
            "hash": entry.hash,
            "event_types": [kind for kind, _ in events],
            "event_data": [json.dumps(data, separators=(",", ":")) for _, data in events],
        }
        cursor = raw.cursor()
        try:
            if not prepared.also:
                cursor.execute(_PG_STEP, params)
                row = cursor.fetchone()
            else:  # the step and what the entry carries (a model call's settlement): one transaction
                with raw.driver_connection.transaction():
                    cursor.execute(_PG_STEP, params)
                    row = cursor.fetchone()
                    if row is None or row[0] != 1:
                        raise LeaseLost(f"attempt {attempt} of run {run_id} no longer holds its lease")
                    for sql, values in prepared.also:
                        cursor.execute(sql.replace("?", "%s"), values)
        finally:
            cursor.close()
        if row is None or row[0] != 1:
            raise LeaseLost(f"attempt {attempt} of run {run_id} no longer holds its lease")

    def commit(
        self,
        *,
        run_id: str,
        attempt: int,
        owner: str,
        prepared: Prepared | None,
        events: Events,
        at: datetime,
    ) -> None:
        """Write the step in its own transaction, or raise LeaseLost (writing nothing) if this
        attempt no longer holds the run."""
        with self.db.write() as conn:
            cursor: Any = conn.connection.cursor()
            try:
                self.write_on(
                    cursor,
                    run_id=run_id,
                    attempt=attempt,
                    owner=owner,
                    prepared=prepared,
                    events=events,
                    at=at,
                )
            finally:
                cursor.close()

    def write_on(
        self,
        cursor: Any,
        *,
        run_id: str,
        attempt: int,
        owner: str,
        prepared: Prepared | None,
        events: Events,
        at: datetime,
    ) -> None:
        """The step's statements on ``cursor``, inside the caller's write transaction."""
        stamp = self._stamp(at)
        cursor.execute(self._fence, (run_id,))
        row = cursor.fetchone()
        if row is None or row[0] != attempt or row[1] != owner or row[2] in _FINISHED_STATES:
            raise LeaseLost(f"attempt {attempt} of run {run_id} no longer holds its lease")
        if prepared is not None:
            for key, data in prepared.blobs:
                cursor.execute(self._blob, (key, len(data), data, stamp, "application/json"))
            entry = prepared.entry
            cursor.execute(
                self._entry,
                (
                    entry.run_id,
                    entry.seq,
                    entry.attempt,
                    entry.kind,
                    prepared.request_json,
                    entry.request_hash,
                    entry.decision,
                    prepared.reasons_json,
                    prepared.response_json,
                    prepared.error_json,
                    self._stamp(entry.started_at),
                    entry.duration_us,
                    entry.prev_hash,
                    entry.hash,
                ),
            )
        rows = [(run_id, kind, json.dumps(data, separators=(",", ":")), stamp) for kind, data in events]
        if len(rows) == 1:
            cursor.execute(self._event, rows[0])  # psycopg's executemany costs a pipeline round trip more
        elif rows:
            cursor.executemany(self._event, rows)
        if prepared is not None:
            for sql, values in prepared.also:
                cursor.execute(sql.replace("?", "%s") if self._postgres else sql, values)

    def renew_on(
        self, raw: Any, autocommit: bool, *, run_id: str, attempt: int, owner: str, expires: datetime
    ) -> bool:
        """``HeldStepWriter.renew`` on ``raw`` (in autocommit on PostgreSQL)."""
        params = (self._stamp(expires), run_id, attempt, owner, *_ACTIVE_STATES)
        if autocommit:
            cursor = raw.cursor()
            try:
                cursor.execute(self._renew, params)
                return cursor.rowcount == 1
            finally:
                cursor.close()
        with self.db.raw_write(raw) as cursor:
            cursor.execute(self._renew, params)
            return cursor.rowcount == 1


class HeldStepWriter:
    """``StepWriter.commit`` on a connection held for one attempt."""

    def __init__(self, writer: StepWriter, raw: Any) -> None:
        self._writer = writer
        self._raw = raw
        self._one_statement = writer.db.engine.dialect.name == "postgresql"
        if self._one_statement:
            raw.driver_connection.autocommit = True

    def commit(
        self,
        *,
        run_id: str,
        attempt: int,
        owner: str,
        prepared: Prepared,
        events: Events,
        at: datetime,
    ) -> None:
        if self._one_statement:
            self._writer.pg_step(
                self._raw,
                run_id=run_id,
                attempt=attempt,
                owner=owner,
                prepared=prepared,
                events=events,
                at=at,
            )
            return
        with self._writer.db.raw_write(self._raw) as cursor:
            self._writer.write_on(
                cursor, run_id=run_id, attempt=attempt, owner=owner, prepared=prepared, events=events, at=at
            )

    def first(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """The first row of one read statement (qmark placeholders) on the held connection,
        outside any transaction (SQLite without BEGIN; PostgreSQL in autocommit): no write lock,
        no commit, no pool checkout."""
        if self._one_statement:
            sql = sql.replace("?", "%s")
        cursor = self._raw.cursor()
        try:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        finally:
            cursor.close()
        return None if row is None else tuple(row)

    def renew(self, *, run_id: str, attempt: int, owner: str, expires: datetime) -> bool:
        """Extend this attempt's lease to ``expires`` on the held connection; False if the attempt
        no longer holds the run. The fence before an external effect: the check and the renewal
        are one statement, and no pool checkout stands between it and the send."""
        return self._writer.renew_on(
            self._raw, self._one_statement, run_id=run_id, attempt=attempt, owner=owner, expires=expires
        )
