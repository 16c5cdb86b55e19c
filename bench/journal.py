"""Journal benchmark: the cost of one journal step on SQLite and on PostgreSQL.

A step is what ``GatewaySession._live`` adds around a tool call so that the call is journaled:
the sha256 of the canonical request, ``Journal.prepare`` (the entry hashed into the chain, its
payloads JSON-encoded once, large ones set aside as blobs; no database), then
``StepWriter.commit``: one ``Store.write()`` transaction running the fence check, the blobs, the
journal row and the call event as prebuilt SQL on the DBAPI cursor. Steps
run back to back for one claimed run on a fresh database: SQLite (a file in a temporary
directory, WAL, as ``Store.open`` configures it) and a throwaway PostgreSQL database, created and
dropped here.

Rows, each timed per step with ``time.perf_counter_ns`` over ``--steps`` steps (after a warm-up),
in interleaved rounds so that a change of machine load hits every row alike:

* ``empty write transaction``: ``Store.write()`` with nothing in it, the floor of any write (on
  SQLite an empty COMMIT writes nothing to the WAL, so it is below what any real write costs);
* ``bare INSERT`` (the baseline): one precomputed row of the journal's shape inserted with
  SQLAlchemy Core (``insert(journal_entries).values(...)``) in its own ``Store.write()``; ``x base``
  is every row's p50 as a ratio of it. It is the same baseline as before the step moved off Core,
  so the ratios compare across versions;
* ``bare INSERT on the DBAPI cursor``: the same row as prebuilt SQL on the cursor of
  ``Store.write()``, the way ``StepWriter`` writes: the least a journal row costs through the store;
* ``reference: Core fence + append + event (before)``: the step as it was, ``RunStore.fence``,
  ``Journal.append`` and ``RunStore.add_events`` through SQLAlchemy Core in one ``Store.write()``
  (they stay in src as the readable reference of ``StepWriter``'s semantics);
* ``journal step: prepare + StepWriter.commit (target)``: the step defined above, the row the
  targets are about; ``x before`` is every row's p50 as a ratio of the reference's;
* the same step on one DBAPI connection held for the run (no pool checkout or pre-ping, no
  SQLAlchemy transaction; still the store's write lock and ``BEGIN IMMEDIATE`` on SQLite): when
  src's ``StepWriter`` has ``held()``, the worker's path, ``journal step, held`` measures it (and
  gets a PASS/FAIL line of its own); otherwise it is ``prototype D``, the same
  ``StepWriter.commit`` over a connection held here (``HeldDatabase``);
* prototypes of what is still achievable, writing the same rows from the same ``Prepared``
  (PostgreSQL only): E is the held step's fence, entry and event as one statement in autocommit,
  one round trip instead of five; E' runs that statement inside ``Store.write()`` instead.

Every chain a row builds is checked with ``Journal.verify``. Targets (issue): p50 <= 0.1 ms per
step on SQLite, <= 1 ms on PostgreSQL. Then a breakdown of the step by piece, beside the held
step's, and a cProfile of both when the target fails (or with ``--profile``).

Run ``.venv/bin/python bench/journal.py``; ``--quick`` is a smoke run. PostgreSQL comes from
``$BASTION_BENCH_POSTGRES_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``)
and is skipped, with the reason, when unreachable.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import sys
import tempfile
import time
from collections.abc import Generator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert

from _common import (
    STEP_PIECES,
    Stats,
    StepTimer,
    add_backends_option,
    database_facts,
    fmt_ms,
    fmt_ratio,
    load_average,
    machine_facts,
    parse_backends,
    postgres_admin_url,
    postgres_database,
    postgres_problem,
    print_profile,
    shown_url,
)
from bastion.api import SystemClock
from bastion.control.store import Store
from bastion.errors import LeaseLost
from bastion.execution.runs import FINISHED, RunStore

# The gateway's write path; not exported from bastion.execution.runs (the worker is its one user).
from bastion.execution.runs._step import StepWriter  # pyright: ignore[reportPrivateUsage]
from bastion.observe.journal import GENESIS, Journal, Prepared, canonical, digest
from bastion.observe.journal import journal_entries as journal_table

WORKER_HOLDS = hasattr(StepWriter, "held")
"""Whether src's ``StepWriter`` has ``held()``, a writer on one connection held for an attempt,
which the worker then uses: the held row measures it. Without it, that row is prototype D, the same
``StepWriter.commit`` on a connection this file holds (``HeldDatabase``)."""
HELD_NAME = (
    "journal step, held: StepWriter.held().commit (worker)"
    if WORKER_HOLDS
    else "prototype D: StepWriter.commit on a held connection"
)
TARGET_MS = {"sqlite": 0.1, "postgres": 1.0}
OWNER = "bench-host:1:journal"
TOOL = "fs.read"
REQUEST = {"method": "tool.call", "params": {"name": TOOL, "args": {"path": "notes/tiny.txt"}}}
RESPONSE = {"path": "notes/tiny.txt", "size": 5, "content": "hello"}
REASONS = [{"rule": "grant/bench-grant", "text": f"grant 'bench-grant' lets 'bench' call {TOOL!r}"}]
AGENT_SPEC: dict[str, Any] = {
    "apiVersion": "bastion/v1",
    "kind": "Agent",
    "metadata": {"name": "bench", "namespace": "default", "resourceVersion": "1"},
    "spec": {"runtime": "python", "entrypoint": "agent:main", "tools": [TOOL]},
}
ENTRY_SQL = (
    "INSERT INTO journal_entries (run_id, seq, attempt, kind, request, request_hash, decision, "
    "reasons, response, error, started_at, duration_us, prev_hash, hash) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


# --- the database under test --------------------------------------------------------------------


@dataclass
class Bed:
    """A migrated store, the run store and journal over it, and runs claimed by ``OWNER``."""

    backend: str
    store: Store
    runs: RunStore
    journal: Journal
    clock: SystemClock = field(default_factory=SystemClock)

    @property
    def postgres(self) -> bool:
        return self.backend == "postgres"

    def claimed_run(self) -> tuple[str, int]:
        """A fresh run, claimed: its id and attempt (the fencing token)."""
        with self.store.write() as conn:
            run = self.runs.create(
                conn,
                tenant_id="bench-tenant",
                namespace="default",
                agent="bench",
                agent_spec=AGENT_SPEC,
                input=None,
            )
        claim = self.runs.claim(OWNER, lease_seconds=3600)
        assert claim is not None
        assert claim.run.id == run.id, "another run was claimable"
        return run.id, claim.run.attempt


@contextmanager
def open_bed(backend: str, url: str) -> Generator[Bed, None, None]:
    store = Store.open(url)
    try:
        yield Bed(backend, store, RunStore(store), Journal(store))
    finally:
        store.close()


def _stamp(at: datetime, postgres: bool) -> Any:
    """A timestamp as a parameter, the way StepWriter (and SQLAlchemy on SQLite) stores it."""
    return at if postgres else at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


# --- the rows -----------------------------------------------------------------------------------


class Row:
    """One measured row: ``step()`` does one step; ``chain`` names the run whose chain it built."""

    name = ""
    chain: str | None = None

    def __init__(self, bed: Bed) -> None:
        self.bed = bed
        self.durations: list[int] = []

    def step(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Give back what the row holds (a connection)."""


