"""``Journal.verify`` on a long run, full and incremental (issue 23, item 8).

A run's journal gets ``--entries`` tool-call entries (the shape bench/gateway.py's calls leave),
written with ``Journal.append``; then, timed on each backend:

* ``full verify`` (baseline): every entry recomputed (what GET …/verify and GET /audit/verify do);
* ``incremental verify, nothing new``: after a full one, from the stored checkpoint;
* ``incremental verify, 100 new entries``: 100 entries appended after the checkpoint.

The incremental rows are skipped on a ``src`` without checkpoints (run it with
``PYTHONPATH=<older checkout>/src`` for the before figures).
"""

from __future__ import annotations

import argparse
import inspect
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _common import (
    add_backends_option,
    machine_facts,
    parse_backends,
    postgres_admin_url,
    postgres_database,
    postgres_problem,
)
from bastion.control.store import Store
from bastion.observe.journal import GENESIS, Journal, canonical, digest

RUN = "bench-verify-run"


def append(store: Store, journal: Journal, head: str, first: int, last: int) -> str:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with store.write() as conn:
        for seq in range(first, last + 1):
            request = {"method": "tool.call", "params": {"name": "fs.read", "args": {"path": "hello.txt"}}}
            head = journal.append(
                conn,
                run_id=RUN,
                seq=seq,
                attempt=1,
                kind="tool",
                request=request,
                request_hash=digest(canonical(request)),
                decision="allow",
                reasons=[{"rule": "grant/reads", "text": "granted by ToolGrant reads"}],
                response={"content": "hello"},
                error=None,
                started_at=start + timedelta(microseconds=seq),
                duration_us=120,
                prev_hash=head,
            ).hash
    return head


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Best-of-``repeat`` wall seconds (the machine is shared) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def measure(store: Store, n: int, repeat: int, *, incremental: bool) -> None:
    journal = Journal(store)
    head = GENESIS
    for first in range(1, n + 1, 1000):
        head = append(store, journal, head, first, min(n, first + 999))
    full, verdict = timed(lambda: journal.verify(RUN, expected_head=head, expected_count=n), repeat)
    assert verdict.ok, verdict
    print(
        f"  full verify (baseline)                  {full * 1e3:9.1f} ms  {full / n * 1e6:7.1f} us/entry  1.0000x"
    )
    if not incremental:
        print("  incremental verify: not in this src")
        return
    kwargs: dict[str, Any] = {"full": False}
    quick, verdict = timed(
        lambda: journal.verify(RUN, expected_head=head, expected_count=n, **kwargs), repeat
    )
    assert verdict.ok and verdict.verified_from == n + 1, verdict
    print(f"  incremental verify, nothing new         {quick * 1e3:9.1f} ms  {'':>16}  {quick / full:.4f}x")
    head = append(store, journal, head, n + 1, n + 100)
    t0 = time.perf_counter()
    verdict = journal.verify(RUN, expected_head=head, expected_count=n + 100, **kwargs)
    more = time.perf_counter() - t0
    assert verdict.ok and verdict.verified_from == n + 1, verdict
    print(
        f"  incremental verify, 100 new entries     {more * 1e3:9.1f} ms  {more / 100 * 1e6:7.1f} us/entry  {more / full:.4f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_backends_option(parser)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(machine_facts())
    incremental = "full" in inspect.signature(Journal.verify).parameters
    for backend in parse_backends(parser, args.backends):
        with ExitStack() as stack:
            if backend == "postgres":
                problem = postgres_problem(postgres_admin_url())
                if problem is not None:
                    print(f"\n== postgres: skipped ({problem})")
                    continue
                url = stack.enter_context(postgres_database(postgres_admin_url()))
            else:
                url = f"sqlite:///{Path(stack.enter_context(tempfile.TemporaryDirectory())) / 'verify.db'}"
            store = Store.open(url)
            stack.callback(store.close)
            print(f"\n== {backend}: {args.entries:,} entries")
            measure(store, args.entries, args.repeat, incremental=incremental)


if __name__ == "__main__":
    main()
