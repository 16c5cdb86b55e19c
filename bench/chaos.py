"""Durability under chaos: workers killed with SIGKILL at random, and zombies woken from SIGSTOP.

* chaos: ``--runs`` runs (default 100) of a 30-call agent on PostgreSQL, with 3 workers (then 1),
  one SIGKILLed every 1-3 s and replaced at once. Prints runs lost or failed, calls executed
  again after an attempt had recorded them (the tool ignores idempotency keys and counts every
  request), leftovers, and resume latency (p50/p95): from the kill, and from the lease's expiry.
* start-to-ready: seconds from spawning ``bastion worker`` to its "worker started" line, and its
  import time (``python -X importtime``).
* sends after wake-up: a worker running 6 busy runs is SIGSTOPped, another takes them over, the
  first is woken: requests it sent afterwards for calls its successor had already recorded.

Run ``.venv/bin/python bench/chaos.py [--runs N] [--steps ready,wake,chaos,single]`` (the test suite runs a small
version: tests/test_durability.py). The machine is shared: figures are noisy.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Generator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _common import machine_facts

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import POSTGRES_ADMIN_URL, PostgresDatabases
from tests.test_durability import (
    MASTER_KEY,
    Cluster,
    chaos,
    counting_server,
    percentile,
    zombie_sends,
)

from bastion.client import BastionClient
from bastion.control import create_app
from bastion.testing import serve_in_thread


@contextmanager
def cluster(databases: PostgresDatabases) -> Generator[Cluster]:
    with tempfile.TemporaryDirectory(prefix="bastion-chaos-") as tmp, counting_server() as tool:
        built = Cluster("postgres", databases.create(), Path(tmp), tool)
        try:
            with (
                serve_in_thread(create_app(built.bastion)) as api,
                BastionClient(api, built.admin_key) as client,
            ):
                built.client = client
                yield built
        finally:
            built.close()


def seconds(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"p50 {percentile(values, 0.5):.2f} s  p95 {percentile(values, 0.95):.2f} s  max {max(values):.2f} s  (n={len(values)})"


def run_chaos(databases: PostgresDatabases, runs: int, workers: int) -> None:
    with cluster(databases) as built:
        figures = chaos(built, runs=runs, workers=workers, calls=30, stall_seconds=180)
    failed = figures.failed()
    poison = [r for r in failed.values() if r and "poison" in r]
    print(f"\nchaos: {runs} runs, {workers} worker(s), {figures.kills} kills in {figures.seconds:.0f} s")
    print(f"  runs not succeeded: {len(failed)} (failed as poison: {len(poison)})")
    for run_id, reason in list(failed.items())[:5]:
        print(f"    {run_id}: {reason}")
    print(f"  calls executed again after being recorded: {len(figures.late_sends)}")
    print(f"  leftovers: {len(figures.leftovers)} {figures.leftovers[:5]}")
    print(f"  resume after the kill:         {seconds(figures.from_kill)}")
    print(f"  resume after the lease expiry: {seconds(figures.from_expiry)}")
    print(f"    runs in quarantine (run alone): {seconds(figures.quarantined)}")


def start_to_ready(samples: int = 5) -> None:
    with tempfile.TemporaryDirectory(prefix="bastion-ready-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
        env.update(BASTION_HOME=home, BASTION_MASTER_KEY=MASTER_KEY, BASTION_SANDBOX="process")
        env["BASTION_POOL_SIZE"] = "0"
        ready: list[float] = []
        imports: list[float] = []
        for n in range(samples):
            # -X importtime writes a lot to stderr: into a file, or the pipe fills and blocks it.
            trace = Path(home) / f"importtime-{n}.txt"
            began = time.monotonic()
            with trace.open("w") as errors:
                process = subprocess.Popen(
                    [
                        sys.executable,
                        "-X",
                        "importtime",
                        "-c",
                        "from bastion.cli import main; main()",
                        "worker",
                    ],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=errors,
                    text=True,
                )
                assert process.stdout is not None
                line = process.stdout.readline()
                ready.append(time.monotonic() - began)
                process.terminate()
                process.communicate(timeout=60)
            assert "worker started" in line, trace.read_text()[-2000:]
            imports.append(_import_seconds(trace.read_text()))
    print(f"\nworker start-to-ready: {seconds(ready)}")
    print(f"  of which imports:     {seconds(imports)}")


def _import_seconds(importtime: str) -> float:
    """The cumulative import time of the top-level modules ``-X importtime`` listed."""
    total = 0
    for line in importtime.splitlines():
        found = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S.*)$", line)
        if found and not found.group(2).startswith(" "):
            total += int(found.group(1))
    return total / 1e6


def wake_up(databases: PostgresDatabases, rounds: int) -> None:
    late = 0
    for _ in range(rounds):
        with cluster(databases) as built:
            sent, _ = zombie_sends(built)
            late += sent
    print(f"\nsends after wake-up: {late} over {rounds} round(s) of 6 stopped attempts")


def main() -> None:
    parser = argparse.ArgumentParser(description="Durability under chaos (see the module docstring).")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--single-runs", type=int, default=30, help="runs of the 1-worker chaos")
    parser.add_argument("--wake-rounds", type=int, default=3)
    parser.add_argument(
        "--steps",
        default="ready,wake,chaos,single",
        help="which measures, comma-separated: ready, wake, chaos (3 workers), single (1 worker)",
    )
    options = parser.parse_args()
    print(machine_facts(), flush=True)
    databases = PostgresDatabases(POSTGRES_ADMIN_URL)
    steps: dict[str, Callable[[], Any]] = {
        "ready": start_to_ready,
        "wake": lambda: wake_up(databases, options.wake_rounds),
        "chaos": lambda: run_chaos(databases, options.runs, 3),
        "single": lambda: run_chaos(databases, options.single_runs, 1),
    }
    try:
        for name in options.steps.split(","):
            steps[name.strip()]()
    finally:
        databases.drop_all()


if __name__ == "__main__":
    main()