class EmptyWrite(Row):
    name = "empty write transaction"

    def step(self) -> None:
        with self.bed.store.write():
            pass


def _baseline_row(bed: Bed) -> dict[str, Any]:
    return {
        "run_id": "baseline-" + bed.runs.ids.uid()[:27],
        "attempt": 1,
        "kind": "tool",
        "request": REQUEST,
        "request_hash": digest(canonical(REQUEST)),
        "decision": "allow",
        "reasons": REASONS,
        "response": RESPONSE,
        "error": None,
        "started_at": bed.clock.now(),
        "duration_us": 42,
        "prev_hash": GENESIS,
        "hash": GENESIS,
    }


class BareInsert(Row):
    name = "bare INSERT of a journal-sized row, Core (base)"

    def __init__(self, bed: Bed) -> None:
        super().__init__(bed)
        self.seq = 0
        self.row = _baseline_row(bed)

    def step(self) -> None:
        self.seq += 1
        with self.bed.store.write() as conn:
            conn.execute(insert(journal_table).values(seq=self.seq, **self.row))


class BareCursorInsert(Row):
    name = "bare INSERT on the DBAPI cursor of Store.write()"

    def __init__(self, bed: Bed) -> None:
        super().__init__(bed)
        self.seq = 0
        row = _baseline_row(bed)
        self.sql = ENTRY_SQL.replace("?", "%s") if bed.postgres else ENTRY_SQL
        self.run_id = row["run_id"]
        self.rest = (
            *(row["attempt"], "tool", canonical(REQUEST).decode(), row["request_hash"], "allow"),
            *(canonical(REASONS).decode(), canonical(RESPONSE).decode(), None),
            *(_stamp(row["started_at"], bed.postgres), 42, GENESIS, GENESIS),
        )

    def step(self) -> None:
        self.seq += 1
        with self.bed.store.write() as conn:
            cursor: Any = conn.connection.cursor()
            try:
                cursor.execute(self.sql, (self.run_id, self.seq, *self.rest))
            finally:
                cursor.close()


