"""What bench/journal.py and bench/gateway.py share: latency statistics, the header's machine
facts, the ``--backends`` option, throwaway PostgreSQL databases, a timer for the pieces of a
``StepWriter.commit`` and a cProfile summary.

Not a benchmark itself; the scripts import it as ``_common`` (their directory is on ``sys.path``).
"""

from __future__ import annotations

import argparse
import cProfile
import math
import os
import platform
import pstats
import secrets
import sqlite3
import time
from collections import defaultdict
from collections.abc import Generator, Iterable
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, cast

import psycopg
import sqlalchemy
from psycopg import sql
from sqlalchemy.engine import URL, make_url

from bastion.observe import Database

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
BACKENDS = ("sqlite", "postgres")


# --- statistics ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    """Latencies of one measured row, in milliseconds."""

    count: int
    mean: float
    p50: float
    p95: float
    p99: float
    max: float
    elapsed_s: float
    """Wall time of the whole loop; ``count / elapsed_s`` is the achieved rate."""

    @classmethod
    def of_ns(cls, durations_ns: Iterable[int], elapsed_s: float | None = None) -> Stats:
        ordered = sorted(durations_ns)
        if not ordered:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan, 0.0)
        total_ns = sum(ordered)
        return cls(
            count=len(ordered),
            mean=total_ns / len(ordered) / 1e6,
            p50=percentile(ordered, 50) / 1e6,
            p95=percentile(ordered, 95) / 1e6,
            p99=percentile(ordered, 99) / 1e6,
            max=ordered[-1] / 1e6,
            elapsed_s=elapsed_s if elapsed_s is not None else total_ns / 1e9,
        )

    @property
    def rate(self) -> float:
        """Operations per second over the loop's wall time."""
        return self.count / self.elapsed_s if self.elapsed_s > 0 else math.nan


def percentile(ordered: list[int], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list."""
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def fmt_ms(value: float, digits: int = 3) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def fmt_ratio(value: float, baseline: float) -> str:
    if math.isnan(value) or math.isnan(baseline) or baseline <= 0:
        return "-"
    return f"{value / baseline:.2f}x"


# --- the header ---------------------------------------------------------------------------------


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine skews every figure here."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def machine_facts() -> str:
    return (
        f"machine: {os.cpu_count()} cores, {platform.machine()}, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()} ({platform.python_implementation()}), SQLAlchemy "
        f"{sqlalchemy.__version__}, SQLite {sqlite3.sqlite_version}, psycopg {psycopg.__version__}; "
        f"load average {load_average()}"
    )


def database_facts(engine: sqlalchemy.Engine) -> str:
    """The settings that decide what a commit costs, read from the database itself."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            sync = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(
                conn.exec_driver_sql("PRAGMA synchronous").scalar() or 0
            )
            return f"SQLite journal_mode={mode}, synchronous={sync}"
        values = [
            conn.exec_driver_sql(f"SHOW {name}").scalar()
            for name in ("server_version", "synchronous_commit", "fsync")
        ]
        pre_ping = getattr(engine.pool, "_pre_ping", None)
        return (
            f"PostgreSQL {values[0]}, synchronous_commit={values[1]}, fsync={values[2]}; "
            f"engine pool_pre_ping={pre_ping} (a SELECT 1 round trip per connection checkout when on)"
        )


# --- options ------------------------------------------------------------------------------------


def add_backends_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres (both)"
    )


def parse_backends(parser: argparse.ArgumentParser, text: str) -> list[str]:
    backends = [b.strip() for b in text.split(",") if b.strip()]
    if not backends or set(backends) - set(BACKENDS):
        parser.error(f"--backends takes sqlite and/or postgres, not {text!r}")
    return backends


# --- PostgreSQL ---------------------------------------------------------------------------------


def postgres_admin_url() -> str:
    """``$BASTION_BENCH_POSTGRES_URL``, else the local server as user postgres."""
    return os.environ.get("BASTION_BENCH_POSTGRES_URL") or DEFAULT_POSTGRES_URL


