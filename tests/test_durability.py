"""Durable runs under real crashes (DESIGN §1 invariants 4-5, "Durable runs in detail").

The workers here are separate OS processes (``bastion worker``), so SIGKILL and SIGSTOP hit them for
real; the test process only serves the API and reads the store. The one external tool is a counting
HTTP server that records every request with its ``Idempotency-Key`` (``run_id:seq``) and answers
with the execution's number, so effects are counted where they happen and each journaled answer
names the execution it came from.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from bastion.api import RawDocument
from bastion.client import BastionClient
from bastion.control import Bastion, Settings, create_app
from bastion.execution.runs import ACTIVE, Event, Run, RunState
from bastion.observe.journal import Entry, journal_entries
from bastion.testing import serve_in_thread

from ._agents import builtin_tool, code_agent, grant_for, http_tool
from ._docs import raw
from .conftest import BACKENDS, PostgresDatabases

pytestmark = pytest.mark.slow

MASTER_KEY = "ab" * 32
"""Given to the test's Bastion and to every worker process, so both open the same secrets."""
POLL_SECONDS = 0.05
T = TypeVar("T")


# --- the counting tool ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Effect:
    """One request the counting server executed."""

    key: str
    """The Idempotency-Key the gateway sent: ``run_id:seq``."""
    body: dict[str, Any]
    n: int
    """This execution's number, unique for the server's life; the answer carries it."""
    at: float
    """``time.monotonic()`` when the request arrived."""


