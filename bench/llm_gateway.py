"""LLM gateway benchmark: what Bastion's model path adds over calling the provider directly,
beside LiteLLM's proxy measured in the same run.

The provider is ``bastion.testing.FakeProvider`` (OpenAI wire format, a fixed short answer, SSE
when asked), run in its own process so its CPU is nobody's. Rows, each streamed and not:

* ``direct``: an ``httpx.Client`` POSTing ``/v1/chat/completions`` to the fake (the baseline).
* ``bastion router``: ``Router.complete`` in-process (routing, the provider adapter with its wire
  conversion both ways, breaker and latency bookkeeping): the bare router.
* ``bastion gateway llm.chat``: ``GatewaySession.handle("llm.chat", {"format": "openai", ...})``
  in-process on SQLite: parse the SDK body, policy (a ModelPolicy), lease fence and budget
  reservation (a ``tokensPerRun`` budget; one transaction), router, scrub, journal entry and
  budget settlement committed (one transaction), answer rendered back in the OpenAI format. This is the whole
  governed path of a model call minus the sandbox channel (measured in bench/gateway.py).
* ``litellm proxy``: ``litellm --config`` (one model routed to the fake), called over HTTP with
  the master key; ``LITELLM_LOCAL_MODEL_COST_MAP=True``.

The proxy is an HTTP server and Bastion's path is a function call (the gateway is reached over
the sandbox channel, not HTTP), so the fair comparison is *added* latency and CPU over ``direct``
(which the proxy pays on top of its own HTTP hop). CPU per request: this process's CPU during a
row minus its CPU during the direct row (for Bastion), the proxy process's CPU (for LiteLLM).
RSS: Bastion alone (a child process with only the gateway's llm.chat rows, nothing else loaded),
this process (client, router rows and Bastion) and the proxy process. Throughput: 32 threads,
successful calls only; failed calls are counted in their own column and their errors listed.
Targets (issue 5): ≤ +1 ms p50, ≤ 0.5 ms CPU per request, ≤ 100 MB RSS. The machine is shared
and small: expect noise; compare rows of the same run.

``.venv/bin/python bench/llm_gateway.py [--calls N] [--quick]``. LiteLLM is a manual step,
``.venv/bin/pip install 'litellm[proxy]'``, not in the ``bench`` extra: it pins older ``rich``,
``openai`` and ``websockets`` than the test extra needs (``pip install -e '.[test,bench]'`` puts
them back afterwards). Without it the LiteLLM rows are skipped with that hint.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Generator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from _common import Stats, fmt_ms, machine_facts
from bastion.api import RawDocument, validate_documents
from bastion.control import Bastion, Settings
from bastion.control.store import Principal
from bastion.execution.gateway import Attempt, GatewaySession
from bastion.execution.llm import ChatRequest, Route, Router, Target, default_providers, request_from_openai
from bastion.execution.runs import RunState
from bastion.execution.runs._step import StepWriter  # pyright: ignore[reportPrivateUsage]

BODY: dict[str, Any] = {
    "model": "fake-model",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hello in five words."},
    ],
    "max_tokens": 64,
}
OWNER = "bench:1:llm"
PROVIDER_SCRIPT = """
import sys
from bastion.testing import FakeProvider, reply
with FakeProvider(default=reply("Hello there, how are you?")) as fake:
    print(fake.openai_url, flush=True)
    sys.stdin.read()
