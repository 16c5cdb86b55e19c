"""API benchmark: throughput and latency of apply and get on SQLite and on PostgreSQL.

What it measures, against a real ``bastion up`` server started as a separate process (so the load
generator does not share the server's GIL):

* ``apply``: ``POST /api/v1/apply`` with one Agent manifest. Every virtual client cycles through a
  small pool of its own agents with a changing ``spec.maxTurns`` (updates) and creates a new agent
  every fourth request (creates), so every request is a real write.
* ``get``: ``GET /api/v1/namespaces/default/agents/{name}`` of an existing agent.
* ``healthz``: ``GET /healthz`` (no authentication, no database), the baseline of the same run;
  each operation's throughput is also printed as a ratio of it at the same concurrency.

Each backend x operation x concurrency (1, 8, 32 clients) is a closed-loop run of ``--duration``
seconds (after a short warm-up), reporting successful requests/s, p50/p95/p99 latency and errors:
any non-2xx response or transport error is counted and listed, never hidden.

Then the target check: an open-loop run on SQLite at ``--rate`` requests/s (default 200; half
apply, half get) for ``--open-duration`` seconds. Requests are sent at fixed intervals whatever
the responses do, and latency is taken from each request's scheduled time, so queueing counts.
It prints PASS when the p95 of the mix is under 50 ms (the issue's target on a 2-core machine).

Run it with ``make bench`` or ``.venv/bin/python bench/api.py``; ``--quick`` is a smoke test of a
few seconds per backend. PostgreSQL is taken from ``$BASTION_BENCH_POSTGRES_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``); the benchmark creates a throwaway
database there and drops it afterwards, and skips PostgreSQL with the reason when it is unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Generator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql
from sqlalchemy.engine import URL, make_url

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
CONCURRENCIES = (1, 8, 32)
OPS = ("healthz", "apply", "get")
TARGET_P95_MS = 50.0
APPLY_POOL = 4
"""Agents each virtual client keeps updating; every APPLY_POOL-th apply creates a new one."""
GET_POOL = 64
"""Agents created before the get runs and read in turn."""
REQUEST_TIMEOUT_S = 30.0
GENERATOR_BOUND = 0.9
"""A load generator busier than this (share of one core) may be what limits a cell."""
STARTUP_TIMEOUT_S = 60.0


# --- results ------------------------------------------------------------------------------------


@dataclass
class Sample:
    """The outcome of a run: latencies of all finished requests, and what went wrong."""

    latencies_ms: list[float] = field(default_factory=list[float])
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter[str])
    actions: Counter[str] = field(default_factory=Counter[str])
    elapsed_s: float = 0.0
    client_cpu_s: float = 0.0
    server_cpu_s: float | None = None

    def record(self, latency_ms: float, error: str | None) -> None:
        self.latencies_ms.append(latency_ms)
        if error is None:
            self.ok += 1
        else:
            self.errors[error] += 1

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def ok_rate(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def rate(self) -> float:
        return len(self.latencies_ms) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile (q in 0..100) of the latencies, NaN when there are none."""
        if not self.latencies_ms:
            return math.nan
        ordered = sorted(self.latencies_ms)
        rank = max(1, math.ceil(q / 100 * len(ordered)))
        return ordered[rank - 1]

    def error_text(self) -> str:
        return ", ".join(f"{n}x {what}" for what, n in self.errors.most_common())


@dataclass(frozen=True)
class Cell:
    backend: str
    op: str
    clients: int
    sample: Sample


# --- the server ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process (Linux /proc), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return (int(fields[11]) + int(fields[12])) / ticks


@dataclass(frozen=True)
class RunningServer:
    url: str
    key: str
    pid: int