class Hold:
    """Keeps one request waiting at the server until the test releases it."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.released = threading.Event()

    def wait_arrived(self, what: str, timeout: float = 30.0) -> None:
        if not self.arrived.wait(timeout):
            raise AssertionError(f"{what} did not reach the counting server in {timeout} s")


class CountingTool:
    """The state of the counting server: every effect in arrival order, and requests to hold."""

    def __init__(self) -> None:
        self.url = ""
        self.delay = 0.0
        """Seconds each request takes after it is recorded: a crash in this window leaves the
        effect done but not journaled (a call in flight)."""
        self._lock = threading.Lock()
        self._effects: list[Effect] = []
        self._holds: dict[tuple[str, int], Hold] = {}

    def hold(self, key: str, nth: int = 1) -> Hold:
        """Hold the ``nth`` request with ``key`` (after recording it) until released."""
        hold = Hold()
        with self._lock:
            self._holds[key, nth] = hold
        return hold

    def record(self, key: str, body: dict[str, Any]) -> tuple[Effect, Hold | None]:
        with self._lock:
            effect = Effect(key=key, body=body, n=len(self._effects) + 1, at=time.monotonic())
            self._effects.append(effect)
            nth = sum(1 for e in self._effects if e.key == key)
            return effect, self._holds.get((key, nth))

    def effects(self, run_id: str | None = None) -> list[Effect]:
        with self._lock:
            found = list(self._effects)
        return [e for e in found if run_id is None or e.key.startswith(f"{run_id}:")]

    def by_key(self, run_id: str) -> dict[str, list[Effect]]:
        grouped: dict[str, list[Effect]] = defaultdict(list)
        for effect in self.effects(run_id):
            grouped[effect.key].append(effect)
        return grouped

    def release_all(self) -> None:
        with self._lock:
            holds = list(self._holds.values())
        for hold in holds:
            hold.released.set()


@contextlib.contextmanager
def counting_server() -> Generator[CountingTool]:
    tool = CountingTool()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(length)
            if len(data) != length:  # the caller died mid-request: nothing to execute
                return
            body = cast(dict[str, Any], json.loads(data or b"{}"))
            effect, hold = tool.record(self.headers.get("Idempotency-Key", ""), body)
            if hold is not None:
                hold.arrived.set()
                hold.released.wait(60)
            time.sleep(tool.delay)
            data = json.dumps({"n": effect.n}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the caller was killed
                self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="counting-server", daemon=True)
    thread.start()
    tool.url = f"http://127.0.0.1:{server.server_address[1]}/count"
    try:
        yield tool
    finally:
        tool.release_all()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def answer_n(entry: Entry) -> int:
    """The execution number in a journaled answer of the counting tool."""
    response = cast(dict[str, Any], entry.response)
    return int(json.loads(response["body"])["n"])


# --- worker processes and the cluster ----------------------------------------------------------


@dataclass(frozen=True)
class WorkerProcess:
    """One ``bastion worker`` process; its stdout and stderr go to ``log``."""

    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def owns(self, owner: str | None) -> bool:
        """Whether a lease owner (``host:pid:token``) is this process."""
        return owner is not None and f":{self.pid}:" in owner

    def ready(self) -> bool:
        return b"worker started" in self.log.read_bytes()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class Cluster:
    """A Bastion store and API in this process; workers as separate processes over the same database."""

    def __init__(self, backend: str, database_url: str, tmp_path: Path, tool: CountingTool) -> None:
        self.backend, self.database_url, self.tmp_path, self.tool = backend, database_url, tmp_path, tool
        self.home = tmp_path / "home"
        # Where agents leave files for the test: as root the process backend runs each agent under
        # an unprivileged uid of its own, which can neither traverse tmp_path nor write root's files.
        self.shared = Path(tempfile.mkdtemp(prefix="bastion-durability-"))
        self.shared.chmod(0o777)
        self.bastion = Bastion(
            Settings(home=self.home, database_url=database_url, master_key=SecretStr(MASTER_KEY))
        )
        first = self.bastion.bootstrap()
        assert first is not None
        self.admin_key = first.admin_key
        with self.bastion.store.read() as conn:
            self.tenant_id = next(t.id for t in self.bastion.store.list_tenants(conn) if t.system)
        self.client: BastionClient | None = None
        self.lease_seconds = 1.0
        self.concurrency = 4
        self.workers: list[WorkerProcess] = []
        """Every worker process this cluster started, alive or not."""

    @property
    def api(self) -> BastionClient:
        assert self.client is not None
        return self.client

    @property
    def workspaces(self) -> Path:
        return self.bastion.settings.resolved_workspace_dir

    # --- workers ---------------------------------------------------------------------------

    def start_worker(self, *options: str) -> WorkerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
        env.update(
            BASTION_HOME=str(self.home),
            BASTION_DATABASE_URL=self.database_url,
            BASTION_MASTER_KEY=MASTER_KEY,
            BASTION_LEASE_SECONDS=str(self.lease_seconds),
            BASTION_POLL_SECONDS=str(POLL_SECONDS),
            BASTION_WORKER_CONCURRENCY=str(self.concurrency),
            # The run engine is under test, not isolation: agents here watch their worker die
            # (os.getppid), which a pid namespace hides. Warm pools would blur the kill timings.
            BASTION_SANDBOX="process",
            BASTION_POOL_SIZE="0",
        )
        log = self.tmp_path / f"worker-{len(self.workers) + 1}.log"
        with log.open("wb") as handle:
            process = subprocess.Popen(
                [sys.executable, "-c", "from bastion.cli import main; main()", "worker", *options],
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        worker = WorkerProcess(process, log)
        self.workers.append(worker)
        return worker

    def freeze(self, worker: WorkerProcess, run_id: str, *others: str) -> None:
        """SIGSTOP the worker at a moment it holds no lock on the run's row (or SQLite's write lock).

        A process frozen inside its lease-renewal transaction keeps the row locked: claims skip
        locked rows, so nobody could take the run over until it wakes up, which is right in
        production and makes the scenario under test impossible. Such a stop is undone and retried.
        """
        for _ in range(100):
            worker.process.send_signal(signal.SIGSTOP)
            time.sleep(0.01)
            if all(self._run_row_free(r) for r in (run_id, *others)):
                return
            worker.process.send_signal(signal.SIGCONT)
            time.sleep(0.005)
        raise AssertionError("could not freeze the worker outside a transaction on the run")

    def _run_row_free(self, run_id: str) -> bool:
        engine = self.bastion.store.engine
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                try:
                    conn.exec_driver_sql("SELECT 1 FROM runs WHERE id = %s FOR UPDATE NOWAIT", (run_id,))
                except OperationalError:
                    return False
                finally:
                    conn.rollback()
            return True
        probe = sqlite3.connect(self.database_url.removeprefix("sqlite:///"), timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
        except sqlite3.OperationalError:
            return False
        finally:
            probe.close()
        return True

    def lost_leases(self, worker: WorkerProcess) -> int:
        """How many attempts ``worker`` abandoned because it found its lease lost."""
        return worker.output().count("lost its lease; abandoning it")

    def kill(self, worker: WorkerProcess) -> None:
        worker.process.send_signal(signal.SIGKILL)
        worker.process.wait()

    def outputs(self) -> str:
        return "\n".join(f"--- worker {w.pid} ---\n{w.output()}" for w in self.workers)

    def close(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGKILL)
            worker.process.wait()
        _kill_stray_sandboxes(self.workspaces)
        self.bastion.close()
        shutil.rmtree(self.shared, ignore_errors=True)

    # --- the store, read from this process -------------------------------------------------

    def apply(self, *manifests: dict[str, Any]) -> None:
        documents: list[RawDocument] = raw(*manifests)
        self.api.apply(documents)

    def create_run(self, agent: str, input: Any) -> str:
        return str(self.api.create_run(agent, input)["id"])

    def run(self, run_id: str) -> Run:
        with self.bastion.store.read() as conn:
            found = self.bastion.runs.get(conn, run_id)
        assert found is not None
        return found

    def unfinished(self) -> list[Run]:
        with self.bastion.store.read() as conn:
            found, _ = self.bastion.runs.list(conn, tenant_id=self.tenant_id, namespace=None, limit=500)
        return [r for r in found if not r.state.finished]

    def entries(self, run_id: str) -> list[Entry]:
        return self.bastion.journal.entries(run_id)

    def journaled(self) -> int:
        """Journal entries committed over all runs."""
        with self.bastion.store.read() as conn:
            return int(conn.execute(select(func.count()).select_from(journal_entries)).scalar_one())

    def events(self, run_id: str) -> list[Event]:
        with self.bastion.store.read() as conn:
            return self.bastion.runs.events(conn, run_id, limit=10_000)

    def takeovers(self, run_id: str) -> list[Event]:
        return [e for e in self.events(run_id) if e.type == "state" and "takeover" in e.data]

    def verify(self, run_id: str) -> None:
        run = self.run(run_id)
        verdict = self.bastion.journal.verify(
            run_id, expected_head=run.journal_head, expected_count=run.journal_count
        )
        assert verdict.ok, verdict

    def wait_finished(self, run_id: str, timeout: float = 30.0) -> Run:
        return wait_until(
            f"run {run_id} to finish",
            lambda: run if (run := self.run(run_id)).state.finished else None,
            timeout,
            self.outputs,
        )


def wait_until(
    what: str, check: Callable[[], T | None], timeout: float, diagnose: Callable[[], str] = str
) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value is not None and value is not False:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{diagnose()}")


def _kill_stray_sandboxes(workspaces: Path) -> None:
    """Agents of killed workers exit when their channel closes; kill any still working in our workspaces."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if cwd.startswith(str(workspaces)):
            with contextlib.suppress(OSError):
                os.kill(int(proc.name), signal.SIGKILL)


