"""Observability benchmark: ExecutionRecord size per 1,000 calls, replay speed, and what
telemetry adds to a gateway call.

* record size: a real run of a code agent making N calls (fs.write of a short line, fs.read of
  it, uuid; round robin) on SQLite, exported with ``RecordService.export``; bytes per 1,000 calls,
  as JSON and gzipped.
* replay speed: ``Replayer`` re-executes the same agent offline against the record in a process
  sandbox, checking every request; calls per second, beside the live run's own rate in this run
  (the baseline: same agent, same calls, through the gateway and the journal).
* telemetry cost: ``GatewaySession.handle`` in-process for the same tool call with telemetry off
  and on (spans to an in-memory exporter, Prometheus instruments as always), when the Bastion
  offers telemetry (``bastion.telemetry``); target: spans + metrics add <= 50 us per call.

Run ``.venv/bin/python bench/observe.py`` (``--calls`` to change N, ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from _common import Stats, load_average, machine_facts
from bastion.api import RawDocument, validate_documents
from bastion.control import Bastion, Settings
from bastion.control.store import Principal
from bastion.execution.gateway import Attempt
from bastion.execution.runs import Replayer, RunState
from bastion.execution.runs._step import StepWriter
from bastion.execution.sandbox import ProcessBackend
from bastion.execution.tools import builtin_tools

AGENT = """
from bastion import agent