"""


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def provider_process() -> Generator[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", PROVIDER_SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdin is not None
    url = process.stdout.readline().strip()
    try:
        yield url
    finally:
        process.stdin.close()
        process.wait(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def litellm_proxy(provider_url: str, scratch: Path) -> Generator[tuple[str, str, int] | None]:
    exe = shutil.which("litellm", path=str(Path(sys.executable).parent))
    if exe is None:
        print("litellm proxy: skipped (pip install 'litellm[proxy]' into this venv)")
        yield None
        return
    key = "sk-" + secrets.token_hex(16)
    config = scratch / "litellm.yaml"
    config.write_text(
        json.dumps(
            {
                "model_list": [
                    {
                        "model_name": "fake-model",
                        "litellm_params": {
                            "model": "openai/fake-model",
                            "api_base": provider_url,
                            "api_key": "sk-fake",
                        },
                    }
                ],
                "general_settings": {"master_key": key},
                "litellm_settings": {"telemetry": False},
            }
        )
    )
    port = free_port()
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    log = (scratch / "litellm.log").open("wb")
    process = subprocess.Popen(
        [exe, "--config", str(config), "--port", str(port), "--host", "127.0.0.1", "--num_workers", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            print(f"litellm proxy: exited at start; see {scratch / 'litellm.log'}")
            yield None
            return
        try:
            if httpx.get(url + "/health/liveliness", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    try:
        yield url + "/v1", key, process.pid
    finally:
        process.terminate()
        process.wait(20)
        log.close()


# --- the rows -----------------------------------------------------------------------------------

Call = Callable[[], Any]


def measure(call: Call, calls: int, warmup: int) -> tuple[Stats, float]:
    """Latency stats and this process's CPU seconds over ``calls`` sequential calls."""
    for _ in range(warmup):
        call()
    durations: list[int] = []
    cpu0, t0 = time.process_time(), time.perf_counter()
    for _ in range(calls):
        started = time.perf_counter_ns()
        call()
        durations.append(time.perf_counter_ns() - started)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return Stats.of_ns(durations, elapsed), cpu