@pytest.fixture(params=BACKENDS)
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'bastion.db'}"
    else:
        databases: PostgresDatabases = request.getfixturevalue("postgres")
        url = databases.create()
    with counting_server() as tool:
        built = Cluster(request.param, url, tmp_path, tool)
        try:
            with (
                serve_in_thread(create_app(built.bastion)) as api,
                BastionClient(api, built.admin_key) as client,
            ):
                built.client = client
                yield built
        finally:
            built.close()


# Agents block here after a planned crash point; a killed worker's agent is re-parented and exits.
WAIT_FOR_CRASH = """
def wait_for_the_crash():
    worker = os.getppid()
    while os.getppid() == worker:
        time.sleep(0.01)
    os._exit(0)
"""


def count_agent(name: str, source: str, *extra_tools: str) -> list[dict[str, Any]]:
    return [code_agent(name, source, tools=["count", *extra_tools]), grant_for(name, "count", *extra_tools)]


def use_counting_tool(cluster: Cluster, *manifests: dict[str, Any]) -> None:
    cluster.apply(http_tool("count", cluster.tool.url), *manifests)


def stamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# --- 1. chaos -----------------------------------------------------------------------------------

CHAOS_AGENT = """
import json
from bastion import agent

def main(input):
    received = []
    for i in range(1, input["calls"] + 1):
        answer = agent.tools.call("count", run=input["run"], i=i)
        received.append(json.loads(answer["body"])["n"])
    return received
"""
RUNS, CALLS, IN_FLIGHT, KILLS = 20, 30, 4, 8


def _may_kill(cluster: Cluster, live: list[WorkerProcess]) -> bool:
    """A kill lands on a cluster at work, not on one still recovering from the last kill (whose
    takeover time would then be a restart time). Attempts killed beside other runs are no
    evidence against them, so no kill can make a run a poison run here."""
    if not all(w.ready() for w in live):
        return False
    return all(
        not (run.state in ACTIVE and not any(w.owns(run.lease_owner) for w in live))
        for run in cluster.unfinished()
    )


