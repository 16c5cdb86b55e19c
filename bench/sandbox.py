"""Sandbox benchmark: start latency, channel round trip, idle memory and density, per backend.

What it measures, for each backend that works here (the others are listed with the reason):

* ``cold start``: ``backend.start`` plus the first ``run`` call of a trivial agent answered (the
  interpreter up, the runner imported, the workspace module imported): p50 and p95.
* ``round trip``: a gateway-style request from the agent (``tools.call``) answered by a handler that
  returns a canned result at once, timed by the agent around each call; against ``raw pipes``, a
  plain ``python -c`` child echoing JSON lines over stdin/stdout, timed by the parent, measured in
  the same run (target: each backend within 2x of raw pipes).
* ``idle memory``: a warm sandbox (started, one call served, idle), from its cgroup's
  ``memory.usage_in_bytes`` (everything of the sandbox: launcher, bwrap or the sentry, the agent);
  where there is no cgroup, the RSS of its host process.
* ``density``: sandboxes started and kept warm in steps until one fails, the host's available
  memory falls below ``--reserve-gib``, ``--max`` is reached or ``--seconds`` pass: the most that
  were warm at once, and what stopped the ramp.

The machine is shared and has 2 cores: expect noise; the figures are indicative.
Run ``.venv/bin/python bench/sandbox.py`` (as root, the way the worker runs); ``--quick`` is a
smoke run. Warm-pool handoff is measured by the pool's own benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from bastion.execution.sandbox import (
    BACKENDS,
    MIB,
    SandboxBackend,
    SandboxLimits,
    SandboxSpec,
    open_backend,
    probe_backend,
)
from bastion.execution.sandbox._sdk import remove_tree

_AGENT = textwrap.dedent("""\
    import time
    from bastion.agent import tools
    def main(count):
        durations = []
        for _ in range(count or 0):
            began = time.perf_counter_ns()
            tools.call("echo", text="hello")
            durations.append(time.perf_counter_ns() - began)
        return durations