def throughput(make: Callable[[int], Call], calls: int, threads: int = 32) -> tuple[float, list[str]]:
    """Successful requests per second with ``threads`` callers, each with its own ``make(i)``
    call, and the calls that failed (a failure is no request served; the caller goes on)."""
    per = max(1, calls // threads)
    callers = [make(i) for i in range(threads)]
    for c in callers:
        c()
    start = threading.Barrier(threads + 1)
    failed: list[str] = []

    def run(c: Call) -> None:
        start.wait()
        for _ in range(per):
            try:
                c()
            except Exception as exc:  # counted, shown after the table
                failed.append(f"{type(exc).__name__}: {exc}"[:300])

    workers = [threading.Thread(target=run, args=(c,)) for c in callers]
    for w in workers:
        w.start()
    start.wait()
    t0 = time.perf_counter()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    return (per * threads - len(failed)) / elapsed, failed


def http_call(client: httpx.Client, url: str, key: str, stream: bool) -> Call:
    body = {**BODY, "stream": stream}
    headers = {"authorization": f"Bearer {key}"}

    def call() -> Any:
        if not stream:
            response = client.post(url + "/chat/completions", json=body, headers=headers)
            response.raise_for_status()
            return response.json()
        with client.stream("POST", url + "/chat/completions", json=body, headers=headers) as response:
            response.raise_for_status()
            return [line for line in response.iter_lines() if line]

    return call


class GatewayBed:
    """A Bastion on SQLite with a ModelPolicy routed to the fake, and sessions over claimed runs."""

    def __init__(self, scratch: Path, provider_url: str) -> None:
        self.bastion = Bastion(Settings(home=scratch / "home", database_url=f"sqlite:///{scratch / 'b.db'}"))
        first = self.bastion.bootstrap()
        assert first is not None
        b = self.bastion
        principal = b.store.authenticate(first.admin_key)
        assert principal is not None
        self.principal: Principal = principal
        docs = [
            {
                "apiVersion": "bastion/v1",
                "kind": "ModelPolicy",
                "metadata": {"name": "bench-models"},
                "spec": {
                    "targets": [{"provider": "openai", "model": "fake-model", "baseUrl": provider_url}],
                    "budgets": {"tokensPerRun": 10**12},
                    "prices": {"fake-model": {"inputPerMtok": 0.15, "outputPerMtok": 0.6}},
                },
            },
            {
                "apiVersion": "bastion/v1",
                "kind": "Agent",
                "metadata": {"name": "bench-llm"},
                "spec": {"runtime": "llm", "instructions": "x", "modelPolicy": "bench-models"},
            },
        ]
        validated = validate_documents([RawDocument(body=d) for d in docs])
        with b.store.write() as conn:
            b.resources.apply(conn, self.principal, validated)
        self.writer = StepWriter(b.store)
        self.held: list[Any] = []

    def session(self, *, hold: bool = True) -> GatewaySession:
        b = self.bastion
        with b.store.write() as conn:
            from bastion.control.store import get_row

            row = get_row(conn, self.principal.tenant_id, "Agent", "default", "bench-llm")
            assert row is not None
            run = b.runs.create(
                conn,
                tenant_id=self.principal.tenant_id,
                namespace="default",
                agent="bench-llm",
                agent_spec=row.manifest(),
                input=None,
            )
        claim = b.runs.claim(OWNER, 3600)
        assert claim is not None and claim.run.id == run.id
        with b.store.write() as conn:
            b.runs.transition(conn, claim.run, OWNER, RunState.RUNNING)
        # The worker holds one connection per attempt; 32 threads doing so would empty the pool,
        # so the concurrent row writes each step in its own transaction (a pool checkout more).
        writer: Any = self.writer
        if hold:
            held = self.writer.held()
            writer = held.__enter__()
            self.held.append(held)

        def commit(prepared: Any, events: list[tuple[str, dict[str, Any]]]) -> None:
            writer.commit(
                run_id=run.id, attempt=1, owner=OWNER, prepared=prepared, events=events, at=b.clock.now()
            )

        def fence(conn: Any) -> None:
            b.runs.fence(conn, run.id, 1, OWNER)

        spec = row.manifest()
        return b.gateway.session(
            Attempt(
                run_id=run.id,
                attempt=1,
                tenant_id=self.principal.tenant_id,
                namespace="default",
                agent="bench-llm",
                agent_spec=spec,
                workspace=Path(tempfile.gettempdir()),
                fence=fence,
                commit=commit,
            )
        )

    def call(self, stream: bool, *, hold: bool = True) -> Call:
        session = self.session(hold=hold)
        params = {"format": "openai", "request": {**BODY, "stream": stream}}
        return lambda: session.handle("llm.chat", params)

    def close(self) -> None:
        for held in self.held:
            held.__exit__(None, None, None)
        self.bastion.close()


def bastion_alone(provider: str, calls: int) -> None:
    """The child process of the RSS figure: a Bastion (SQLite) serving ``llm.chat`` only, first
    from one session, then from 32 threads, nothing else loaded; prints its RSS and peak in MB."""
    with tempfile.TemporaryDirectory(prefix="bastion-llm-rss-") as tmp:
        bed = GatewayBed(Path(tmp), provider)
        try:
            for stream in (False, True):
                call = bed.call(stream)
                for _ in range(calls):
                    call()
                throughput(lambda _i, s=stream: bed.call(s, hold=False), calls)
            peak = 0.0
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) / 1024
            print(f"{rss_mb(os.getpid()):.1f} {peak:.1f}", flush=True)
        finally:
            bed.close()


