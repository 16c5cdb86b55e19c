"""Governance costs on a tool call's path that are not the journal: the pre-effect fence and the
session's policy (issue 23, items 3 and 4).

Rows, per backend, each timed per call (``perf_counter_ns``, and CPU with ``thread_time_ns``):

* fence before an external effect, over a claimed run:
  - ``fenced read transaction`` (baseline): ``Database.read()`` + ``RunStore.fence``, through
    SQLAlchemy, what a session without a lease does (the issue's 132 us);
  - ``lease renew on the held connection``: ``_Lease.renew``, an UPDATE in a write transaction
    (on SQLite: the process's write lock, BEGIN IMMEDIATE, COMMIT);
  - ``lease confirm on the held connection``: ``_Lease.confirm`` (when src has it), one read of
    the run's row on the attempt's connection, no transaction.
* the session's policy with 10 and 1,000 ToolGrants (and one Policy):
  - ``reload`` (baseline): read the namespace's Policies and ToolGrants and compile them, what each
    session did once a second before, and what a change costs now (once per gateway);
  - ``policy() per call``: ``GatewaySession.policy()`` in steady state (nothing changes): with
    the stamp (when src has it), one primary-key read on the held connection and a dict hit;
    before, a monotonic clock read and a tuple (plus the reload once a second).
  - CPU per session-second at 10 and 100 calls/s, derived from the CPU columns: before = reload
    + rate x per call; now = rate x per call (a reload happens once per change, shared by every
    session of the gateway).

Run ``.venv/bin/python bench/governance.py`` (``--quick`` for a smoke run). Run it with
``PYTHONPATH=<an older checkout>/src`` to get the before rows from the same script.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Generator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

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
from bastion.api import RawDocument, validate_documents
from bastion.control import Bastion, Settings
from bastion.control.store import Principal
from bastion.execution.gateway import Attempt
from bastion.execution.runs import _step as step_module  # pyright: ignore[reportPrivateUsage]
from bastion.execution.runs import _worker as worker_module  # pyright: ignore[reportPrivateUsage]
from bastion.policy import compile_policy

OWNER = "bench-worker"


def manifests(grants: int) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "bastion/v1",
            "kind": "Tool",
            "metadata": {"name": "fs.list"},
            "spec": {"description": "list", "implementation": {"type": "builtin", "name": "fs.list"}},
        },
        {
            "apiVersion": "bastion/v1",
            "kind": "Agent",
            "metadata": {"name": "bench"},
            "spec": {
                "runtime": "python",
                "entrypoint": "agent:main",
                "source": "def main(i):\n    return i\n",
                "tools": ["fs.list"],
            },
        },
        {
            "apiVersion": "bastion/v1",
            "kind": "Policy",
            "metadata": {"name": "guard"},
            "spec": {"rules": [{"id": "no-drop", "blockedPatterns": [{"pattern": "DROP TABLE"}]}]},
        },
    ]
    for i in range(grants):
        docs.append(
            {
                "apiVersion": "bastion/v1",
                "kind": "ToolGrant",
                "metadata": {"name": f"grant-{i:04d}"},
                "spec": {
                    "subjects": {"agents": ["bench" if i == 0 else f"other-{i}"]},
                    "tools": ["fs.list"],
                    "rateLimit": {"calls": 1000, "per": "1m"},
                },
            }
        )
    return docs


@contextmanager
def bastion_on(url: str | None) -> Generator[tuple[Bastion, Principal]]:
    with tempfile.TemporaryDirectory(prefix="bastion-bench-governance-") as home:
        settings = Settings(
            home=Path(home),
            database_url=url or f"sqlite:///{Path(home) / 'bastion.db'}",
            workspace_dir=Path(home) / "workspaces",
            lease_seconds=30.0,
        )
        bastion = Bastion(settings)
        try:
            first = bastion.bootstrap()
            assert first is not None
            principal = bastion.store.authenticate(first.admin_key)
            assert principal is not None
            yield bastion, principal
        finally:
            bastion.close()


def timed(fn: Callable[[], Any], calls: int, warmup: int) -> tuple[Stats, float]:
    """Latency stats (ms) and mean CPU per call (ms) of ``fn``."""
    for _ in range(warmup):
        fn()
    durations: list[int] = []
    cpu0 = time.thread_time_ns()
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        fn()
        durations.append(time.perf_counter_ns() - t0)
    cpu = (time.thread_time_ns() - cpu0) / calls / 1e6
    return Stats.of_ns(durations), cpu


def row(name: str, stats: Stats, cpu: float, baseline: float) -> None:
    print(
        f"  {name:<58} p50 {fmt_ms(stats.p50 * 1000, 1):>8} us  p95 {fmt_ms(stats.p95 * 1000, 1):>8} us"
        f"  cpu {fmt_ms(cpu * 1000, 1):>8} us  {stats.p50 / baseline:>9.4f}x"
    )


def fence_rows(bastion: Bastion, principal: Principal, calls: int, warmup: int) -> None:
    with bastion.store.write() as conn:
        bastion.resources.apply(
            conn, principal, validate_documents([RawDocument(body=d) for d in manifests(1)])
        )
        run = bastion.runs.create(
            conn,
            tenant_id=principal.tenant_id,
            namespace="default",
            agent="bench",
            agent_spec=manifests(1)[1],
            input=None,
        )
    claim = bastion.runs.claim(OWNER, 30.0)
    assert claim is not None and claim.run.id == run.id
    steps = step_module.StepWriter(bastion.store)

    def read_fence() -> None:
        with bastion.store.read() as conn:
            bastion.runs.fence(conn, claim.run.id, claim.run.attempt, OWNER)

    print("fence before an external effect")
    base, base_cpu = timed(read_fence, calls, warmup)
    row("fenced read transaction (SQLAlchemy; baseline)", base, base_cpu, base.p50)
    with steps.held() as writer:
        runner = SimpleNamespace(
            w=SimpleNamespace(config=SimpleNamespace(lease_seconds=30.0), runs=bastion.runs),
            writer=writer,
            run_=claim.run,
            claim=claim,
            lost=SimpleNamespace(set=lambda: None, is_set=lambda: False),
        )
        lease: Any = worker_module._Lease(runner, time.monotonic())  # pyright: ignore[reportPrivateUsage, reportArgumentType]
        stats, cpu = timed(lease.renew, calls, warmup)
        row("lease renew on the held connection (write)", stats, cpu, base.p50)
        if hasattr(lease, "confirm"):
            stats, cpu = timed(lease.confirm, calls, warmup)
            row("lease confirm on the held connection (read)", stats, cpu, base.p50)
        else:
            print("  lease confirm on the held connection: not in this src")


def policy_rows(
    bastion: Bastion, principal: Principal, grants: int, calls: int, warmup: int, tmp: Path
) -> None:
    namespace = f"g{grants}"
    with bastion.store.write() as conn:
        bastion.store.create_namespace(conn, principal.tenant_id, namespace)
        docs = [{**d, "metadata": {**d["metadata"], "namespace": namespace}} for d in manifests(grants)]
        bastion.resources.apply(conn, principal, validate_documents([RawDocument(body=d) for d in docs]))
    reader = bastion.gateway.resources

    def reload() -> None:
        policies = reader.resources(principal.tenant_id, "Policy", namespace)
        found = reader.resources(principal.tenant_id, "ToolGrant", namespace)
        compile_policy(policies, found)

    print(f"session policy, {grants} ToolGrants")
    base, base_cpu = timed(reload, max(3, calls // (20 if grants < 100 else 200)), 1)
    row("reload: read + compile (baseline)", base, base_cpu, base.p50)
    with ExitStack() as stack:
        fields: dict[str, Any] = {}
        if "query" in Attempt.__dataclass_fields__:
            fields["query"] = stack.enter_context(step_module.StepWriter(bastion.store).held()).first
        session = bastion.gateway.session(
            Attempt(
                run_id=f"policy-{grants}",
                attempt=1,
                tenant_id=principal.tenant_id,
                namespace=namespace,
                agent="bench",
                agent_spec=manifests(1)[1],
                workspace=tmp,
                fence=lambda conn: None,
                commit=lambda prepared, events: None,
                **fields,
            )
        )
        session.policy()
        # Steady state between reloads: before, a reload happened once a second inside this loop
        # too; the per-call figure here is the p50 (the reload is accounted for below).
        stats, cpu = timed(session.policy, calls, warmup)
        row("policy() per call, steady state", stats, cpu, base.p50)
    stamped = "query" in fields
    for rate in (10, 100):
        total = rate * cpu if stamped else base_cpu + rate * cpu
        print(
            f"  CPU per session-second at {rate:>3} calls/s: {fmt_ms(total, 3)} ms"
            f" ({'a stamp read per call, no reload' if stamped else 'one reload a second + the calls'})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_backends_option(parser)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    backends = parse_backends(parser, args.backends)
    calls = 200 if args.quick else args.calls
    warmup = calls // 10
    print(machine_facts())
    for backend in backends:
        with ExitStack() as stack:
            url: str | None = None
            if backend == "postgres":
                problem = postgres_problem(postgres_admin_url())
                if problem is not None:
                    print(f"\n== postgres: skipped ({problem})")
                    continue
                url = stack.enter_context(postgres_database(postgres_admin_url()))
            print(f"\n== {backend}")
            bastion, principal = stack.enter_context(bastion_on(url))
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            fence_rows(bastion, principal, calls, warmup)
            for grants in (10, 1000):
                policy_rows(bastion, principal, grants, calls, warmup, tmp)


if __name__ == "__main__":
    main()