@contextmanager
def bastion_server(database_url: str | None) -> Generator[RunningServer, None, None]:
    """``bastion up`` in its own process on a fresh data directory; stopped with SIGINT at the end."""
    with tempfile.TemporaryDirectory(prefix="bastion-bench-") as home:
        port = free_port()
        env = dict(os.environ)
        for name in ("BASTION_URL", "BASTION_API_KEY", "BASTION_DATABASE_URL", "BASTION_MASTER_KEY"):
            env.pop(name, None)
        env["BASTION_HOME"] = home
        if database_url is not None:
            env["BASTION_DATABASE_URL"] = database_url
        log_path = Path(home) / "server.log"
        command = [sys.executable, "-c", "from bastion.cli import main; main()", "up", "--port", str(port)]
        with log_path.open("wb") as log:
            proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(proc, url, log_path)
            credentials = json.loads((Path(home) / "credentials.json").read_text())
            yield RunningServer(url=url, key=str(credentials["apiKey"]), pid=proc.pid)
        finally:
            stop(proc)
            if proc.returncode not in (0, -signal.SIGINT, 130, None):
                print(f"  (server exited with {proc.returncode}; last lines of its log follow)")
                print(tail(log_path))


def wait_ready(proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}:\n{tail(log_path)}")
            try:
                if client.get(f"{url}/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"the server was not ready within {STARTUP_TIMEOUT_S:.0f} s:\n{tail(log_path)}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- PostgreSQL ---------------------------------------------------------------------------------


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


@contextmanager
def postgres_database(admin_url: str) -> Generator[str, None, None]:
    """A throwaway database on the server of ``admin_url``, dropped afterwards."""
    url = make_url(admin_url)
    name = f"bastion_bench_{secrets.token_hex(6)}"
    with pg_connect(url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield url.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
    finally:
        with pg_connect(url) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def postgres_problem(admin_url: str) -> str | None:
    try:
        url = make_url(admin_url)
        with pg_connect(url) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # any driver or URL error means: skip PostgreSQL
        detail = " ".join(str(exc).split()) or "no detail"
        return f"{type(exc).__name__}: {detail}"
    return None


# --- load generation ----------------------------------------------------------------------------


def agent(name: str, max_turns: int) -> dict[str, Any]:
    return {
        "apiVersion": "bastion/v1",
        "kind": "Agent",
        "metadata": {"name": name, "labels": {"bench": "api"}},
        "spec": {"runtime": "python", "entrypoint": "agent:main", "maxTurns": max_turns},
    }


Request = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]
"""Sends the i-th request of one virtual client."""


def make_request(op: str, server: RunningServer, tag: str, client_id: int) -> Request:
    """The request of ``op`` for one virtual client; ``tag`` keeps the names of runs apart."""
    if op == "healthz":

        async def healthz(client: httpx.AsyncClient, _i: int) -> httpx.Response:
            return await client.get("/healthz")

        return healthz
    if op == "apply":

        async def apply(client: httpx.AsyncClient, i: int) -> httpx.Response:
            if i % APPLY_POOL == APPLY_POOL - 1:
                name = f"bench-{tag}-c{client_id}-new{i}"
            else:
                name = f"bench-{tag}-c{client_id}-p{i % APPLY_POOL}"
            return await client.post("/api/v1/apply", json={"documents": [agent(name, 1 + i % 1000)]})

        return apply
    if op == "get":

        async def get(client: httpx.AsyncClient, i: int) -> httpx.Response:
            name = f"bench-get-{(client_id * 7 + i) % GET_POOL}"
            return await client.get(f"/api/v1/namespaces/default/agents/{name}")

        return get
    raise ValueError(f"unknown operation {op!r}")


def new_client(server: RunningServer, connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.url,
        headers={"Authorization": f"Bearer {server.key}"},
        timeout=REQUEST_TIMEOUT_S,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


async def send(request: Request, client: httpx.AsyncClient, i: int, sample: Sample | None) -> str | None:
    """Send one request; returns the error (None if 2xx) and counts the apply action in ``sample``."""
    try:
        response = await request(client, i)
    except httpx.HTTPError as exc:
        return type(exc).__name__
    if not 200 <= response.status_code < 300:
        return f"HTTP {response.status_code}"
    if sample is not None and response.request.method == "POST":
        try:
            sample.actions.update(item["action"] for item in response.json()["items"])
        except (ValueError, KeyError, TypeError):
            return "bad apply response"
    return None


async def closed_loop(server: RunningServer, op: str, clients: int, duration: float, warmup: float) -> Sample:
    """``clients`` virtual clients, each with its own connection, sending back to back."""
    tag = secrets.token_hex(3)
    sample = Sample()
    # Clients are built before the clock starts: building one costs milliseconds of CPU.
    pool = [new_client(server, 1) for _ in range(clients)]
    measure_from = time.perf_counter() + warmup
    stop_at = measure_from + duration
    cpu0: float | None = None
    srv0: float | None = None

    async def virtual_client(client_id: int, client: httpx.AsyncClient) -> None:
        nonlocal cpu0, srv0
        request = make_request(op, server, tag, client_id)
        i = 0
        while (started := time.perf_counter()) < stop_at:
            measured = started >= measure_from
            if measured and cpu0 is None:
                cpu0, srv0 = time.process_time(), process_cpu_s(server.pid)
            error = await send(request, client, i, sample if measured else None)
            if measured:
                sample.record((time.perf_counter() - started) * 1000, error)
            i += 1

    try:
        await asyncio.gather(*(virtual_client(c, client) for c, client in enumerate(pool)))
    finally:
        for client in pool:
            await client.aclose()
    # Requests that started before the end are counted, so the window runs until the last one ends.
    sample.elapsed_s = time.perf_counter() - measure_from
    sample.client_cpu_s = time.process_time() - (cpu0 if cpu0 is not None else time.process_time())
    srv1 = process_cpu_s(server.pid)
    sample.server_cpu_s = srv1 - srv0 if srv0 is not None and srv1 is not None else None
    return sample


async def open_loop(server: RunningServer, rate: float, duration: float) -> tuple[Sample, Sample, float]:
    """Half apply, half get at ``rate`` requests/s on fixed intervals; latency from the scheduled time.

    Returns the apply sample, the get sample and the largest lag (ms) between a request's scheduled
    time and the moment the load generator got to send it (a check on the generator itself).
    """
    tag = secrets.token_hex(3)
    samples = {"apply": Sample(), "get": Sample()}
    requests = {op: make_request(op, server, tag, 0) for op in samples}
    lag_ms = 0.0
    total = int(rate * duration)
    tasks: list[asyncio.Task[None]] = []

    async def one(op: str, i: int, scheduled: float) -> None:
        nonlocal lag_ms
        lag_ms = max(lag_ms, (time.perf_counter() - scheduled) * 1000)
        error = await send(requests[op], client, i, samples[op])
        samples[op].record((time.perf_counter() - scheduled) * 1000, error)

    async with new_client(server, 1024) as client:
        # Warm the connection pool a little so the first requests do not all pay for a connect.
        await asyncio.gather(*(client.get("/healthz") for _ in range(8)))
        cpu0, srv0 = time.process_time(), process_cpu_s(server.pid)
        start = time.perf_counter() + 0.05
        for n in range(total):
            scheduled = start + n / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            op = "apply" if n % 2 == 0 else "get"
            tasks.append(asyncio.create_task(one(op, n // 2, scheduled)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu0
        srv1 = process_cpu_s(server.pid)
    for sample in samples.values():
        sample.elapsed_s = elapsed
        sample.client_cpu_s = cpu
        sample.server_cpu_s = srv1 - srv0 if srv0 is not None and srv1 is not None else None
    return samples["apply"], samples["get"], lag_ms


async def seed(server: RunningServer) -> None:
    """The agents the get runs read, in one apply."""
    async with new_client(server, 1) as client:
        documents = [agent(f"bench-get-{i}", 5) for i in range(GET_POOL)]
        response = await client.post("/api/v1/apply", json={"documents": documents})
        response.raise_for_status()


# --- output -------------------------------------------------------------------------------------


def fmt_ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def fmt_cpu(seconds: float | None, elapsed: float) -> str:
    return "-" if seconds is None or elapsed <= 0 else f"{100 * seconds / elapsed:.0f}%"


HEADER = (
    f"{'backend':<9}{'op':<9}{'clients':>7}{'ok/s':>9}{'x base':>8}{'p50 ms':>9}{'p95 ms':>9}"
    f"{'p99 ms':>9}{'max ms':>9}{'requests':>9}{'errors':>7}{'srv cpu':>8}{'gen cpu':>8}"
)


def row(cell: Cell, baseline: float | None) -> str:
    s = cell.sample
    ratio = "-" if cell.op == "healthz" or not baseline else f"{s.ok_rate / baseline:.2f}"
    return (
        f"{cell.backend:<9}{cell.op:<9}{cell.clients:>7}{s.ok_rate:>9.0f}{ratio:>8}"
        f"{fmt_ms(s.percentile(50)):>9}{fmt_ms(s.percentile(95)):>9}{fmt_ms(s.percentile(99)):>9}"
        f"{fmt_ms(s.percentile(100)):>9}{len(s.latencies_ms):>9}{s.error_count:>7}"
        f"{fmt_cpu(s.server_cpu_s, s.elapsed_s):>8}{fmt_cpu(s.client_cpu_s, s.elapsed_s):>8}"
    )


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine skews every figure here."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def print_header(args: argparse.Namespace) -> None:
    print("Bastion API benchmark (bench/api.py)")
    print(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()} ({platform.python_implementation()}); load average {load_average()}"
    )
    open_loop_text = (
        f"{args.rate:g} req/s for {args.open_duration:g} s on SQLite, target p95 < {TARGET_P95_MS:g} ms"
        if args.rate > 0
        else "off (--rate 0)"
    )
    print(
        f"closed loop: {args.duration:g} s per cell after {args.warmup:g} s warm-up, clients "
        f"{', '.join(map(str, CONCURRENCIES))}; open loop: {open_loop_text}"
    )
    print(
        "ok/s: 2xx responses per second; x base: ok/s as a ratio of GET /healthz (no auth, no database) "
        "at the same concurrency in this run;"
    )
    print(
        "latencies cover every request, failed ones too; srv cpu / gen cpu: CPU of the server process / "
        "of this load generator (100% = one core)."
    )
    print()


# --- the run ------------------------------------------------------------------------------------


def run_backend(backend: str, database_url: str | None, args: argparse.Namespace) -> list[Cell]:
    cells: list[Cell] = []
    with bastion_server(database_url) as server:
        asyncio.run(seed(server))
        print(HEADER)
        for clients in CONCURRENCIES:
            baseline: float | None = None
            for op in OPS:
                sample = asyncio.run(closed_loop(server, op, clients, args.duration, args.warmup))
                cell = Cell(backend, op, clients, sample)
                if op == "healthz":
                    baseline = sample.ok_rate
                cells.append(cell)
                print(row(cell, baseline), flush=True)
        if backend == "sqlite" and args.rate > 0:
            print()
            run_open_loop(server, args)
    actions = Counter[str]()
    for cell in cells:
        actions.update(cell.sample.actions)
    if actions:
        print(f"apply actions on {backend}: " + ", ".join(f"{n} {a}" for a, n in sorted(actions.items())))
    bound = [
        f"{cell.op} x{cell.clients}"
        for cell in cells
        if cell.sample.elapsed_s > 0 and cell.sample.client_cpu_s / cell.sample.elapsed_s >= GENERATOR_BOUND
    ]
    if bound:
        print(
            f"note: the load generator used >= {GENERATOR_BOUND:.0%} of a core in {', '.join(bound)}; "
            "there ok/s is a lower bound of what the server can do"
        )
    for cell in cells:
        if cell.sample.errors:
            print(f"ERRORS {backend} {cell.op} x{cell.clients}: {cell.sample.error_text()}")
    return cells


def run_open_loop(server: RunningServer, args: argparse.Namespace) -> None:
    apply_s, get_s, lag_ms = asyncio.run(open_loop(server, args.rate, args.open_duration))
    both = Sample(
        latencies_ms=apply_s.latencies_ms + get_s.latencies_ms,
        ok=apply_s.ok + get_s.ok,
        errors=apply_s.errors + get_s.errors,
        elapsed_s=apply_s.elapsed_s,
        client_cpu_s=apply_s.client_cpu_s,
        server_cpu_s=apply_s.server_cpu_s,
    )
    print(
        f"Open loop on SQLite: {args.rate:g} req/s offered (half apply, half get) for {args.open_duration:g} s; "
        "latency from each request's scheduled send time"
    )
    print(
        f"{'op':<9}{'offered/s':>10}{'done/s':>9}{'ok/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        f"{'max ms':>9}{'requests':>9}{'errors':>7}"
    )
    for name, s, offered in (
        ("apply", apply_s, args.rate / 2),
        ("get", get_s, args.rate / 2),
        ("mix", both, args.rate),
    ):
        print(
            f"{name:<9}{offered:>10.0f}{s.rate:>9.1f}{s.ok_rate:>9.1f}{fmt_ms(s.percentile(50)):>9}"
            f"{fmt_ms(s.percentile(95)):>9}{fmt_ms(s.percentile(99)):>9}{fmt_ms(s.percentile(100)):>9}"
            f"{len(s.latencies_ms):>9}{s.error_count:>7}"
        )
    print(
        f"server cpu {fmt_cpu(both.server_cpu_s, both.elapsed_s)}, generator cpu "
        f"{fmt_cpu(both.client_cpu_s, both.elapsed_s)}, largest send lag of the generator {lag_ms:.1f} ms"
    )
    for name, s in (("apply", apply_s), ("get", get_s)):
        if s.errors:
            print(f"ERRORS open loop {name}: {s.error_text()}")
    p95 = both.percentile(95)
    achieved = both.ok_rate
    passed = p95 < TARGET_P95_MS and both.error_count == 0 and achieved >= 0.95 * args.rate
    verdict = "PASS" if passed else "FAIL"
    print(
        f"{verdict}: p95 {fmt_ms(p95)} ms at {achieved:.1f} ok req/s achieved of {args.rate:g} offered "
        f"(target p95 < {TARGET_P95_MS:g} ms, no errors, >= 95% of the offered rate)"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per closed-loop cell (5)")
    parser.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds before each cell (0.5)")
    parser.add_argument(
        "--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres (both)"
    )
    parser.add_argument(
        "--rate", type=float, default=200.0, help="open-loop requests/s on SQLite (200; 0 skips it)"
    )
    parser.add_argument("--open-duration", type=float, default=12.0, help="seconds of the open-loop run (12)")
    parser.add_argument("--quick", action="store_true", help="a very short smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.open_duration = 0.5, 0.1, 2.0
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - {"sqlite", "postgres"}
    if unknown or not backends:
        parser.error(f"--backends takes sqlite and/or postgres, not {args.backends!r}")
    if args.duration <= 0 or args.open_duration <= 0 or args.warmup < 0 or args.rate < 0:
        parser.error("durations and the rate must be positive")
    args.backends = backends
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print_header(args)
    failed = False
    for backend in args.backends:
        print(f"== {backend} ==")
        try:
            if backend == "sqlite":
                run_backend("sqlite", None, args)
            else:
                admin_url = os.environ.get("BASTION_BENCH_POSTGRES_URL") or DEFAULT_POSTGRES_URL
                problem = postgres_problem(admin_url)
                if problem is not None:
                    shown = make_url(admin_url).render_as_string(hide_password=True)
                    print(f"PostgreSQL skipped: {shown} is unreachable ({problem})")
                    continue
                with postgres_database(admin_url) as database_url:
                    run_backend("postgres", database_url, args)
        except RuntimeError as exc:
            print(f"{backend} FAILED: {exc}")
            failed = True
        print()
    print(f"load average at the end: {load_average()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
