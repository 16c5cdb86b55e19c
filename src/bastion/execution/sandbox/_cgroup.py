"""Per-sandbox cgroups (v1: memory, pids, cpu, cpuacct), for root only.

``/sys/fs/cgroup/<controller>/bastion/<id>`` per sandbox and controller. What each one enforces:

* memory: ``memory.limit_in_bytes`` (and ``memory.memsw.limit_in_bytes`` where swap is accounted)
  over every process of the sandbox together, tmpfs pages they write included; past it the kernel
  OOM-kills inside the sandbox, and ``oom_kills`` tells the host that is what happened.
* pids: ``pids.max`` over every process and thread; a fork past it fails with EAGAIN and
  ``pids_exhausted`` tells the host (the sandbox is then ended: a fork bomb does not get to retry).
* cpu: ``cpu.cfs_quota_us`` caps the sandbox at one CPU's worth of time per period.
* cpuacct: ``cpuacct.usage`` is the total CPU time of every process of the sandbox; the host's
  watchdog compares it with the limit (granularity: the watchdog's period).

A cgroup is removed on ``remove`` after its processes are gone; ``sweep`` removes what a killed
worker left behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
PARENT = "bastion"
_PERIOD_US = 100_000


def unavailable() -> str | None:
    """None when per-sandbox cgroups can be made here, else why not."""
    if os.geteuid() != 0:
        return "per-sandbox cgroups need root (limits fall back to rlimits)"
    missing = [c for c in CONTROLLERS if not (ROOT / c / "cgroup.procs").exists()]
    if missing:
        return f"the cgroup v1 controllers {', '.join(missing)} are not mounted under {ROOT}"
    return None


class Cgroup:
    """One sandbox's cgroups. Create it before the sandbox's first process runs."""

    def __init__(self, name: str, *, memory_bytes: int, processes: int) -> None:
        self.name = name
        self.dirs: dict[str, Path] = {}
        try:
            for controller in CONTROLLERS:
                path = ROOT / controller / PARENT / name
                path.mkdir(parents=True)
                self.dirs[controller] = path
            self._set("memory", "memory.limit_in_bytes", memory_bytes)
            swap = self.dirs["memory"] / "memory.memsw.limit_in_bytes"
            if swap.exists():
                swap.write_text(str(memory_bytes))
            self._set("pids", "pids.max", processes)
            self._set("cpu", "cpu.cfs_period_us", _PERIOD_US)
            self._set("cpu", "cpu.cfs_quota_us", _PERIOD_US)
        except OSError:
            self.remove()
            raise

    def _set(self, controller: str, knob: str, value: int) -> None:
        (self.dirs[controller] / knob).write_text(str(value))

    def add(self, pid: int) -> None:
        """Move ``pid`` (a process that has not forked yet) into every controller."""
        for path in self.dirs.values():
            (path / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        try:
            text = (self.dirs["pids"] / "cgroup.procs").read_text()
        except (OSError, KeyError):
            return []
        return [int(line) for line in text.split()]

    def cpu_seconds(self) -> float:
        try:
            return int((self.dirs["cpuacct"] / "cpuacct.usage").read_text()) / 1e9
        except (OSError, KeyError, ValueError):
            return 0.0

    def memory_bytes(self) -> int:
        try:
            return int((self.dirs["memory"] / "memory.usage_in_bytes").read_text())
        except (OSError, KeyError, ValueError):
            return 0

    def oom_kills(self) -> int:
        return _field(self.dirs.get("memory"), "memory.oom_control", "oom_kill")

    def pids_exhausted(self) -> bool:
        return _field(self.dirs.get("pids"), "pids.events", "max") > 0

    def kill(self) -> None:
        """SIGKILL every process in the sandbox until none is left (pids.max bounds the forks)."""
        for _ in range(100):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.001)

    def remove(self, *, wait: float = 2.0) -> bool:
        """Remove the cgroup directories; True when they are all gone. A directory stays until
        the processes in it are reaped, so this retries for up to ``wait`` seconds."""
        until = time.monotonic() + wait
        for controller, path in list(self.dirs.items()):
            while True:
                try:
                    path.rmdir()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno == errno.EBUSY and time.monotonic() < until:
                        self.kill()
                        time.sleep(0.005)
                        continue
                    return False
                del self.dirs[controller]
                break
        return True


def _field(directory: Path | None, knob: str, name: str) -> int:
    if directory is None:
        return 0
    try:
        for line in (directory / knob).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == name:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def sweep(stale: Callable[[str], bool]) -> None:
    """Kill and remove this host's sandbox cgroups whose name ``stale`` accepts, in every mounted
    hierarchy: the ones a worker killed with SIGKILL, or runsc, left behind."""
    for hierarchy in sorted(ROOT.iterdir()):
        parent = hierarchy / PARENT
        if hierarchy.is_symlink() or not parent.is_dir():
            continue
        for path in parent.iterdir():
            if path.is_dir() and stale(path.name):
                leftover = Cgroup.__new__(Cgroup)
                leftover.name = path.name
                leftover.dirs = {"pids": ROOT / "pids" / PARENT / path.name}
                leftover.kill()
                leftover.dirs = {hierarchy.name: path}
                leftover.remove(wait=0.5)