""")
_ECHO = (
    "import json, sys\n"
    "for line in sys.stdin:\n"
    "    m = json.loads(line)\n"
    "    sys.stdout.write(json.dumps({'jsonrpc': '2.0', 'id': m['id'], 'result': {'ok': True}}) + '\\n')\n"
    "    sys.stdout.flush()\n"
)


def _answer(method: str, params: dict[str, Any]) -> Any:
    return {"content": params["args"]["text"]}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _workspace(root: Path) -> Path:
    workspace = Path(tempfile.mkdtemp(dir=root, prefix="ws-"))
    (workspace / "agent.py").write_text(_AGENT)
    return workspace


def _call(sandbox: Any, count: int = 0) -> Any:
    return sandbox.call("run", {"entrypoint": "agent:main", "input": count}, handler=_answer)


def cold_start(backend: SandboxBackend, root: Path, samples: int) -> list[float]:
    took: list[float] = []
    for _ in range(samples):
        workspace = _workspace(root)
        began = time.perf_counter()
        sandbox = backend.start(SandboxSpec(workspace=workspace), on_log=lambda _: None)
        _call(sandbox)
        took.append((time.perf_counter() - began) * 1000)
        sandbox.stop()
    return took


def round_trip(backend: SandboxBackend, root: Path, calls: int) -> list[float]:
    sandbox = backend.start(SandboxSpec(workspace=_workspace(root)), on_log=lambda _: None)
    try:
        _call(sandbox, 200)  # warm-up
        return [ns / 1000 for ns in _call(sandbox, calls)]
    finally:
        sandbox.stop()


def raw_pipes(calls: int) -> list[float]:
    child = subprocess.Popen(
        ["/usr/bin/python3", "-I", "-S", "-c", _ECHO], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert child.stdin is not None and child.stdout is not None
    took: list[float] = []
    try:
        for number in range(calls + 200):
            message = {"jsonrpc": "2.0", "id": number, "method": "tool.call", "params": {"text": "hello"}}
            began = time.perf_counter_ns()
            child.stdin.write(json.dumps(message).encode() + b"\n")
            child.stdin.flush()
            json.loads(child.stdout.readline())
            if number >= 200:
                took.append((time.perf_counter_ns() - began) / 1000)
    finally:
        child.stdin.close()
        child.wait()
        child.stdout.close()
    return took


def _memory(sandbox: Any) -> int:
    cgroup = getattr(sandbox._confinement, "cgroup", None)
    if cgroup is not None:
        return cgroup.memory_bytes()
    status = Path(f"/proc/{sandbox.status().pid}/status").read_text()
    return next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:"))


def _available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / (1024 * 1024)
    return 0.0


def density(backend: SandboxBackend, root: Path, args: argparse.Namespace) -> tuple[int, list[int], str]:
    """(most warm at once, idle memory of the first ten, what stopped the ramp)."""
    warm: list[Any] = []
    memories: list[int] = []
    began, step, why = time.monotonic(), 10, f"reached --max {args.max}"
    limits = SandboxLimits(memory_mib=128, workspace_mib=16)
    try:
        while len(warm) < args.max:
            if time.monotonic() - began > args.seconds:
                why = f"--seconds {args.seconds} passed"
                break
            if _available_gib() < args.reserve_gib:
                why = f"available memory fell below --reserve-gib {args.reserve_gib}"
                break
            try:
                for _ in range(min(step, args.max - len(warm))):
                    spec = SandboxSpec(workspace=_workspace(root), limits=limits)
                    sandbox = backend.start(spec, on_log=lambda _: None)
                    warm.append(sandbox)
                    _call(sandbox)
            except Exception as exc:
                why = f"sandbox {len(warm)} failed: {type(exc).__name__}: {str(exc)[:120]}"
                warm.pop().stop()
                break
            if len(memories) < 10:
                time.sleep(0.2)
                memories = [_memory(s) for s in warm[:10]]
            step = min(step * 2, 50)
        most = len(warm)
    finally:
        for sandbox in warm:
            sandbox.stop()
    return most, memories, why


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--max", type=int, default=400, help="most sandboxes in the density ramp")
    parser.add_argument("--seconds", type=float, default=60.0, help="time budget of each ramp")
    parser.add_argument(
        "--reserve-gib", type=float, default=6.0, help="stop the ramp below this much free memory"
    )
    args = parser.parse_args()
    samples, calls = (5, 500) if args.quick else (30, 5000)
    if args.quick:
        args.max, args.seconds = 20, 15.0
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"sandbox benchmark: {os.cpu_count()} CPUs, uid {os.geteuid()}, python {sys.version.split()[0]}")
    print("shared, noisy machine: indicative figures\n")
    raw = raw_pipes(calls)
    raw_p50 = statistics.median(raw)
    print(f"{'raw pipes (baseline)':<24} round trip p50 {raw_p50:7.1f} us  p95 {_pct(raw, 0.95):7.1f} us")
    for name in args.backends.split(","):
        state = Path(tempfile.mkdtemp(prefix=f"bastion-bench-{name}-"))
        state.chmod(0o711)
        report = probe_backend(name, state_dir=state)
        if not report.works:
            print(f"\n{name}: does not work here: {report.detail}")
            remove_tree(state)
            continue
        backend = open_backend(name, state_dir=state)
        root = Path(tempfile.mkdtemp(prefix="bastion-bench-ws-"))
        try:
            starts = cold_start(backend, root, samples if name != "gvisor" else max(5, samples // 2))
            trips = round_trip(backend, root, calls)
            most, memories, why = density(backend, root, args)
        finally:
            backend.close()
            remove_tree(state)
            shutil.rmtree(root, ignore_errors=True)
        p50 = statistics.median(trips)
        print(f"\n{name}")
        print(
            f"  cold start           p50 {statistics.median(starts):7.1f} ms  p95 {_pct(starts, 0.95):7.1f} ms"
        )
        print(
            f"  round trip           p50 {p50:7.1f} us  p95 {_pct(trips, 0.95):7.1f} us"
            f"  = {p50 / raw_p50:.2f}x raw pipes (target <= 2x)"
        )
        if memories:
            print(
                f"  idle warm memory     {statistics.median(memories) / MIB:7.1f} MiB (median of {len(memories)})"
            )
        print(f"  density              {most} warm at once; stopped: {why}")


if __name__ == "__main__":
    main()