class Chained(Row):
    """A row that journals steps of one claimed run: its chain is verified afterwards."""

    def __init__(self, bed: Bed) -> None:
        super().__init__(bed)
        self.run_id, self.attempt = bed.claimed_run()
        self.chain = self.run_id
        self.seq, self.head = 0, GENESIS

    @staticmethod
    def event(seq: int) -> dict[str, Any]:
        """The call event, as GatewaySession._live builds it for an allowed tool call."""
        return {"seq": seq, "kind": "tool", "decision": "allow", "durationUs": 42, "tool": TOOL}


class Reference(Chained):
    """The step before StepWriter: Core statements built per call, inside ``Store.write()``."""

    name = "reference: Core fence + append + event (before)"

    def step(self) -> None:
        bed, seq = self.bed, self.seq + 1
        request_hash = digest(canonical(REQUEST))
        started_at = bed.clock.now()
        with bed.store.write() as conn:
            bed.runs.fence(conn, self.run_id, self.attempt, OWNER)
            entry = bed.journal.append(
                conn,
                run_id=self.run_id,
                seq=seq,
                attempt=self.attempt,
                kind="tool",
                request=REQUEST,
                request_hash=request_hash,
                decision="allow",
                reasons=REASONS,
                response=RESPONSE,
                error=None,
                started_at=started_at,
                duration_us=42,
                prev_hash=self.head,
            )
            bed.runs.add_events(conn, self.run_id, [("call", self.event(seq))])
        self.seq, self.head = seq, entry.hash


class JournalStep(Chained):
    """What ``GatewaySession._live`` and the worker's ``_AttemptRunner.commit`` do around the tool,
    minus policy, tool and scrub: request hash, ``Journal.prepare``, ``StepWriter.commit``."""

    name = "journal step: prepare + StepWriter.commit (target)"

    def __init__(self, bed: Bed, db: Any = None, *, held: bool = False) -> None:
        super().__init__(bed)
        self.writer = StepWriter(db if db is not None else bed.store)
        self.stack = ExitStack()
        writer: Any = self.stack.enter_context(self.writer.held()) if held else self.writer  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
        self.commit: Any = writer.commit

    def close(self) -> None:
        self.stack.close()

    def prepare(self, seq: int) -> Prepared:
        """The request hash (as ``GatewaySession.handle``) and the entry (as ``_live``)."""
        request_hash = digest(canonical(REQUEST))
        return Journal.prepare(
            run_id=self.run_id,
            seq=seq,
            attempt=self.attempt,
            kind="tool",
            request=REQUEST,
            request_hash=request_hash,
            decision="allow",
            reasons=REASONS,
            response=RESPONSE,
            error=None,
            started_at=self.bed.clock.now(),
            duration_us=42,
            prev_hash=self.head,
        )

    def step(self) -> None:
        seq = self.seq + 1
        prepared = self.prepare(seq)
        self.commit(
            run_id=self.run_id,
            attempt=self.attempt,
            owner=OWNER,
            prepared=prepared,
            events=[("call", self.event(seq))],
            at=self.bed.clock.now(),
        )
        self.seq, self.head = seq, prepared.entry.hash