def measure_bastion_alone(provider: str, calls: int) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--bastion-alone", provider, "--calls", str(calls)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return float(out[-2]), float(out[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="a smoke run (200 calls)")
    parser.add_argument("--bastion-alone", metavar="PROVIDER_URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bastion_alone:
        bastion_alone(args.bastion_alone, args.calls)
        return
    calls, warmup = (200, 20) if args.quick else (args.calls, args.warmup)
    print("# LLM gateway benchmark")
    print(machine_facts())
    print(f"calls per row: {calls} sequential (after {warmup} warm-up), then {calls} over 32 threads\n")
    with tempfile.TemporaryDirectory(prefix="bastion-llm-bench-") as tmp, provider_process() as provider:
        scratch = Path(tmp)
        bed = GatewayBed(scratch, provider)
        router = Router(default_providers())
        client = httpx.Client(limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))
        request: ChatRequest = request_from_openai(BODY)[0]
        route = Route(targets=(Target(provider="openai", model="fake-model", base_url=provider),))
        rows: dict[str, tuple[Stats, float, tuple[float, list[str]]]] = {}
        try:
            with litellm_proxy(provider, scratch) as proxy:
                for stream in (False, True):
                    mode = "stream" if stream else "json"
                    direct = http_call(client, provider, "sk-fake", stream)
                    stats, cpu = measure(direct, calls, warmup)
                    rows[f"direct {mode}"] = (stats, cpu, throughput(lambda _i, d=direct: d, calls))
                    bare = lambda s=stream: router.complete(route, request, stream=s, scope="bench/default")  # noqa: E731
                    stats, cpu = measure(bare, calls, warmup)
                    rows[f"bastion router {mode}"] = (stats, cpu, throughput(lambda _i, c=bare: c, calls))
                    full = bed.call(stream)
                    stats, cpu = measure(full, calls, warmup)
                    rows[f"bastion gateway llm.chat {mode}"] = (
                        stats,
                        cpu,
                        throughput(lambda _i, s=stream: bed.call(s, hold=False), calls),
                    )
                    if proxy is not None:
                        url, key, pid = proxy
                        via = http_call(client, url, key, stream)
                        before = cpu_of(pid)
                        stats, _ = measure(via, calls, warmup)
                        proxy_cpu = cpu_of(pid) - before
                        rows[f"litellm proxy {mode}"] = (
                            stats,
                            proxy_cpu,
                            throughput(lambda _i, v=via: v, calls),
                        )
                litellm_rss = rss_mb(proxy[2]) if proxy is not None else float("nan")
            alone_rss, alone_peak = measure_bastion_alone(provider, calls)
        finally:
            bastion_rss = rss_mb(os.getpid())
            client.close()
            router.close()
            bed.close()
    print(
        f"{'row':<34} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10} {'added p99':>10} {'CPU ms/req':>11} {'req/s @32':>10} {'failed':>7}"
    )
    for name, (stats, cpu, (rate, failed)) in rows.items():
        mode = name.rsplit(" ", 1)[1]
        base, base_cpu, _ = rows[f"direct {mode}"]
        added_cpu = (
            cpu / stats.count * 1000 if name.startswith("litellm") else (cpu - base_cpu) / stats.count * 1000
        )
        shown_cpu = "-" if name.startswith("direct") else f"{added_cpu:.3f}"
        print(
            f"{name:<34} {fmt_ms(stats.p50):>8} {fmt_ms(stats.p99):>8} "
            f"{fmt_ms(stats.p50 - base.p50):>10} {fmt_ms(stats.p99 - base.p99):>10} {shown_cpu:>11} {rate:>10.0f} {len(failed):>7}"
        )
    for name, (_, _, (_, failed)) in rows.items():
        for reason, count in Counter(failed).most_common(3):
            print(f"failed in {name}: {count}x {reason}")
    print(
        f"\nRSS: Bastion alone (a process serving only llm.chat, {calls} calls each way then 32 threads) "
        f"{alone_rss:.0f} MB, peak {alone_peak:.0f} MB; this process (bench client + router rows + "
        f"Bastion) {bastion_rss:.0f} MB; litellm proxy {litellm_rss:.0f} MB"
    )
    print("CPU ms/req: Bastion rows = this process's CPU minus the direct row's (the client's share);")
    print(
        "            litellm = the proxy process's own CPU. Targets: +1 ms p50, 0.5 ms CPU/req, 100 MB RSS."
    )


if __name__ == "__main__":
    main()
