"""Warm-pool benchmark: handing a pre-started sandbox to a run, against starting one cold.

* cold start: ``backend.start`` of a fresh sandbox in a fresh workspace holding the agent, then the
  ``run`` call until its answer: what a run waits for without a pool (the baseline).
* warm handoff: ``WarmPool.acquire`` of a warm sandbox, the rename of its workspace to the run's
  path, the agent's source written there, then the ``run`` call (with a run token, as the worker
  sends it, so the in-sandbox model endpoint is opened) until its answer: what a run waits
  for with the pool. Target: p95 <= 5 ms on every backend. Each acquire waits (unmeasured) until
  the background refill has a warm sandbox ready, so every measured handoff is a warm one.
* memory per warm sandbox: the proportional set size of the sandbox's processes (``/proc``), beside
  the estimate the pool budgets with (``MEMORY_ESTIMATE_MIB``).

The agent is trivial (returns its input), so the figures are the sandbox's own cost. Run
``.venv/bin/python bench/pool.py [--backend process|bwrap|gvisor] [--runs N]``. The machine is
shared: figures are noisy, compare the two rows of one run rather than runs with each other.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import Stats, fmt_ms, fmt_ratio, machine_facts
from bastion.api import RandomIds, SystemClock
from bastion.execution.sandbox import (
    MEMORY_ESTIMATE_MIB,
    CallError,
    PoolKey,
    SandboxSpec,
    WarmPool,
    open_backend,
)

AGENT = "def main(input):\n    return input\n"
TARGET_P95_MS = 5.0


def refuse(method: str, params: dict[str, Any]) -> Any:
    raise CallError(-32601, f"no {method}")


def call(sandbox: Any, n: int) -> None:
    # As the worker calls it: every run gets its model endpoint's token (the in-sandbox shim).
    env = {"BASTION_RUN_TOKEN": f"bst-run-bench-{n}"}
    answer = sandbox.call("run", {"entrypoint": "agent:main", "input": n, "env": env}, handler=refuse)
    assert answer == n, answer


def cold(backend_name: str, root: Path, runs: int) -> Stats:
    backend = open_backend(backend_name, state_dir=root / "state")
    durations: list[int] = []
    try:
        for n in range(runs):
            workspace = root / "cold" / str(n)
            workspace.mkdir(parents=True)
            began = time.perf_counter_ns()
            (workspace / "agent.py").write_text(AGENT)
            sandbox = backend.start(SandboxSpec(workspace=workspace), on_log=lambda _: None)
            try:
                call(sandbox, n)
                durations.append(time.perf_counter_ns() - began)
            finally:
                sandbox.stop()
            shutil.rmtree(workspace)
    finally:
        backend.close()
    return Stats.of_ns(durations)


def pss_mib(pid: int) -> float:
    """Proportional set size of ``pid`` and its descendants, in MiB: resident pages, the shared
    ones (the interpreter's code, shared by every sandbox) divided among the processes using them."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        todo.extend(int(c) for c in children)
    return total / 1024


def warm(backend_name: str, root: Path, runs: int, size: int) -> tuple[Stats, int, float]:
    pool = WarmPool(
        open_backend=lambda name: open_backend(name, state_dir=root / "state"),
        workspace_dir=root / "pool",
        clock=SystemClock(),
        ids=RandomIds(),
        size=size,
        default_keys=[PoolKey(backend=backend_name)],
        check_seconds=0.01,
    )
    key = PoolKey(backend=backend_name)
    durations: list[int] = []
    cold_ones = 0
    memory: list[float] = []
    pool.start()
    try:
        for n in range(runs):
            deadline = time.monotonic() + 30
            while pool.warm_count(key) < size and time.monotonic() < deadline:
                time.sleep(0.002)
            if n == 0:
                pids = [p.started.status().pid for p in pool._warm[key]]  # pyright: ignore[reportPrivateUsage]
                memory = [pss_mib(pid) for pid in pids if pid]
            target = root / "runs" / str(n)
            target.parent.mkdir(parents=True, exist_ok=True)
            began = time.perf_counter_ns()
            pooled = pool.acquire(key, run_id=str(n), on_log=lambda _: None)
            pooled.workspace.rename(target)
            (target / "agent.py").write_text(AGENT)
            call(pooled.started, n)
            durations.append(time.perf_counter_ns() - began)
            cold_ones += not pooled.warm
            pool.release(pooled)
            shutil.rmtree(target)
    finally:
        pool.close()
    return Stats.of_ns(durations), cold_ones, sum(memory) / len(memory) if memory else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="process", help="process, bwrap or gvisor")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--size", type=int, default=2, help="warm sandboxes kept ready")
    args = parser.parse_args()
    print(machine_facts())
    print(f"backend {args.backend}, {args.runs} runs of a trivial agent, pool size {args.size}\n")
    with tempfile.TemporaryDirectory(prefix="bastion-bench-pool-") as scratch:
        root = Path(scratch)
        root.chmod(0o711)  # bwrap's unprivileged uid must traverse to the SDK copy in state/
        baseline = cold(args.backend, root, args.runs)
        handoff, cold_ones, memory = warm(args.backend, root, args.runs, args.size)
    print(f"{'':<34}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}{'vs cold p95':>13}")
    for label, stats in (("cold start + first answer", baseline), ("warm handoff + first answer", handoff)):
        print(
            f"{label:<34}{fmt_ms(stats.p50):>9}{fmt_ms(stats.p95):>9}{fmt_ms(stats.p99):>9}"
            f"{fmt_ms(stats.max):>9}{fmt_ratio(stats.p95, baseline.p95):>13}"
        )
    verdict = "meets" if handoff.p95 <= TARGET_P95_MS else "MISSES"
    print(f"\nwarm handoff p95 {handoff.p95:.2f} ms {verdict} the target of {TARGET_P95_MS:g} ms")
    print(f"handoffs that found no warm sandbox (started cold): {cold_ones} of {args.runs}")
    estimate = MEMORY_ESTIMATE_MIB.get(args.backend)
    print(f"memory per warm sandbox: {memory:.1f} MiB PSS (the pool budgets {estimate} MiB each)")


if __name__ == "__main__":
    main()