class HeldDatabase:
    """A ``Database`` whose ``write()`` is one DBAPI connection held for its lifetime, as a
    per-attempt connection in ``StepWriter`` could be: on SQLite the store's write lock (this
    process's writers queue on it), ``BEGIN IMMEDIATE`` and ``COMMIT``; on PostgreSQL the driver's
    implicit transaction and ``commit()``. No pool checkout, pre-ping or SQLAlchemy transaction."""

    def __init__(self, store: Store, *, autocommit: bool = False) -> None:
        self.store = store
        self.engine: Engine = store.engine
        self.raw = store.engine.raw_connection()
        self.driver: Any = self.raw.driver_connection
        self.sqlite = store.backend == "sqlite"
        if autocommit:
            self.driver.autocommit = True
        self.lock = store._write_lock  # pyright: ignore[reportPrivateUsage]
        self.connection = self.driver
        """What ``write()`` yields stands in for a SQLAlchemy connection: ``.connection.cursor()``."""

    def read(self) -> AbstractContextManager[Any]:
        return self.store.read()

    @contextmanager
    def write(self) -> Generator[Any, None, None]:
        lock = self.lock
        if lock is not None:
            lock.acquire()
        try:
            if self.sqlite:
                self.driver.execute("BEGIN IMMEDIATE")
            try:
                yield self
            except BaseException:
                self.driver.rollback()
                raise
            self.driver.commit()
        finally:
            if lock is not None:
                lock.release()

    def close(self) -> None:
        if getattr(self.driver, "autocommit", False):
            self.driver.autocommit = False
        self.raw.close()


class HeldConnection(JournalStep):
    """The step on one connection held for the run: src's ``StepWriter.held()`` when it has it
    (the worker's path), else ``StepWriter.commit`` over a ``HeldDatabase`` (prototype D)."""

    name = HELD_NAME

    def __init__(self, bed: Bed, db: Any = None) -> None:
        if WORKER_HOLDS:
            super().__init__(bed, db, held=True)
        else:
            self.held = HeldDatabase(bed.store)
            super().__init__(bed, db if db is not None else self.held)
            self.stack.callback(self.held.close)


_FINISHED = sorted(str(s) for s in FINISHED)


class OneStatement(JournalStep):
    """PostgreSQL: the fence, the entry and the event as one statement in autocommit on a held
    connection, so a step is one round trip instead of six through ``Store.write()`` (pre-ping,
    BEGIN, SELECT ... FOR UPDATE, INSERT, INSERT in a pipeline, COMMIT) or five held."""

    name = "prototype E: held + one statement (1 round trip)"
    SQL = (
        "WITH fence AS (SELECT id FROM runs WHERE id = %(run)s AND attempt = %(attempt)s "
        "AND lease_owner = %(owner)s AND state <> ALL(%(finished)s) FOR UPDATE), "
        "entry AS (INSERT INTO journal_entries (run_id, seq, attempt, kind, request, request_hash, "
        "decision, reasons, response, error, started_at, duration_us, prev_hash, hash) "
        "SELECT id, %(seq)s, %(attempt)s, %(kind)s, %(request)s::json, %(request_hash)s, %(decision)s, "
        "%(reasons)s::json, %(response)s::json, %(error)s::json, %(started_at)s, %(duration_us)s, "
        "%(prev)s, %(hash)s FROM fence RETURNING run_id) "
        "INSERT INTO run_events (run_id, type, data, at) "
        "SELECT run_id, 'call', %(event)s::json, %(at)s FROM entry RETURNING id"
    )

    def __init__(self, bed: Bed) -> None:
        assert bed.postgres, "one statement with data-modifying CTEs is PostgreSQL only"
        super().__init__(bed)
        self.held = HeldDatabase(bed.store, autocommit=True)
        self.stack.callback(self.held.close)

    @contextmanager
    def cursor(self) -> Generator[Any, None, None]:
        cursor = self.held.driver.cursor()
        try:
            yield cursor
        finally:
            cursor.close()

    def step(self) -> None:
        seq = self.seq + 1
        prepared = self.prepare(seq)
        assert not prepared.blobs, "a payload went to a blob, which this statement does not write"
        entry = prepared.entry
        params = {
            "run": self.run_id,
            "attempt": self.attempt,
            "owner": OWNER,
            "finished": _FINISHED,
            "seq": seq,
            "kind": entry.kind,
            "request": prepared.request_json,
            "request_hash": entry.request_hash,
            "decision": entry.decision,
            "reasons": prepared.reasons_json,
            "response": prepared.response_json,
            "error": prepared.error_json,
            "started_at": entry.started_at,
            "duration_us": entry.duration_us,
            "prev": entry.prev_hash,
            "hash": entry.hash,
            "event": canonical(self.event(seq)).decode(),
            "at": self.bed.clock.now(),
        }
        with self.cursor() as cursor:
            cursor.execute(self.SQL, params)
            if cursor.fetchone() is None:
                raise LeaseLost(f"attempt {self.attempt} of run {self.run_id} no longer holds its lease")
        self.seq, self.head = seq, entry.hash