def shown_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def pg_connect(url: URL) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        dbname=url.database or "postgres",
        autocommit=True,
        connect_timeout=5,
    )


def postgres_problem(admin_url: str) -> str | None:
    """Why PostgreSQL at ``admin_url`` cannot be used, or None when it can."""
    try:
        with pg_connect(make_url(admin_url)) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # any driver or URL error means: skip PostgreSQL
        detail = " ".join(str(exc).split()) or "no detail"
        return f"{type(exc).__name__}: {detail}"
    return None


@contextmanager
def postgres_database(admin_url: str) -> Generator[str, None, None]:
    """A throwaway database on the server of ``admin_url``, dropped afterwards whatever happens."""
    url = make_url(admin_url)
    name = f"bastion_bench_{secrets.token_hex(6)}"
    with pg_connect(url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield url.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
    finally:
        with pg_connect(url) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# --- the pieces of a step's transaction -------------------------------------------------------

STEP_PIECES = (
    ("open", "open: write lock, connection (pool checkout, pre-ping) unless held, BEGIN"),
    ("fence", "fence: SELECT the run (execute + fetchone)"),
    ("blob", "blobs: INSERT (large payloads only)"),
    ("entry", "journal entry: INSERT"),
    ("event", "call event: INSERT run_events (executemany)"),
    ("python", "StepWriter's own Python (stamps, parameter tuples)"),
    ("close", "COMMIT and return the connection"),
)
"""The keys ``StepTimer`` fills, with their labels, in the order a step runs them."""

_STATEMENTS = (
    ("SELECT attempt", "fence"),
    ("INSERT INTO blobs", "blob"),
    ("INSERT INTO journal_entries", "entry"),
    ("INSERT INTO run_events", "event"),
)


class StepTimer:
    """A ``Database`` for ``StepWriter`` to write through: the real one's ``write()`` (or
    ``raw_write()``, for a writer holding a connection), with the time to open it, each DBAPI
    statement (by what it writes), and the COMMIT with the connection's return added to ``ns``.
    Wrap the writer's ``commit`` with ``timed_commit`` so that its own Python is the rest of its
    time. Each timer adds two clock reads (~0.1 us)."""

    def __init__(self, db: Database) -> None:
        self.db: Any = db
        self.engine = db.engine
        self.ns: dict[str, int] = defaultdict(int)
        self.commits = 0

    def read(self) -> AbstractContextManager[Any]:
        return self.db.read()

    @contextmanager
    def write(self) -> Generator[Any, None, None]:
        clock, ns = time.perf_counter_ns, self.ns
        started = clock()
        with self.db.write() as conn:
            opened = clock()
            ns["open"] += opened - started
            yield _TimedConnection(conn.connection, ns)
            ended = clock()
        ns["close"] += clock() - ended

    def raw_connection(self) -> Any:
        return self.db.raw_connection()

    @contextmanager
    def raw_write(self, raw: Any) -> Generator[Any, None, None]:
        clock, ns = time.perf_counter_ns, self.ns
        started = clock()
        with self.db.raw_write(raw) as cursor:
            opened = clock()
            ns["open"] += opened - started
            yield _TimedCursor(cursor, ns)
            ended = clock()
        ns["close"] += clock() - ended

    def timed_commit(self, commit: Any) -> Any:
        """``commit`` (a ``StepWriter.commit``) timed as a whole: what its pieces leave is its Python."""
        clock, ns = time.perf_counter_ns, self.ns

        def timed(**kwargs: Any) -> None:
            started = clock()
            try:
                commit(**kwargs)
            finally:
                ns["commit"] += clock() - started
                self.commits += 1

        return timed

    def pieces_ns(self) -> dict[str, int]:
        """Total ns per key of ``STEP_PIECES`` (``python`` = the commits' time less every other piece)."""
        found = {key: self.ns.get(key, 0) for key, _ in STEP_PIECES if key != "python"}
        found["python"] = self.ns.get("commit", 0) - sum(found.values())
        return found

    def reset(self) -> None:
        self.ns.clear()
        self.commits = 0


class _TimedConnection:
    """Stands in for the SQLAlchemy connection: only ``.connection.cursor()`` is used on it."""

    def __init__(self, dbapi: Any, ns: dict[str, int]) -> None:
        self.connection = self
        self._dbapi, self._ns = dbapi, ns

    def cursor(self) -> _TimedCursor:
        return _TimedCursor(self._dbapi.cursor(), self._ns)


class _TimedCursor:
    def __init__(self, cursor: Any, ns: dict[str, int]) -> None:
        self._cursor, self._ns, self._last = cursor, ns, "other"

    def _key(self, statement: str) -> str:
        return next((key for prefix, key in _STATEMENTS if statement.startswith(prefix)), "other")

    def execute(self, statement: str, params: Any = None) -> Any:
        self._last = self._key(statement)
        started = time.perf_counter_ns()
        try:
            return self._cursor.execute(statement, params)
        finally:
            self._ns[self._last] += time.perf_counter_ns() - started

    def executemany(self, statement: str, params: Any) -> Any:
        self._last = self._key(statement)
        started = time.perf_counter_ns()
        try:
            return self._cursor.executemany(statement, params)
        finally:
            self._ns[self._last] += time.perf_counter_ns() - started

    def fetchone(self) -> Any:
        started = time.perf_counter_ns()
        try:
            return self._cursor.fetchone()
        finally:
            self._ns[self._last] += time.perf_counter_ns() - started

    def close(self) -> None:
        self._cursor.close()


# --- profiles -----------------------------------------------------------------------------------

CATEGORIES = (
    ("sqlite3 driver (execute, commit)", ("sqlite3.Cursor", "sqlite3.Connection", "_sqlite3")),
    ("psycopg driver and network", ("psycopg", "socket", "select.", "selectors")),
    ("SQLAlchemy", ("sqlalchemy",)),
    ("JSON encoding", ("json/", "_json", "json.encoder")),
    ("hashing (sha256)", ("_hashlib", "hashlib")),
    ("prometheus_client", ("prometheus_client",)),
    ("pipe I/O (channel)", ("posix.write", "posix.read", "BufferedReader", "readline")),
    ("bastion code", ("bastion/",)),
    ("threading / locks", ("threading", "_thread")),
)


def _category(key: tuple[str, int, str]) -> str:
    filename, _line, name = key
    where = f"{filename}:{name}"
    for label, needles in CATEGORIES:
        if any(needle in where for needle in needles):
            return label
    return "other (stdlib, builtins)"


def _where(key: tuple[str, int, str]) -> str:
    filename, line, name = key
    if filename == "~":
        return name
    parts = filename.split("/site-packages/")[-1].split("/src/")[-1]
    return f"{parts}:{line}({name})"


def print_profile(profile: cProfile.Profile, calls: int, *, top: int = 14) -> None:
    """Own time (tottime) per category and the top functions, in microseconds per call of the loop."""
    stats = pstats.Stats(profile)
    entries = cast(dict[tuple[str, int, str], tuple[int, int, float, float, Any]], stats.stats)  # type: ignore[attr-defined]
    total = sum(value[2] for value in entries.values()) or 1e-12
    by_category: dict[str, float] = {}
    for key, value in entries.items():
        by_category[_category(key)] = by_category.get(_category(key), 0.0) + value[2]
    print(
        f"  own time by category (profiled total {total / calls * 1e6:.1f} us per call, cProfile included):"
    )
    for label, seconds in sorted(by_category.items(), key=lambda item: -item[1]):
        print(f"    {label:<36}{seconds / calls * 1e6:>8.1f} us {100 * seconds / total:>5.1f}%")
    print(f"  top {top} functions by own time (us per call; ncalls per call; cumulative us per call):")
    ordered = sorted(entries.items(), key=lambda item: -item[1][2])[:top]
    for key, value in ordered:
        ncalls, tottime, cumtime = value[1], value[2], value[3]
        print(
            f"    {tottime / calls * 1e6:>7.1f} us {ncalls / calls:>5.1f} {cumtime / calls * 1e6:>8.1f} us  "
            f"{_where(key)[:90]}"
        )