def test_chaos_workers_killed_at_random_moments(cluster: Cluster) -> None:
    """20 runs of a 30-call agent while workers are SIGKILLed: one worker on SQLite (restarted at
    once), two on PostgreSQL (one killed and restarted, the other takes over)."""
    rng = random.Random(1234)
    sqlite = cluster.backend == "sqlite"
    # With a single worker the dead one's replacement must be running when the lease expires, or
    # the takeover time would measure Python's start-up (about 1.2 s here), not the engine.
    cluster.lease_seconds = 2.0 if sqlite else 1.0
    cluster.concurrency = IN_FLIGHT
    cluster.tool.delay = 0.08
    use_counting_tool(cluster, *count_agent("chaos", CHAOS_AGENT))
    live = [cluster.start_worker() for _ in range(1 if sqlite else 2)]
    # The kill moments are points in the work (journal entries committed over all runs), drawn
    # once, so they spread over the whole test whatever the machine's speed.
    moments = sorted(rng.sample(range(20, RUNS * CALLS * 2 // 3), KILLS))
    killed: list[WorkerProcess] = []
    killed_at: list[float] = []
    started_at = {w.pid: time.monotonic() for w in live}
    ready_after: dict[int, float] = {}
    """Seconds each worker took from its start to being ready to claim."""
    runs: dict[str, int] = {}
    # The budget follows the work, not the clock: the test fails when nothing moves (no journal
    # entry, no finished run) for a minute, however loaded the machine is.
    progress, moved = -1, time.monotonic()
    while True:
        seen = cluster.journaled() + sum(1 for r in runs if cluster.run(r).state.finished)
        if seen != progress:
            progress, moved = seen, time.monotonic()
        assert time.monotonic() - moved < 60, f"the chaos stalled for a minute\n{cluster.outputs()}"
        unfinished = {r.id for r in cluster.unfinished()}
        # Kills wait for every worker to be ready, which a loaded machine makes slow: while some
        # are still to land, more runs are started (up to three times as many) for them to hit.
        wanted = RUNS if len(killed) == KILLS else 3 * RUNS
        if len(runs) >= wanted and not unfinished:
            break
        # At most IN_FLIGHT runs at once: a surviving worker always has room to take over.
        while len(runs) < wanted and len(unfinished) < IN_FLIGHT:
            run_id = cluster.create_run("chaos", {"run": len(runs), "calls": CALLS})
            runs[run_id] = len(runs)
            unfinished.add(run_id)
        if len(killed) < KILLS and cluster.journaled() >= moments[len(killed)]:
            victim = live[rng.randrange(len(live))]
            if _may_kill(cluster, live):
                cluster.kill(victim)
                killed.append(victim)
                killed_at.append(time.monotonic())
                live[live.index(victim)] = replacement = cluster.start_worker()
                started_at[replacement.pid] = time.monotonic()
        for worker in live:
            if worker.pid not in ready_after and worker.ready():
                ready_after[worker.pid] = time.monotonic() - started_at[worker.pid]
        time.sleep(0.02)

    assert len(killed) >= KILLS * 3 // 4, f"only {len(killed)} kills landed in {len(runs)} runs"
    resumed = 0
    for run_id, index in runs.items():
        run = cluster.run(run_id)
        assert run.state is RunState.SUCCEEDED, (run.state, run.reason, cluster.outputs())
        entries = cluster.entries(run_id)
        assert [e.seq for e in entries] == list(range(1, CALLS + 1))
        cluster.verify(run_id)
        assert [e.attempt for e in entries] == sorted(e.attempt for e in entries)
        journaled = [answer_n(e) for e in entries]
        # The agent saw exactly the journaled answers, whether replayed or live.
        assert run.result == journaled
        executions = cluster.tool.by_key(run_id)
        assert set(executions) == {f"{run_id}:{seq}" for seq in range(1, CALLS + 1)}
        for seq, answer in enumerate(journaled, start=1):
            done = executions[f"{run_id}:{seq}"]
            assert all(e.body == {"run": index, "i": seq} for e in done), (run_id, seq, done)
            # The journaled execution is the last one: nothing ran again once it was committed.
            assert answer == done[-1].n, (run_id, seq, done)
            # A call ran again only after the worker that ran it was killed.
            for earlier, later in itertools.pairwise(done):
                assert any(earlier.at < k < later.at for k in killed_at), (run_id, seq, done)
        takeovers = cluster.takeovers(run_id)
        assert run.attempt == 1 + len(takeovers)
        # Calls are sequential, so each dead attempt had at most one call in flight.
        duplicates = sum(len(done) - 1 for done in executions.values())
        assert duplicates <= len(takeovers), (run_id, duplicates, takeovers)
        for takeover in takeovers:
            lost: dict[str, Any] = takeover.data["takeover"]
            # Only dead workers lose runs: a live one keeps its lease renewed.
            assert any(w.owns(lost["from"]) for w in killed), (takeover, [w.pid for w in killed])
            late = (takeover.at - stamp(lost["leaseExpiredAt"])).total_seconds()
            # With one worker (SQLite) the run waits for the dead one's replacement to start, and
            # its lease (2 s) hides only part of that start on a loaded machine. The 1 s target is
            # measured by bench/chaos.py; this bound catches a takeover that waits for a restart
            # when a live worker could take the run (9.5 s at p50 before), without failing on a
            # busy machine's scheduling.
            bound = 3.0 + (max(ready_after.values()) - cluster.lease_seconds if sqlite else 0.0)
            assert late <= max(bound, 3.0), f"run {run_id} was resumed {late:.2f} s after its lease expired"
        resumed += len(takeovers)
    assert resumed >= KILLS // 2, f"the kills hit only {resumed} attempts"


@dataclass(kw_only=True)
class Chaos:
    """What a chaos run measured (``chaos``)."""

    runs: dict[str, Run]
    kills: int
    from_kill: list[float]
    """Seconds from each kill to the takeover of each run the killed worker held."""
    from_expiry: list[float]
    """Seconds from the expiry of each dead worker's lease to the takeover."""
    quarantined: list[float]
    """The same for runs in quarantine (suspected of killing workers), which wait for a worker
    with nothing else to run."""
    late_sends: list[str]
    """Calls executed again after an attempt had journaled them (``run_id:seq``)."""
    leftovers: list[str]
    seconds: float

    def failed(self) -> dict[str, str | None]:
        return {r.id: r.reason for r in self.runs.values() if r.state is not RunState.SUCCEEDED}


def chaos(
    cluster: Cluster,
    *,
    runs: int,
    workers: int,
    calls: int,
    kill_every: tuple[float, float] = (1.0, 3.0),
    seed: int = 1234,
    stall_seconds: float = 60.0,
) -> Chaos:
    """``runs`` runs of a ``calls``-call agent on ``workers`` worker processes, one of them
    SIGKILLed every ``kill_every`` seconds (and replaced at once) until the runs are done.

    The test's budget scales with the work: it fails only when nothing moves (no journal entry,
    no finished run) for ``stall_seconds``, however slow the machine is."""
    rng = random.Random(seed)
    cluster.concurrency = 4
    cluster.tool.delay = 0.03
    use_counting_tool(cluster, *count_agent("chaos", CHAOS_AGENT))
    live = [cluster.start_worker() for _ in range(workers)]
    wait_until("the workers to start", lambda: all(w.ready() for w in live), 120, cluster.outputs)
    began = time.monotonic()
    ids = {cluster.create_run("chaos", {"run": i, "calls": calls}): i for i in range(runs)}
    killed: dict[int, float] = {}
    """pid of each killed worker -> when (wall clock, as the store's stamps)."""
    next_kill = time.monotonic() + rng.uniform(*kill_every)
    progress, moved = -1, time.monotonic()
    while True:
        unfinished = cluster.unfinished()
        if not unfinished:
            break
        now = time.monotonic()
        seen = cluster.journaled() - len(unfinished)
        if seen != progress:
            progress, moved = seen, now
        if now - moved >= stall_seconds:
            stuck = "\n".join(
                f"{r.id} {r.state} attempt={r.attempt} owner={r.lease_owner} expires={r.lease_expires_at}"
                for r in unfinished
            )
            live_pids = [(w.pid, w.process.poll(), w.ready()) for w in live]
            for worker in live:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signal.SIGUSR1)  # each prints its threads' stacks
            time.sleep(1)
            raise AssertionError(
                f"nothing moved for {stall_seconds:g} s; now {datetime.now(UTC)}\n{stuck}\n"
                f"live: {live_pids}\n{cluster.outputs()[-20_000:]}"
            )
        # The last few runs are left alone: a run dying alone on its worker is, by design,
        # evidence against it, and the tail would make every run alone.
        # Only workers at work are killed (one still starting holds nothing to take over), and
        # never the last one ready: a takeover needs a live worker, not a restarted one.
        ready = [w for w in live if w.ready()]
        if now >= next_kill and len(unfinished) > workers and len(ready) >= min(2, workers):
            victim = ready[rng.randrange(len(ready))]
            cluster.kill(victim)
            killed[victim.pid] = time.time()
            live[live.index(victim)] = cluster.start_worker()
            next_kill = now + rng.uniform(*kill_every)
        time.sleep(0.05)
    seconds = time.monotonic() - began

    from_kill: list[float] = []
    from_expiry: list[float] = []
    quarantined: list[float] = []
    late: list[str] = []
    finished: dict[str, Run] = {}
    for run_id in ids:
        finished[run_id] = cluster.run(run_id)
        entries = cluster.entries(run_id)
        executions = cluster.tool.by_key(run_id)
        for entry in entries:
            done = executions.get(f"{run_id}:{entry.seq}", [])
            # The journaled execution must be the last one: nothing ran once it was recorded.
            if done and answer_n(entry) != done[-1].n:
                late.append(f"{run_id}:{entry.seq}")
        for takeover in cluster.takeovers(run_id):
            lost: dict[str, Any] = takeover.data["takeover"]
            pid = next((p for p in killed if f":{p}:" in str(lost["from"])), None)
            if pid is not None:
                from_kill.append(takeover.at.timestamp() - killed[pid])
            waited = (takeover.at - stamp(lost["leaseExpiredAt"])).total_seconds()
            # A quarantined run waits for a worker with nothing else to run: measured apart.
            (quarantined if takeover.data.get("alone") else from_expiry).append(waited)
    for worker in live:
        worker.process.send_signal(signal.SIGTERM)
    for worker in live:
        worker.process.wait(timeout=60)
    return Chaos(
        runs=finished,
        kills=len(killed),
        from_kill=from_kill,
        from_expiry=from_expiry,
        quarantined=quarantined,
        late_sends=late,
        leftovers=leftovers(cluster, [w.pid for w in cluster.workers]),
        seconds=seconds,
    )


def leftovers(cluster: Cluster, pids: list[int]) -> list[str]:
    """What the cluster's workers left on the host once they stopped: processes working in its
    workspaces, mounts under its home, and cgroups of its workers' sandboxes. Dead workers'
    cgroups are removed by the sweep every backend makes when it opens (as a restarted worker
    does): that sweep runs first."""
    from bastion.execution.sandbox import open_backend

    open_backend("process", state_dir=cluster.bastion.settings.sandbox_state_dir).close()
    found: list[str] = []
    deadline = time.monotonic() + 5
    while True:
        found = []
        for proc in Path("/proc").iterdir():
            with contextlib.suppress(OSError):
                if proc.name.isdigit() and os.readlink(proc / "cwd").startswith(str(cluster.workspaces)):
                    found.append(f"process {proc.name} in {os.readlink(proc / 'cwd')}")
        if not found or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    found += [f"mount {line.split()[4]}" for line in mounts if str(cluster.home) in line]
    for pid in pids:
        found += [f"cgroup {p}" for p in Path("/sys/fs/cgroup").glob(f"*/bastion/process-{pid}-*")]
    return found


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


@pytest.mark.parametrize("backend", ["postgres"])
def test_three_workers_killed_every_one_to_three_seconds(
    backend: str, postgres: PostgresDatabases, tmp_path: Path
) -> None:
    """The chaos of bench/chaos.py, smaller: 24 runs on three workers, one killed every 1-3 s.
    No run is lost or failed as poison, no effect is sent after a newer attempt recorded it (the
    counting tool ignores idempotency keys), live workers take a dead one's runs over within a
    second of the lease expiring, and nothing is left behind."""
    with counting_server() as tool:
        cluster = Cluster(backend, postgres.create(), tmp_path, tool)
        try:
            with (
                serve_in_thread(create_app(cluster.bastion)) as api,
                BastionClient(api, cluster.admin_key) as client,
            ):
                cluster.client = client
                figures = chaos(cluster, runs=24, workers=3, calls=30)
        finally:
            cluster.close()
    assert figures.kills >= 2, f"only {figures.kills} kills landed"
    assert figures.failed() == {}, figures.failed()
    assert len(figures.runs) == 24
    assert figures.late_sends == []
    assert figures.from_expiry, "no run was taken over"
    # Live workers take a dead one's runs at their next poll (target: within 1 s of the lease
    # expiring). A shared 2-core machine delays a claim now and then, and starting replacement
    # workers compete for it, so only the median is held to the target; before, it was 9.5 s.
    waits = sorted(figures.from_expiry)
    assert percentile(waits, 0.5) <= 1.0 and waits[-1] <= 5.0, waits
    assert figures.leftovers == []


# --- 2. zombies ---------------------------------------------------------------------------------

ZOMBIE_AGENT = """
import json, os, time
from bastion import agent

def main(input):
    received = []
    for i in range(1, input["calls"] + 1):
        if i == input["pauseBefore"] and not os.path.exists(input["marker"]):
            open(input["marker"], "w").close()  # tells the test this agent is between calls
            time.sleep(1.0)
        answer = agent.tools.call("count", i=i)
        received.append(json.loads(answer["body"])["n"])
    return received
"""


@pytest.mark.parametrize("paused", ["mid-call", "between calls"])
def test_a_paused_worker_cannot_append_or_act_once_its_run_is_taken_over(
    cluster: Cluster, paused: str
) -> None:
    """Worker A is SIGSTOPped at call 4 until its lease expires and worker B takes the run over;
    while B's own call 4 is held at the server, A is resumed (SIGCONT).

    ``mid-call``: A had sent call 4 and its answer waits in A's socket, so A's next step is the
    journal append, which the fence must refuse. ``between calls``: A's agent sent call 4 while A
    was stopped, so A's next step is the external effect, which the fence must refuse. Since B is
    held at the server, any request or journal entry that appears after SIGCONT is A's."""
    calls, pause_at = 6, 4
    use_counting_tool(cluster, *count_agent("zombie", ZOMBIE_AGENT))
    marker = cluster.shared / "between-calls"
    a = cluster.start_worker()
    run_id = cluster.create_run(
        "zombie",
        {"calls": calls, "pauseBefore": pause_at if paused == "between calls" else 0, "marker": str(marker)},
    )
    key = f"{run_id}:{pause_at}"
    if paused == "mid-call":
        a_call = cluster.tool.hold(key, 1)
        b_call = cluster.tool.hold(key, 2)
        a_call.wait_arrived("A's call 4")
        cluster.freeze(a, run_id)
        a_call.released.set()
    else:
        b_call = cluster.tool.hold(key, 1)
        wait_until("A's agent to pause between calls", marker.exists, 30, cluster.outputs)
        cluster.freeze(a, run_id)
    before = cluster.entries(run_id)
    assert [(e.seq, e.attempt) for e in before] == [(seq, 1) for seq in range(1, pause_at)]

    b = cluster.start_worker()
    b_call.wait_arrived("B's call 4")
    effects = len(cluster.tool.effects())
    a.process.send_signal(signal.SIGCONT)
    wait_until(
        "A to find its lease lost",
        lambda: f"attempt 1 of run {run_id} lost its lease" in a.output(),
        15,
        cluster.outputs,
    )
    assert cluster.tool.effects()[effects:] == [], "the zombie caused an effect"
    assert cluster.entries(run_id) == before, "the zombie wrote to the journal"
    assert a.process.poll() is None, "the zombie's worker should abandon the attempt, not die"
    b_call.released.set()

    run = cluster.wait_finished(run_id)
    assert run.state is RunState.SUCCEEDED, (run.reason, cluster.outputs())
    entries = cluster.entries(run_id)
    assert [(e.seq, e.attempt) for e in entries] == [
        (seq, 1 if seq < pause_at else 2) for seq in range(1, calls + 1)
    ]
    cluster.verify(run_id)
    assert run.result == [answer_n(e) for e in entries]
    (takeover,) = cluster.takeovers(run_id)
    assert a.owns(takeover.data["takeover"]["from"]) and b.owns(takeover.data["worker"])
    executions = cluster.tool.by_key(run_id)
    # Mid-call, A's call 4 was in flight when A stopped: B sent it again with the same key.
    assert {k: len(v) for k, v in executions.items()} == {
        f"{run_id}:{seq}": 2 if seq == pause_at and paused == "mid-call" else 1 for seq in range(1, calls + 1)
    }
    assert [answer_n(e) for e in entries] == [executions[f"{run_id}:{e.seq}"][-1].n for e in entries]


LOOP_AGENT = """
from bastion import agent

def main(input):
    for i in range(1, input["calls"] + 1):
        agent.tools.call("count", i=i)
    return input["calls"]
"""


def sends_after(cluster: Cluster, woke: float, recorded: set[str]) -> list[Effect]:
    """Requests that reached the tool after ``woke`` for calls already journaled by then: effects
    of a zombie (the counting tool ignores idempotency keys, like many real tools)."""
    return [e for e in cluster.tool.effects() if e.at > woke and e.key in recorded]


def zombie_sends(cluster: Cluster, runs: int = 6) -> tuple[int, int]:
    """Worker A runs ``runs`` busy runs (back-to-back tool calls) and is SIGSTOPped at a random
    moment; worker B takes them over and goes past where A stopped; A is woken (SIGCONT).
    Returns (sends after waking of calls B had already journaled, attempts A abandoned)."""
    cluster.lease_seconds = 1.0
    cluster.concurrency = runs
    use_counting_tool(cluster, *count_agent("busy", LOOP_AGENT))
    a = cluster.start_worker()
    ids = [cluster.create_run("busy", {"calls": 100_000}) for _ in range(runs)]
    wait_until(
        "A to run every run", lambda: all(len(cluster.entries(r)) >= 5 for r in ids), 60, cluster.outputs
    )
    time.sleep(random.uniform(0.0, 0.3))
    cluster.freeze(a, *ids)
    stopped_at = {r: len(cluster.entries(r)) for r in ids}
    b = cluster.start_worker()

    def b_went_past() -> bool:
        for run_id in ids:
            entries = cluster.entries(run_id)
            if len(entries) < stopped_at[run_id] + 3 or entries[-1].attempt < 2:
                return False
        return True

    wait_until("B to take every run over and go past A", b_went_past, 60, cluster.outputs)
    recorded = {f"{r}:{e.seq}" for r in ids for e in cluster.entries(r)}
    woke = time.monotonic()
    a.process.send_signal(signal.SIGCONT)
    wait_until("A to abandon every attempt", lambda: cluster.lost_leases(a) >= runs, 20, cluster.outputs)
    time.sleep(0.5)  # anything A still had to send has arrived by now
    late = sends_after(cluster, woke, recorded)
    cluster.kill(b)
    return len(late), cluster.lost_leases(a)


def test_a_woken_zombie_sends_nothing_its_successor_recorded(cluster: Cluster) -> None:
    """A worker stopped between its lease check and its send used to send on waking, after its
    successor had executed and recorded the same calls: only a tool honouring Idempotency-Key
    was safe. The check is now a renewal right before the send, and the send itself refuses to
    go out once the lease has less than its margin left, which a stopped worker always has."""
    late, abandoned = zombie_sends(cluster)
    assert abandoned == 6
    # Before: every one of the 6. What remains is the documented window between the last check
    # and the kernel's write (README, "Effects after a lost lease"): a stop landing exactly there
    # lets that one request out (seen once in three clean-clone runs), never more.
    assert late <= 1, f"the woken zombie sent {late} calls its successor had already recorded"


# --- 3. determinism -----------------------------------------------------------------------------

CHANGING_AGENT = (
    """
import os, time
from bastion import agent
"""
    + WAIT_FOR_CRASH
    + """
def main(input):
    first_attempt = not os.path.exists(input["marker"])
    open(input["marker"], "w").close()
    agent.tools.call("count", step=1)
    agent.random()
    # Decided by the host's files, not by the gateway: the call at seq 3 changes after a crash.
    agent.tools.call("count", step=3, mood="calm" if first_attempt else "changed")
    if first_attempt:
        wait_for_the_crash()
    return "a changed agent must not get here"
"""
)


def test_an_agent_that_changes_its_calls_after_a_crash_fails_naming_the_seq(cluster: Cluster) -> None:
    use_counting_tool(cluster, *count_agent("fickle", CHANGING_AGENT))
    first = cluster.start_worker()
    run_id = cluster.create_run("fickle", {"marker": str(cluster.shared / "started")})
    wait_until("three journaled calls", lambda: len(cluster.entries(run_id)) == 3, 30, cluster.outputs)
    cluster.kill(first)
    cluster.start_worker()

    run = cluster.wait_finished(run_id)
    assert run.state is RunState.FAILED, (run.state, run.result)
    assert run.reason is not None
    assert run.reason.startswith("non-deterministic at seq 3: "), run.reason
    assert '"mood":"changed"' in run.reason and '"mood":"calm"' in run.reason
    assert run.attempt == 2
    # The changed call was refused before it reached the tool; nothing else ran twice.
    assert {k: len(v) for k, v in cluster.tool.by_key(run_id).items()} == {
        f"{run_id}:1": 1,
        f"{run_id}:3": 1,
    }
    assert [(e.seq, e.attempt) for e in cluster.entries(run_id)] == [(1, 1), (2, 1), (3, 1)]
    cluster.verify(run_id)


# --- 4. poison ----------------------------------------------------------------------------------

POISON_AGENT = """
import os, signal, time
from bastion import agent

def main(input):
    agent.tools.call("count", step=1)
    worker = os.getppid()
    with open(input["pids"], "a") as pids:
        pids.write(f"{worker}\\n")
    # The test kills the worker now: the agent itself cannot, it does not run as the worker's uid.
    while os.getppid() == worker:  # until re-parented: the worker is gone
        time.sleep(0.01)
"""


def test_a_run_that_keeps_killing_its_workers_fails_after_three_attempts(cluster: Cluster) -> None:
    use_counting_tool(cluster, *count_agent("poison", POISON_AGENT))
    pids = cluster.shared / "pids"  # each attempt's agent runs under a leased uid of its own
    pids.touch()
    pids.chmod(0o666)
    run_id = cluster.create_run("poison", {"pids": str(pids)})
    deaths: list[int] = []
    worker = cluster.start_worker()
    deadline = time.monotonic() + 60
    while not cluster.run(run_id).state.finished:
        assert time.monotonic() < deadline, f"the poison run did not end\n{cluster.outputs()}"
        if worker.process.poll() is None:
            if pids.exists() and str(worker.pid) in pids.read_text().split():
                worker.process.send_signal(signal.SIGKILL)  # on the agent's word, as if it did it
                worker.process.wait()
            time.sleep(0.02)
            continue
        assert worker.process.returncode == -signal.SIGKILL, worker.output()
        deaths.append(worker.pid)
        assert len(deaths) <= 3, f"more than three workers died for one run\n{cluster.outputs()}"
        worker = cluster.start_worker()

    run = cluster.run(run_id)
    assert run.state is RunState.FAILED
    assert (
        run.reason
        == "poison run: 3 attempts in a row died with their worker at seq 1, the last one alone on it"
    )
    assert run.attempt == 3
    # Each attempt's agent had its own worker killed: the sandbox's parent process.
    assert pids.read_text().split() == [str(pid) for pid in deaths]
    assert len(deaths) == 3
    assert worker.process.poll() is None, "the fourth worker failed the run instead of running it"
    assert [len(v) for v in cluster.tool.by_key(run_id).values()] == [1]
    states = [(e.data["state"], e.data["attempt"]) for e in cluster.events(run_id) if e.type == "state"]
    assert states == [
        ("Pending", 0),
        ("Scheduled", 0),
        ("Starting", 1),
        ("Running", 1),
        ("Starting", 2),
        ("Running", 2),
        ("Starting", 3),
        ("Running", 3),
        ("Failed", 3),
    ]
    cluster.verify(run_id)


def test_a_poison_run_beside_innocent_runs_is_failed_and_they_are_not(cluster: Cluster) -> None:
    """Each death of the worker kills the poison run and its neighbours alike. The poison run's
    attempts keep dying at seq 1, so it is quarantined, dies alone, and is failed; the
    neighbours are resumed (quarantined too if they died twice in one place) and succeed."""
    cluster.tool.delay = 0.02
    use_counting_tool(cluster, *count_agent("poison", POISON_AGENT), *count_agent("busy", LOOP_AGENT))
    pids = cluster.shared / "pids"  # each attempt's agent runs under a leased uid of its own
    pids.touch()
    pids.chmod(0o666)
    innocent = [cluster.create_run("busy", {"calls": 30}) for _ in range(3)]
    poison = cluster.create_run("poison", {"pids": str(pids)})
    deaths = 0
    worker = cluster.start_worker()
    deadline = time.monotonic() + 120
    while not all(cluster.run(r).state.finished for r in [poison, *innocent]):
        assert time.monotonic() < deadline, f"the runs did not end\n{cluster.outputs()}"
        if worker.process.poll() is None:
            if pids.exists() and str(worker.pid) in pids.read_text().split():
                worker.process.send_signal(signal.SIGKILL)  # on the agent's word, as if it did it
                worker.process.wait()
            time.sleep(0.02)
            continue
        deaths += 1
        assert deaths <= 8, f"the poison run was not stopped\n{cluster.outputs()}"
        worker = cluster.start_worker()

    run = cluster.run(poison)
    assert run.state is RunState.FAILED, (run.state, run.reason)
    assert run.reason is not None and run.reason.startswith("poison run: 3 attempts in a row died"), (
        run.reason
    )
    assert any(e.type == "quarantine" for e in cluster.events(poison))
    for run_id in innocent:
        done = cluster.run(run_id)
        assert done.state is RunState.SUCCEEDED, (done.state, done.reason, cluster.outputs())
        assert [e.seq for e in cluster.entries(run_id)] == list(range(1, 31))
        cluster.verify(run_id)
    # The quarantined poison run ran alone: its last attempt had no neighbour on its worker.
    last = [e for e in cluster.events(poison) if e.type == "state" and e.data["state"] == "Starting"][-1]
    assert last.data.get("alone") is True


# --- 5. replay ----------------------------------------------------------------------------------

REPLAY_AGENT = (
    """
import json, os, time
from bastion import agent
"""
    + WAIT_FOR_CRASH
    + """
def main(input):
    agent.tools.call("fs.write", path="notes/state.txt", content="written by call 1")
    before = agent.tools.call("count", step=2)
    replayed = agent.tools.call("fs.read", path="notes/state.txt")
    if not os.path.exists(input["marker"]):
        open(input["marker"], "w").close()
        wait_for_the_crash()
    resumed = agent.tools.call("fs.read", path="notes/state.txt")
    after = agent.tools.call("count", step=5)
    return {
        "counts": [json.loads(answer["body"])["n"] for answer in (before, after)],
        "read": [replayed["content"], resumed["content"]],
    }
"""
)


def test_a_resumed_attempt_replays_effects_and_recreates_its_workspace(cluster: Cluster) -> None:
    use_counting_tool(
        cluster,
        builtin_tool("fs.write"),
        builtin_tool("fs.read"),
        *count_agent("replayer", REPLAY_AGENT, "fs.write", "fs.read"),
    )
    marker = cluster.shared / "crash-here"
    first = cluster.start_worker()
    run_id = cluster.create_run("replayer", {"marker": str(marker)})
    wait_until("the agent to reach its crash point", marker.exists, 30, cluster.outputs)
    assert len(cluster.entries(run_id)) == 3
    assert (cluster.workspaces / run_id / "attempt-1" / "notes" / "state.txt").exists()
    cluster.kill(first)
    cluster.start_worker()

    run = cluster.wait_finished(run_id)
    assert run.state is RunState.SUCCEEDED, (run.reason, cluster.outputs())
    entries = cluster.entries(run_id)
    assert [(e.seq, e.attempt) for e in entries] == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2)]
    cluster.verify(run_id)
    # The external call before the crash was answered from the journal, not sent again.
    executions = cluster.tool.by_key(run_id)
    assert {k: len(v) for k, v in executions.items()} == {f"{run_id}:2": 1, f"{run_id}:5": 1}
    assert run.result == {
        "counts": [answer_n(entries[1]), answer_n(entries[4])],
        "read": ["written by call 1", "written by call 1"],
    }
    # The file call 1 wrote was written again, by replay, in the new attempt's fresh workspace.
    run_dir = cluster.workspaces / run_id
    assert [p.name for p in run_dir.iterdir()] == ["attempt-2"]
    assert (run_dir / "attempt-2" / "notes" / "state.txt").read_text() == "written by call 1"


# --- worker processes ------------------------------------------------------------------------------


def test_a_worker_process_serves_its_own_metrics(cluster: Cluster) -> None:
    """The gateway's counters live in the process that serves the calls: `bastion worker
    --metrics-port` exposes them, since no API server runs there."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cluster.start_worker("--metrics-port", str(port))
    source = "from bastion import agent\n\ndef main(input):\n    return agent.tools.call('count', i=1)\n"
    use_counting_tool(cluster, *count_agent("metered", source))
    run = cluster.wait_finished(cluster.create_run("metered", None))
    assert run.state is RunState.SUCCEEDED, run.reason
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert 'bastion_gateway_calls_total{decision="allow",kind="tool"} 1.0' in text
