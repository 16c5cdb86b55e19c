"""Every list route's query at 100k rows, on SQLite and PostgreSQL: its plan and its time (issue 23, item 5).

A fresh, migrated database gets 100,000 runs, 100,000 resources and 100,000 approvals for one
tenant (spread over 10 namespaces, 5 agents, several states), and a few of a second tenant. Each
list route's store function is then called as the route calls it; the SQL it sent is captured
(SQLAlchemy's ``before_cursor_execute``), its plan printed (SQLite ``EXPLAIN QUERY PLAN``,
PostgreSQL ``EXPLAIN ANALYZE``), and the call timed (p50/p95 of ``--calls`` calls, the Python
that turns rows into objects included). A plan that reads the tenant's rows and sorts them
(``USE TEMP B-TREE FOR ORDER BY`` / ``Sort`` over a ``Seq Scan``) grows with the installation; an
index range scan in the wanted order stops at the page.

Run ``.venv/bin/python bench/lists.py``; ``--rows`` changes the 100k, ``--backends`` as elsewhere.
Compare with an older ``src`` by running it with ``PYTHONPATH=<older checkout>/src``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Generator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event, insert

from _common import (
    Stats,
    add_backends_option,
    fmt_ms,
    machine_facts,
    parse_backends,
    postgres_admin_url,
    postgres_database,
    postgres_problem,
)
from bastion.api import RandomIds
from bastion.control.store import Store, list_rows
from bastion.control.store._tables import namespaces, resources, tenants  # pyright: ignore[reportPrivateUsage]
from bastion.execution.gateway import ApprovalStore
from bastion.execution.gateway._approvals import approvals  # pyright: ignore[reportPrivateUsage]
from bastion.execution.runs import RunStore
from bastion.execution.runs._tables import runs  # pyright: ignore[reportPrivateUsage]

TENANT, OTHER = "a" * 8 + "-0000-0000-0000-000000000001", "b" * 8 + "-0000-0000-0000-000000000002"
NAMESPACES = [f"ns{i}" for i in range(10)]
AGENTS = [f"agent{i}" for i in range(5)]
STATES = ["Succeeded"] * 90 + ["Failed"] * 8 + ["Running", "Scheduled"]
BATCH = 5000


def fill(store: Store, rows: int) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with store.write() as conn:
        for tenant in (TENANT, OTHER):
            conn.execute(
                insert(tenants).values(id=tenant, name=f"t{tenant[0]}", system=False, created_at=start)
            )
            conn.execute(
                insert(namespaces),
                [{"tenant_id": tenant, "name": n, "created_at": start} for n in NAMESPACES],
            )
    for table, make in ((runs, _run), (resources, _resource), (approvals, _approval)):
        for first in range(0, rows, BATCH):
            batch = [make(TENANT, i, start) for i in range(first, min(rows, first + BATCH))]
            with store.write() as conn:
                conn.execute(insert(table), batch)
        with store.write() as conn:
            conn.execute(insert(table), [make(OTHER, i, start) for i in range(50)])
    with store.write() as conn:
        conn.exec_driver_sql("ANALYZE")


def _run(tenant: str, i: int, start: datetime) -> dict[str, Any]:
    at = start + timedelta(seconds=i)
    return {
        "id": f"{tenant[:8]}-{i:027d}",
        "tenant_id": tenant,
        "namespace": NAMESPACES[i % len(NAMESPACES)],
        "agent": AGENTS[i % len(AGENTS)],
        "agent_spec": {},
        "input": None,
        "state": STATES[i % len(STATES)],
        "attempt": 1,
        "max_attempts": 3,
        "cancel_requested": False,
        "created_at": at,
        "updated_at": at,
        "takeovers": 0,
        "quarantined": False,
    }


def _resource(tenant: str, i: int, start: datetime) -> dict[str, Any]:
    at = start + timedelta(seconds=i)
    return {
        "uid": f"{tenant[:8]}-r{i:026d}",
        "tenant_id": tenant,
        "namespace": NAMESPACES[i % len(NAMESPACES)],
        "kind": "ToolGrant" if i % 2 else "Tool",
        "name": f"res-{i:06d}",
        "api_version": "bastion/v1",
        "labels": {},
        "annotations": {},
        "spec": {},
        "generation": 1,
        "resource_version": 1,
        "created_at": at,
        "updated_at": at,
    }


def _approval(tenant: str, i: int, start: datetime) -> dict[str, Any]:
    at = start + timedelta(seconds=i)
    return {
        "id": f"{tenant[:8]}-a{i:026d}",
        "tenant_id": tenant,
        "namespace": NAMESPACES[i % len(NAMESPACES)],
        "run_id": f"{tenant[:8]}-{i:027d}",
        "seq": 1,
        "agent": AGENTS[i % len(AGENTS)],
        "tool": "fs.write",
        "args": {},
        "request_hash": "0" * 64,
        "reasons": [],
        "state": "pending" if i % 50 == 0 else "approved",
        "created_at": at,
        "expires_at": at + timedelta(days=1),
    }


@contextmanager
def captured(store: Store) -> Generator[list[tuple[str, Any]]]:
    seen: list[tuple[str, Any]] = []

    def listen(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        seen.append((statement, parameters))

    event.listen(store.engine, "before_cursor_execute", listen)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", listen)


def plan(store: Store, statement: str, parameters: Any) -> list[str]:
    with store.read() as conn:
        if conn.dialect.name == "postgresql":
            rows = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, COSTS OFF) {statement}", parameters).all()
            return [str(r[0]) for r in rows]
        rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
        return [str(r[-1]) for r in rows]


def routes(store: Store) -> list[tuple[str, Callable[[Any], Any]]]:
    run_store = RunStore(store)
    approval_store = ApprovalStore(RandomIds())
    with store.read() as conn:
        _, cursor = run_store.list(conn, tenant_id=TENANT, namespace=None, limit=100)
    return [
        (
            "GET /runs (every namespace)",
            lambda c: run_store.list(c, tenant_id=TENANT, namespace=None, limit=100),
        ),
        (
            "GET /runs, 2nd page (cursor)",
            lambda c: run_store.list(c, tenant_id=TENANT, namespace=None, limit=100, cursor=cursor),
        ),
        ("GET /runs?agent=", lambda c: run_store.list(c, tenant_id=TENANT, namespace=None, agent="agent3")),
        (
            "GET /runs?state=Running (1%)",
            lambda c: run_store.list(c, tenant_id=TENANT, namespace=None, state="Running"),
        ),
        (
            "GET /audit/verify's listing (1000 runs)",
            lambda c: run_store.list(c, tenant_id=TENANT, namespace=None, limit=1000),
        ),
        (
            "GET /namespaces/ns3/runs",
            lambda c: run_store.list(c, tenant_id=TENANT, namespace="ns3", limit=100),
        ),
        (
            "GET /namespaces/ns3/runs?agent=",
            lambda c: run_store.list(c, tenant_id=TENANT, namespace="ns3", agent="agent3"),
        ),
        (
            "GET /toolgrants (every namespace)",
            lambda c: list_rows(c, TENANT, "ToolGrant", None, [], limit=100, cursor=None),
        ),
        (
            "GET /namespaces/ns3/toolgrants",
            lambda c: list_rows(c, TENANT, "ToolGrant", "ns3", [], limit=100, cursor=None),
        ),
        ("GET /approvals (pending)", lambda c: approval_store.list(c, tenant_id=TENANT, state="pending")),
        ("GET /approvals?state= (none)", lambda c: approval_store.list(c, tenant_id=TENANT)),
        ("GET /namespaces (resource counts)", lambda c: store.list_namespaces(c, TENANT)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_backends_option(parser)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    backends = parse_backends(parser, args.backends)
    print(machine_facts())
    summary: list[tuple[str, str, float, float]] = []
    for backend in backends:
        with ExitStack() as stack:
            if backend == "postgres":
                problem = postgres_problem(postgres_admin_url())
                if problem is not None:
                    print(f"\n== postgres: skipped ({problem})")
                    continue
                url = stack.enter_context(postgres_database(postgres_admin_url()))
            else:
                url = f"sqlite:///{Path(stack.enter_context(tempfile.TemporaryDirectory())) / 'lists.db'}"
            store = Store.open(url)
            stack.callback(store.close)
            filled = time.monotonic()
            fill(store, args.rows)
            print(
                f"\n== {backend}: {args.rows:,} runs, resources and approvals in {time.monotonic() - filled:.1f} s"
            )
            for name, call in routes(store):
                with store.read() as conn, captured(store) as seen:
                    call(conn)
                statement, parameters = seen[-1]
                durations: list[int] = []
                for _ in range(args.calls):
                    with store.read() as conn:
                        t0 = time.perf_counter_ns()
                        call(conn)
                        durations.append(time.perf_counter_ns() - t0)
                stats = Stats.of_ns(durations)
                summary.append((backend, name, stats.p50, stats.p95))
                print(f"\n{name}: p50 {fmt_ms(stats.p50, 2)} ms, p95 {fmt_ms(stats.p95, 2)} ms")
                for line in plan(store, statement, parameters):
                    print(f"    {line}")
    print("\nsummary (ms)")
    for backend, name, p50, p95 in summary:
        print(f"  {backend:<9} {name:<42} p50 {fmt_ms(p50, 2):>8}  p95 {fmt_ms(p95, 2):>8}")


if __name__ == "__main__":
    main()