class OneStatementPooled(OneStatement):
    """E's statement inside ``Store.write()`` (pool checkout with pre-ping, BEGIN, COMMIT): whether
    the single statement pays off without a held autocommit connection."""

    name = "prototype E': E's statement inside Store.write()"

    @contextmanager
    def cursor(self) -> Generator[Any, None, None]:
        with self.bed.store.write() as conn:
            cursor: Any = conn.connection.cursor()
            try:
                yield cursor
            finally:
                cursor.close()


class Pieces(HeldConnection):
    """The journal step again, with a clock read between its pieces (not a measured row): the
    writer runs unchanged, writing through a ``StepTimer`` over the store, or (``held``) the held
    row's way."""

    PIECES = (
        ("hash", "request hash (canonical JSON + sha256)"),
        ("prepare", "Journal.prepare: payload JSON + entry hash (CPU)"),
        ("event_dict", "call event dict + the commit's clock read"),
        *(("commit." + key, "commit: " + label) for key, label in STEP_PIECES),
    )

    def __init__(self, bed: Bed, *, held: bool = False) -> None:
        if held and not WORKER_HOLDS:
            self.held = HeldDatabase(bed.store)
            self.timer = StepTimer(self.held)  # pyright: ignore[reportArgumentType]
            JournalStep.__init__(self, bed, self.timer)
            self.stack.callback(self.held.close)
        else:
            self.timer = StepTimer(bed.store)
            JournalStep.__init__(self, bed, self.timer, held=held)
        self.commit = self.timer.timed_commit(self.commit)
        self.ns: dict[str, int] = {}
        self.count = 0
        self.reset()

    def reset(self) -> None:
        self.ns = {key: 0 for key, _ in self.PIECES}
        self.count = 0
        self.timer.reset()

    def step(self) -> None:
        clock = time.perf_counter_ns
        seq = self.seq + 1
        t0 = clock()
        request_hash = digest(canonical(REQUEST))
        t1 = clock()
        prepared = Journal.prepare(
            run_id=self.run_id,
            seq=seq,
            attempt=self.attempt,
            kind="tool",
            request=REQUEST,
            request_hash=request_hash,
            decision="allow",
            reasons=REASONS,
            response=RESPONSE,
            error=None,
            started_at=self.bed.clock.now(),
            duration_us=42,
            prev_hash=self.head,
        )
        t2 = clock()
        events = [("call", self.event(seq))]
        at = self.bed.clock.now()
        t3 = clock()
        self.commit(
            run_id=self.run_id, attempt=self.attempt, owner=OWNER, prepared=prepared, events=events, at=at
        )
        self.seq, self.head = seq, prepared.entry.hash
        self.ns["hash"] += t1 - t0
        self.ns["prepare"] += t2 - t1
        self.ns["event_dict"] += t3 - t2
        self.count += 1

    def us(self) -> dict[str, float]:
        """Mean us per step by key of ``PIECES``."""
        ns = {**self.ns, **{"commit." + key: v for key, v in self.timer.pieces_ns().items()}}
        return {key: ns[key] / self.count / 1000 for key, _ in self.PIECES}