def main(input):
    for i in range(input["calls"] // 3):
        agent.tools.call("fs.write", path="line.txt", content=f"line {i}")
        agent.tools.call("fs.read", path="line.txt")
        agent.uuid()
    return {"done": input["calls"] // 3 * 3}
"""


def manifests() -> list[RawDocument]:
    tool = lambda name: {  # noqa: E731
        "apiVersion": "bastion/v1",
        "kind": "Tool",
        "metadata": {"name": name},
        "spec": {"description": name, "implementation": {"type": "builtin", "name": name}},
    }
    agent = {
        "apiVersion": "bastion/v1",
        "kind": "Agent",
        "metadata": {"name": "bench"},
        "spec": {
            "runtime": "python",
            "entrypoint": "agent:main",
            "source": textwrap.dedent(AGENT),
            "tools": ["fs.write", "fs.read"],
            "limits": {"wallSeconds": 600, "cpuSeconds": 600},
        },
    }
    grant = {
        "apiVersion": "bastion/v1",
        "kind": "ToolGrant",
        "metadata": {"name": "bench"},
        "spec": {"subjects": {"agents": ["bench"]}, "tools": ["fs.write", "fs.read"]},
    }
    return [RawDocument(body=b) for b in (tool("fs.write"), tool("fs.read"), agent, grant)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000, help="calls of the recorded run (3000)")
    parser.add_argument("--quick", action="store_true", help="a very short smoke run")
    args = parser.parse_args()
    calls = 300 if args.quick else args.calls
    print("Bastion observability benchmark (bench/observe.py)")
    print(machine_facts())
    with tempfile.TemporaryDirectory(prefix="bastion-bench-observe-") as scratch:
        home = Path(scratch)
        bastion = Bastion(Settings(home=home, poll_seconds=0.02))
        try:
            record, live_rate = record_run(bastion, calls)
            report_record(record, calls)
            report_replay(record, live_rate, home / "replay")
            report_telemetry(bastion, home / "telemetry", min(calls, 2000))
        finally:
            bastion.close()
    print(f"load average at the end: {load_average()}")
    return 0


def record_run(bastion: Bastion, calls: int) -> tuple[dict[str, Any], float]:
    with bastion.store.write() as conn:
        tenant = bastion.store.create_tenant(conn, "bench")
        _, token = bastion.store.create_key(conn, tenant, "bench", "admin")
    who = bastion.store.authenticate(token)
    assert who is not None
    with bastion.store.write() as conn:
        bastion.resources.apply(conn, who, validate_documents(manifests()))
        agent = bastion.resources.get(conn, who, "Agent", "default", "bench")
        run = bastion.runs.create(
            conn,
            tenant_id=who.tenant_id,
            namespace="default",
            agent="bench",
            agent_spec=agent.manifest(),
            input={"calls": calls},
        )
    thread, stop = bastion.start_worker()
    started = time.perf_counter()
    try:
        while True:
            with bastion.store.read() as conn:
                current = bastion.runs.get(conn, run.id)
            assert current is not None
            if current.state.finished:
                break
            time.sleep(0.02)
    finally:
        elapsed = time.perf_counter() - started
        stop.set()
        thread.join(timeout=30)
    if current.state is not RunState.SUCCEEDED:
        raise SystemExit(f"the recorded run failed: {current.reason}")
    return bastion.records.export(current), calls / elapsed


def report_record(record: dict[str, Any], calls: int) -> None:
    text = json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()
    packed = gzip.compress(text, 6)
    per_k = 1000 / calls
    print(
        f"\nrecord of a {calls}-call run: {len(text):,} bytes JSON ({len(text) * per_k / 1024:,.0f} KiB per 1,000 calls), "
        f"{len(packed):,} bytes gzipped ({len(packed) * per_k / 1024:,.0f} KiB per 1,000 calls)"
    )


def report_replay(record: dict[str, Any], live_rate: float, workspace: Path) -> None:
    workspace.mkdir()
    with ProcessBackend() as backend:
        started = time.perf_counter()
        report = Replayer(record, backend, builtin_tools()).run(workspace)
        elapsed = time.perf_counter() - started
    rate = len(report.verified) / elapsed
    verdict = "ok" if report.ok else f"DIVERGED at seq {report.divergence}: {report.reason}"
    print(
        f"replay: {len(report.verified)} calls in {elapsed:.2f} s = {rate:,.0f} calls/s ({verdict}); "
        f"the live run (baseline, same run): {live_rate:,.0f} calls/s; replay is {rate / live_rate:.1f}x as fast"
    )


def _timed_calls(bastion: Bastion, workspace: Path, calls: int, *, recording: bool) -> list[int]:
    """``GatewaySession.handle`` of one fs.read, ``calls`` times, for a claimed run of its own."""
    with bastion.store.read() as conn:
        tenant = bastion.store.tenant_by_name(conn, "bench")
        agent = bastion.resources.get(conn, _principal(bastion), "Agent", "default", "bench")
    with bastion.store.write() as conn:
        run = bastion.runs.create(
            conn,
            tenant_id=tenant.id,
            namespace="default",
            agent="bench",
            agent_spec=agent.manifest(),
            input=None,
        )
    claim = bastion.runs.claim("bench-owner", 600)
    assert claim is not None and claim.run.id == run.id
    writer = StepWriter(bastion.store)
    (workspace / "f.txt").write_text("hello")
    durations: list[int] = []
    with (
        writer.held() as held,
        bastion.telemetry.run_span(
            run_id=run.id, agent="bench", attempt=claim.run.attempt, namespace="default", tenant="bench"
        ) as span,
    ):
        attempt = Attempt(
            run_id=run.id,
            attempt=claim.run.attempt,
            tenant_id=tenant.id,
            namespace="default",
            agent="bench",
            agent_spec=agent.manifest(),
            workspace=workspace,
            fence=lambda conn: bastion.runs.fence(conn, run.id, claim.run.attempt, "bench-owner"),
            commit=lambda prepared, events: held.commit(
                run_id=run.id,
                attempt=claim.run.attempt,
                owner="bench-owner",
                prepared=prepared,
                events=events,
                at=bastion.clock.now(),
            ),
            span=span,
            query=held.first,
        )
        session = bastion.gateway.session(attempt)
        clock = time.perf_counter_ns
        for _ in range(calls):
            started = clock()
            session.handle("tool.call", {"name": "fs.read", "args": {"path": "f.txt"}})
            durations.append(clock() - started)
    assert bastion.telemetry.recording == recording
    with bastion.store.write() as conn:
        bastion.runs.transition(
            conn, claim.run, "bench-owner", RunState.SUCCEEDED, journal=session.journal_head
        )
    return durations


def _principal(bastion: Bastion) -> Principal:
    with bastion.store.write() as conn:
        tenant = bastion.store.tenant_by_name(conn, "bench")
        _, token = bastion.store.create_key(conn, tenant, f"k{time.monotonic_ns() % 100000}", "admin")
    who = bastion.store.authenticate(token)
    assert who is not None
    return who


def report_telemetry(bastion: Bastion, workspace: Path, calls: int) -> None:
    workspace.mkdir()
    off = Stats.of_ns(_timed_calls(bastion, workspace, calls, recording=False))
    spans = InMemorySpanExporter()
    bastion.telemetry.add_exporter(spans)
    on = Stats.of_ns(_timed_calls(bastion, workspace, calls, recording=True))
    added = on.p50 - off.p50
    print(
        f"\ntelemetry cost, GatewaySession.handle of one fs.read on SQLite ({calls} calls each, journal on in both):"
    )
    print(
        f"  spans off (the default; Prometheus on):   p50 {off.p50 * 1000:6.1f} us  mean {off.mean * 1000:6.1f} us"
    )
    print(
        f"  spans to an in-memory exporter:           p50 {on.p50 * 1000:6.1f} us  mean {on.mean * 1000:6.1f} us  ({len(spans.get_finished_spans())} spans)"
    )
    verdict = "PASS" if added <= 0.050 else "FAIL"
    print(
        f"{verdict}: recording spans adds {added * 1000:.1f} us per call at p50 (target <= 50 us; Prometheus "
        "instruments are on in both rows, so this is the span cost over the default)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
