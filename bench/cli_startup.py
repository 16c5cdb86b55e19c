"""CLI and worker start-up benchmark: how long a command takes from exec to exit, as a ratio of
``python -c pass`` measured in the same run, and how long a worker takes to be ready to claim.

What it measures (a fresh process each time; the median of ``--runs`` runs):

* ``python -c pass``: the interpreter alone, the baseline of every ratio.
* ``typer alone``: a two-command typer app, what the framework costs any command before Bastion
  does anything (typer 0.29 coerces every parameter through a pydantic TypeAdapter, so this
  imports pydantic too): the floor of a client command.
* ``bastion --help``, ``bastion --version``, ``bastion explain Agent.spec`` (offline), and
  ``bastion get agents`` / ``bastion runs`` against a running ``bastion serve`` on SQLite (started
  here, in a throwaway data directory, with two agents applied). Target: at most 0.3 s each.
* ``bastion worker``: from exec to its "worker started" line (it can claim runs then), on the same
  database; and the time its imports took, from ``-X importtime`` (the sum of the top-level
  imports, in separate runs because ``-X importtime`` slows imports down).

Each row shows the wall time and the CPU time (user + system) of the child, each with its ratio
to the baseline's: on a busy machine wall times grow with the queue for the CPUs, CPU times much
less, so compare the CPU ratios across machines and runs. The children run with this process's
environment less ``PYTHONDONTWRITEBYTECODE`` (each command runs once first, so byte code is cached
as on a user's machine).

Run it with ``.venv/bin/python bench/cli_startup.py`` (``--runs 5`` is quicker).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

TARGET_S = 0.3
TYPER_FLOOR = """
import typer
app = typer.Typer(rich_markup_mode=None)
@app.command()
def explain(path: str, output: str = "text") -> None:
    print(path)
@app.command()
def other() -> None: ...
app()
"""
"""A two-command typer app: what the framework alone costs a command (typer 0.29 coerces every
parameter through a pydantic TypeAdapter, so this imports pydantic too)."""
ROOT = Path(__file__).resolve().parent.parent
BASTION = [sys.executable, "-m", "bastion"]
AGENTS = """
apiVersion: bastion/v1
kind: Agent
metadata: {name: bench-a}
spec: {runtime: python, entrypoint: "agent:main", source: "def main(input):\\n    return input\\n"}
---
apiVersion: bastion/v1
kind: Agent
metadata: {name: bench-b}
spec: {runtime: python, entrypoint: "agent:main", source: "def main(input):\\n    return input\\n"}
"""


def wall(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Seconds from exec to exit, and the CPU seconds the process used (user and system: less
    sensitive to a busy machine). A failing command is an error, never a fast figure."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=120)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return elapsed, cpu


def median_of(command: list[str], env: dict[str, str], runs: int) -> tuple[float, float]:
    wall(command, env)  # warm: byte code written, files in the page cache
    samples = [wall(command, env) for _ in range(runs)]
    return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"bastion serve exited {process.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit("bastion serve did not become healthy in 60 s")


def worker_ready(env: dict[str, str], *, importtime: bool = False) -> tuple[float, str]:
    """Seconds from exec to the worker's ready line, and its stderr (after SIGTERM)."""
    command = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "bastion", "worker"]
    # stderr to a file: a pipe nobody reads could fill with -X importtime lines and stall the worker
    with tempfile.TemporaryFile("w+") as errors:
        start = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=errors, text=True)
        assert process.stdout is not None
        line = process.stdout.readline()
        elapsed = time.perf_counter() - start
        process.terminate()
        process.communicate(timeout=60)
        errors.seek(0)
        stderr = errors.read()
    if "worker started" not in line:
        raise SystemExit(f"bastion worker did not start: {line}{stderr}")
    return elapsed, stderr


def import_seconds(stderr: str) -> float:
    """The sum of the top-level imports' cumulative times in ``-X importtime`` output."""
    total_us = 0
    for row in stderr.splitlines():
        if not row.startswith("import time:") or "|" not in row:
            continue
        _, cumulative, name = row.split("|", 2)
        if cumulative.strip().isdigit() and not name.startswith("  "):
            total_us += int(cumulative)
    return total_us / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9, help="runs per command; the median is shown")
    args = parser.parse_args()
    runs: int = args.runs

    home = Path(tempfile.mkdtemp(prefix="bastion-bench-cli-"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env |= {"BASTION_HOME": str(home), "BASTION_POOL_SIZE": "0"}
    env.pop("BASTION_URL", None)
    env.pop("BASTION_API_KEY", None)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    print(
        f"# CLI start-up: {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; median of {runs} runs",
        flush=True,
    )
    server = subprocess.Popen(
        [*BASTION, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        wait_healthy(url, server)
        manifest = home / "agents.yaml"
        manifest.write_text(AGENTS, encoding="utf-8")
        wall([*BASTION, "apply", "-f", str(manifest)], env)

        baseline, baseline_cpu = median_of([sys.executable, "-c", "pass"], env, runs)
        print(f"{'command':<34}{'wall':>8}{'ratio':>8}{'cpu':>9}{'ratio':>8}  wall target {TARGET_S:.1f} s")

        def row(label: str, took: float, cpu: float, verdict: str = "") -> None:
            print(
                f"{label:<34}{took * 1000:>5.0f} ms{took / baseline:>7.1f}x"
                f"{cpu * 1000:>6.0f} ms{cpu / max(baseline_cpu, 1e-3):>7.1f}x  {verdict}"
            )

        row("python -c pass", baseline, baseline_cpu)
        row(
            "typer alone (2-command app)",
            *median_of([sys.executable, "-c", TYPER_FLOOR, "explain", "x"], env, runs),
        )
        for label, argv in (
            ("bastion --help", ["--help"]),
            ("bastion --version", ["--version"]),
            ("bastion explain Agent.spec", ["explain", "Agent.spec"]),
            ("bastion get agents", ["get", "agents"]),
            ("bastion get agents -o json", ["get", "agents", "-o", "json"]),
            ("bastion runs", ["runs"]),
        ):
            took, cpu = median_of([*BASTION, *argv], env, runs)
            row(label, took, cpu, "ok" if took <= TARGET_S else "OVER")

        worker_runs = max(3, runs // 3)
        worker_ready(env)  # warm
        ready = statistics.median(worker_ready(env)[0] for _ in range(worker_runs))
        print(f"{'bastion worker: start to ready':<34}{ready * 1000:>5.0f} ms{ready / baseline:>7.1f}x")
        imports = statistics.median(
            import_seconds(worker_ready(env, importtime=True)[1]) for _ in range(worker_runs)
        )
        print(f"{'bastion worker: imports':<34}{imports * 1000:>5.0f} ms  (-X importtime, sum)")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