def breakdown(bed: Bed, count: int, warmup: int) -> None:
    """The step's pieces, and prototype D's, steps of the two interleaved in 5 rounds."""
    step, held = Pieces(bed), Pieces(bed, held=True)
    try:
        for row in (step, held):
            for _ in range(warmup):
                row.step()
            row.reset()
        for r in range(5):
            for row in (step, held) if r % 2 == 0 else (held, step):
                for _ in range(count // 5):
                    row.step()
    finally:
        step.close()
        held.close()
    for row in (step, held):
        if not bed.journal.verify(row.run_id).ok:
            raise RuntimeError("the breakdown's chain is broken")
    print(
        f"where a journal step's time goes ({step.count} more steps each, mean us per step, clock reads "
        f"included; held = {HELD_NAME.split(':')[0]}):"
    )
    ours, theirs = step.us(), held.us()
    total, total_d = sum(ours.values()), sum(theirs.values())
    print(f"  {'piece':<70}{'step us':>9}{'share':>7}{'held us':>9}")
    for key, label in Pieces.PIECES:
        print(f"  {label:<70}{ours[key]:>9.1f}{100 * ours[key] / total:>6.1f}%{theirs[key]:>9.1f}")
    print(f"  {'total':<70}{total:>9.1f}{'':>7}{total_d:>9.1f}")


# --- measuring ----------------------------------------------------------------------------------


def measure(rows: list[Row], steps: int, warmup: int, rounds: int) -> None:
    """``warmup`` unmeasured steps per row, then ``steps`` per row in ``rounds`` rotating rounds."""
    for row in rows:
        for _ in range(warmup):
            row.step()
    per_round = [steps // rounds + (1 if r < steps % rounds else 0) for r in range(rounds)]
    clock = time.perf_counter_ns
    for r, count in enumerate(per_round):
        gc.collect()
        order = rows[r % len(rows) :] + rows[: r % len(rows)]
        for row in order:
            step, durations = row.step, row.durations
            for _ in range(count):
                t0 = clock()
                step()
                durations.append(clock() - t0)


HEADER = (
    f"{'row':<54}{'mean ms':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}{'steps/s':>9}"
    f"{'x base':>8}{'x before':>10}"
)


def print_rows(rows: list[Row], base: Stats, before: Stats) -> dict[str, Stats]:
    print(HEADER)
    found: dict[str, Stats] = {}
    for row in rows:
        s = Stats.of_ns(row.durations)
        found[row.name] = s
        print(
            f"{row.name:<54}{fmt_ms(s.mean):>9}{fmt_ms(s.p50):>9}{fmt_ms(s.p95):>9}{fmt_ms(s.p99):>9}"
            f"{fmt_ms(s.max, 2):>9}{1000 / s.mean if s.mean else 0:>9.0f}{fmt_ratio(s.p50, base.p50):>8}"
            f"{fmt_ratio(s.p50, before.p50):>10}"
        )
    return found


def run_backend(backend: str, url: str, args: argparse.Namespace) -> str:
    """Measure one backend; its verdicts in a few words."""
    with open_bed(backend, url) as bed:
        print(database_facts(bed.store.engine))
        base, before, target = BareInsert(bed), Reference(bed), JournalStep(bed)
        rows: list[Row] = [EmptyWrite(bed), base, BareCursorInsert(bed), before, target]
        try:
            rows.append(HeldConnection(bed))
            if bed.postgres:
                rows += [OneStatement(bed), OneStatementPooled(bed)]
            measure(rows, args.steps, args.warmup, args.rounds)
        finally:
            for row in rows:
                row.close()
        stats = print_rows(rows, Stats.of_ns(base.durations), Stats.of_ns(before.durations))
        verdicts: list[str] = []
        for row in rows:
            if row.chain is not None:
                verdict = bed.journal.verify(row.chain)
                if not verdict.ok:
                    raise RuntimeError(f"{row.name}: the chain is broken: {verdict}")
                verdicts.append(f"{row.name.split(':')[0]} ok ({verdict.entries})")
        print("hash chains verified with Journal.verify: " + "; ".join(verdicts))

        breakdown(bed, max(500, args.steps // 5), args.warmup)

        limit = TARGET_MS[backend]

        def verdict_line(label: str, name: str) -> bool:
            s = stats[name]
            passed = s.p50 <= limit
            print(
                f"{'PASS' if passed else 'FAIL'}: {label} on {backend} p50 {s.p50:.3f} ms, mean {s.mean:.3f} ms "
                f"(target <= {limit:g} ms per step; {s.p50 / limit:.2f}x the target)"
            )
            return passed

        passed = verdict_line("journal step (StepWriter.commit, a Store.write() per step)", target.name)
        summary = f"{backend} {'PASS' if passed else 'FAIL'}"
        if WORKER_HOLDS:
            held_passed = verdict_line("journal step as the worker runs it (StepWriter.held())", HELD_NAME)
            summary += f" (held, the worker's path: {'PASS' if held_passed else 'FAIL'})"
        within = [
            f"{n.split(':')[0]} ({t.p50:.3f} ms)"
            for n, t in stats.items()
            if n.startswith("proto") and t.p50 <= limit
        ]
        print(f"prototypes within the target: {', '.join(within) or 'none'}")
        if not passed or args.profile:
            count = min(args.steps, 3000)
            for row, top in ((JournalStep(bed), 14), (HeldConnection(bed), 8)):
                try:
                    profile_step(row, count, args.warmup, top=top)
                finally:
                    row.close()
    return summary


def profile_step(row: JournalStep, count: int, warmup: int, top: int = 14) -> None:
    for _ in range(warmup):
        row.step()
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(count):
        row.step()
    profile.disable()
    print(f"cProfile of {count} steps of {row.name.split(' (')[0]!r} on {row.bed.backend}:")
    print_profile(profile, count, top=top)


# --- the run ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=5000, help="measured steps per row (5000)")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured steps per row first (200)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds the steps are split in (5)")
    add_backends_option(parser)
    parser.add_argument("--profile", action="store_true", help="profile the journal step even if it passes")
    parser.add_argument("--quick", action="store_true", help="a very short smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.rounds = 300, 20, 2
    if args.steps < args.rounds or args.rounds < 1 or args.warmup < 0:
        parser.error("--steps must be at least --rounds, which must be positive; --warmup not negative")
    args.backends = parse_backends(parser, args.backends)
    return args


def print_header(args: argparse.Namespace) -> None:
    print("Bastion journal benchmark (bench/journal.py)")
    print(machine_facts())
    print(
        f"{args.steps} measured steps per row in {args.rounds} interleaved rounds, after {args.warmup} "
        "warm-up steps; targets: journal step p50 <= 0.1 ms on SQLite, <= 1 ms on PostgreSQL"
    )
    print(
        "journal step = sha256 of the canonical request, Journal.prepare, then StepWriter.commit: fence, "
        "entry and call event on the DBAPI cursor of one Store.write() (as GatewaySession._live);"
    )
    print(
        "held = the same on one connection held for the run: "
        + (
            "StepWriter.held(), as src's worker runs an attempt;"
            if WORKER_HOLDS
            else "prototype D (src's StepWriter has no held());"
        )
    )
    print(
        "x base / x before = p50 as a ratio of the bare Core INSERT's / the reference (before) step's p50 "
        "in the same run; steps/s = 1000 / mean ms."
    )
    print()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print_header(args)
    verdicts: list[str] = []
    for backend in args.backends:
        if backend == "sqlite":
            print(
                "== sqlite (a file in a temporary directory; WAL, synchronous=NORMAL, as Store.open sets) =="
            )
            with tempfile.TemporaryDirectory(prefix="bastion-bench-journal-") as home:
                verdicts.append(run_backend("sqlite", f"sqlite:///{Path(home) / 'bastion.db'}", args))
        else:
            admin_url = postgres_admin_url()
            problem = postgres_problem(admin_url)
            if problem is not None:
                print(f"== postgres: skipped, {shown_url(admin_url)} is unreachable ({problem}) ==")
                continue
            print(f"== postgres (a throwaway database on {shown_url(admin_url)}) ==")
            with postgres_database(admin_url) as url:
                verdicts.append(run_backend("postgres", url, args))
        print()
    print(f"load average at the end: {load_average()}")
    # A missed target is a result, not an error: ``make bench`` goes on to the next benchmark.
    print(f"targets: {', '.join(verdicts) or 'no backend measured'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
