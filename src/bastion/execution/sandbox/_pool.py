"""The warm pool: sandboxes started ahead of the runs that will use them.

Per key (backend, image digest, limits) the pool keeps ``size`` sandboxes started and idle, each in
its own empty workspace directory. ``acquire`` hands one to a run at once (or starts one cold when
none is ready); the run's worker renames the sandbox's workspace directory to the run's attempt
path and writes the agent's source into it before its first ``call``, which works because every
backend resolves the workspace through the sandbox's cwd (process) or a bind mount (bwrap,
gVisor), both of which follow a rename. A sandbox that served a run is destroyed, never reused:
nothing of one run can reach the next.

Lifecycle of a pooled sandbox: Cold (starting) -> Warm (idle, ready) -> Hot (serving a run) ->
Terminated (stopped) | Failed (could not start, died while warm, or failed its run).

The default keys are kept filled from the start; any other key once a run has used it, until it
goes unused for ``idle_seconds``. What the pool holds warm is bounded by a memory budget with an
estimate per backend; keys used most recently get the room first. A background thread refills,
replaces sandboxes that died while warm, and retires idle keys.
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from bastion.api import Clock, IdSource
from bastion.errors import RunError, SandboxError

from ._base import (
    CallError,
    Image,
    LogSink,
    Sandbox,
    SandboxBackend,
    SandboxLimits,
    SandboxSpec,
    SandboxState,
)

log = logging.getLogger("bastion.pool")

MEMORY_ESTIMATE_MIB = {"process": 13, "bwrap": 13, "gvisor": 40}
"""What one idle warm sandbox costs, per backend, rounded up with room from bench/pool.py's
proportional set size of its processes, its model endpoint started (process 11.1 MiB, bwrap
11.3 MiB with bwrap itself, gVisor 36.8 MiB): an estimate below the truth lets the pool
overcommit the host."""
_UNKNOWN_ESTIMATE_MIB = 32
_ENDED_KEPT = 64
"""Ended sandboxes kept in ``snapshot`` (and reported once) before they are forgotten."""
_RETRY_SECONDS = 30.0
"""After a key's sandbox fails to start, the pool waits this long before warming that key again."""
_METHOD_NOT_FOUND = -32601


@dataclass(frozen=True, kw_only=True)
class PoolKey:
    """What makes two sandboxes interchangeable before a run: backend, image and limits."""

    backend: str
    image: Image | None = None
    limits: SandboxLimits = field(default_factory=SandboxLimits)

    @property
    def image_label(self) -> str:
        """``default`` (the backend's interpreter), the base name, or ``base@digest12``."""
        if self.image is None:
            return "default"
        if self.image.site_packages is None:
            return self.image.name
        return f"{self.image.name}@{self.image.digest[:12]}"


@dataclass(frozen=True, kw_only=True)
class SandboxInfo:
    """One pooled sandbox as the API shows it."""

    id: str
    backend: str
    image: str
    state: SandboxState
    started_at: datetime
    changed_at: datetime
    run_id: str | None = None
    """The run it serves, while Hot (and after, once it ended)."""
    tenant_id: str | None = None
    reason: str | None = None
    """Why it failed, for Failed."""


class _Router:
    """The sandbox's log sink: lines go to the run that holds it, and nowhere before."""

    def __init__(self) -> None:
        self.target: LogSink | None = None

    def __call__(self, line: str) -> None:
        target = self.target
        if target is not None:
            target(line)
        else:
            log.debug("a warm sandbox wrote before any run held it: %s", line[:200])


class PooledSandbox:
    """A sandbox handed out by ``WarmPool.acquire``; give it back with ``WarmPool.release``."""

    def __init__(self, key: PoolKey, id_: str, workspace: Path, router: _Router, info: SandboxInfo) -> None:
        self.key, self.id, self.workspace = key, id_, workspace
        self.sandbox: Sandbox | None = None
        self.warm = False
        """True if it was started ahead of the run, False if started cold by ``acquire``."""
        self.log_router = router
        self.info = info

    @property
    def started(self) -> Sandbox:
        assert self.sandbox is not None, "the sandbox has not started"
        return self.sandbox


class WarmPool:
    """Warm sandboxes per key, a background refill, and the backends, opened once by name."""

    def __init__(
        self,
        *,
        open_backend: Callable[[str], SandboxBackend],
        workspace_dir: Path,
        clock: Clock,
        ids: IdSource,
        size: int = 2,
        memory_budget_mib: int = 256,
        default_keys: Sequence[PoolKey] | Callable[[], Sequence[PoolKey]] = (),
        idle_seconds: float = 600.0,
        check_seconds: float = 1.0,
        refill_delay_seconds: float = 0.05,
        on_change: Callable[[SandboxInfo], None] | None = None,
    ) -> None:
        """Args:
        open_backend: opens a backend by name (raises SandboxError with the reason and fix).
        workspace_dir: where warm sandboxes' workspaces are made; owned by the pool, removed by
            ``close``. Must be on the same filesystem as the runs' workspaces (they are renamed).
        size: warm sandboxes per key; 0 makes every ``acquire`` a cold start.
        memory_budget_mib: the most that warm sandboxes may use together, by estimate.
        default_keys: keys kept warm from the start, whether used or not; or a function giving
            them, called once on the refill thread (choosing them may take a while: a probe).
        idle_seconds: a key not acquired for this long is no longer kept warm.
        check_seconds: how often the refill thread checks warm sandboxes are alive.
        refill_delay_seconds: how long after a handoff the refill waits before starting a
            replacement, so that starting one does not take the CPU from the run just handed one.
        on_change: called with a sandbox's new view on every state change (from any thread).
        """
        self._open_backend = open_backend
        self.workspace_dir = workspace_dir
        self.clock, self.ids = clock, ids
        self.size, self.memory_budget_mib = size, memory_budget_mib
        self.idle_seconds, self.check_seconds = idle_seconds, check_seconds
        self.refill_delay_seconds = refill_delay_seconds
        self._handed_at = 0.0
        self._on_change = on_change
        self._default_keys = default_keys
        self._defaults: list[PoolKey] = []
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._backends: dict[str, SandboxBackend] = {}
        self._backend_lock = threading.Lock()
        self._warm: dict[PoolKey, collections.deque[PooledSandbox]] = {}
        self._starting: collections.Counter[PoolKey] = collections.Counter()
        self._hot: dict[str, PooledSandbox] = {}
        self._ended: collections.deque[SandboxInfo] = collections.deque(maxlen=_ENDED_KEPT)
        self._last_used: dict[PoolKey, float] = {}
        self._retry_at: dict[PoolKey, float] = {}
        self._thread: threading.Thread | None = None
        self._closed = False

    # --- backends -----------------------------------------------------------------------

    def backend(self, name: str) -> SandboxBackend:
        """Backend ``name``, opened on first use and kept.

        Raises:
            SandboxError: it cannot be set up on this machine (the reason and the fix).
        """
        with self._backend_lock:
            opened = self._backends.get(name)
            if opened is None:
                if self._closed:
                    raise SandboxError("the sandbox pool is closed")
                opened = self._backends[name] = self._open_backend(name)
            return opened

    # --- handing out ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the background refill (idempotent); ``acquire`` works without it, cold."""
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(target=self._refill_loop, name="bastion-pool", daemon=True)
            self._thread.start()

    def acquire(
        self, key: PoolKey, *, run_id: str, tenant_id: str | None = None, on_log: LogSink
    ) -> PooledSandbox:
        """A started sandbox for ``key``, Hot for ``run_id``: a warm one, else one started now.

        Raises:
            SandboxError: the backend cannot be set up, or the sandbox did not start.
        """
        taken: PooledSandbox | None = None
        dead: list[PooledSandbox] = []
        with self._lock:
            if self._closed:
                raise SandboxError("the sandbox pool is closed")
            self._last_used[key] = self._handed_at = time.monotonic()
            queue = self._warm.get(key)
            while queue:
                candidate = queue.popleft()
                if _alive(candidate.started):
                    taken = candidate
                    break
                dead.append(candidate)
            self._wake.notify_all()
        for gone in dead:
            self._destroy(gone, SandboxState.FAILED, "it died while warm")
        if taken is None:
            taken = self._start(key, for_run=True)
        taken.log_router.target = on_log
        with self._lock:
            self._hot[taken.id] = taken
        self._change(taken, SandboxState.HOT, run_id=run_id, tenant_id=tenant_id)
        return taken

    def release(self, pooled: PooledSandbox) -> None:
        """Destroy a sandbox a run is done with (never reused); its workspace stays where the
        run put it, or is removed if it is still in the pool's directory."""
        with self._lock:
            self._hot.pop(pooled.id, None)
        sandbox = pooled.started
        sandbox.stop()
        status = sandbox.status()
        state = SandboxState.FAILED if status.state is SandboxState.FAILED else SandboxState.TERMINATED
        pooled.log_router.target = None
        self._change(pooled, state, reason=status.reason if state is SandboxState.FAILED else None)
        _remove_dir(pooled.workspace)

    def snapshot(self) -> list[SandboxInfo]:
        """Every sandbox the pool holds (Cold, Warm, Hot), then the recently ended ones."""
        with self._lock:
            live = [p.info for queue in self._warm.values() for p in queue]
            live += [p.info for p in self._hot.values()]
            ended = list(self._ended)
        return sorted(live, key=lambda i: i.started_at) + ended

    def warm_count(self, key: PoolKey | None = None) -> int:
        with self._lock:
            if key is not None:
                return len(self._warm.get(key, ()))
            return sum(len(q) for q in self._warm.values())

    def close(self) -> None:
        """Stop the refill, destroy every sandbox still held, close the backends; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wake.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=30)
        with self._lock:
            warm = [p for queue in self._warm.values() for p in queue]
            hot = list(self._hot.values())
            self._warm.clear()
            self._hot.clear()
        for pooled in warm:
            self._destroy(pooled, SandboxState.TERMINATED, None)
        for pooled in hot:  # runs still holding one: their worker is going away too
            pooled.started.stop()
            self._change(pooled, SandboxState.TERMINATED)
        with self._backend_lock:
            backends, self._backends = list(self._backends.values()), {}
        for backend in backends:
            try:
                backend.close()
            except Exception:
                log.exception("closing the %s sandbox backend failed", backend.name)
        _remove_dir(self.workspace_dir)

    # --- starting and destroying -------------------------------------------------------------

    def _start(self, key: PoolKey, *, for_run: bool) -> PooledSandbox:
        backend = self.backend(key.backend)
        id_ = f"sb-{self.ids.token(6)}"
        workspace = self.workspace_dir / id_
        now = self.clock.now()
        info = SandboxInfo(
            id=id_,
            backend=key.backend,
            image=key.image_label,
            state=SandboxState.COLD,
            started_at=now,
            changed_at=now,
        )
        pooled = PooledSandbox(key, id_, workspace, _Router(), info)
        self._emit(info)
        try:
            self.workspace_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            workspace.mkdir(mode=0o700)
            spec = SandboxSpec(workspace=workspace, limits=key.limits, image=key.image)
            pooled.sandbox = backend.start(spec, on_log=pooled.log_router)
            if not for_run:
                _wait_ready(pooled.sandbox)
        except (RunError, OSError) as exc:
            if pooled.sandbox is not None:
                pooled.sandbox.stop()
            _remove_dir(workspace)
            reason = exc.detail if isinstance(exc, RunError) else str(exc)
            self._change(pooled, SandboxState.FAILED, reason=reason)
            if isinstance(exc, SandboxError):
                raise
            if isinstance(exc, RunError):
                raise SandboxError(f"the sandbox did not become ready: {exc.detail}") from exc
            raise SandboxError(f"could not make the sandbox's workspace: {exc}") from exc
        pooled.warm = not for_run
        if not for_run:
            self._change(pooled, SandboxState.WARM)
        return pooled

    def _destroy(self, pooled: PooledSandbox, state: SandboxState, reason: str | None) -> None:
        if pooled.sandbox is not None:
            pooled.sandbox.stop()
        self._change(pooled, state, reason=reason)
        _remove_dir(pooled.workspace)

    def _change(self, pooled: PooledSandbox, state: SandboxState, **values: str | None) -> None:
        pooled.info = replace(pooled.info, state=state, changed_at=self.clock.now(), **values)  # pyright: ignore[reportArgumentType]
        if state in (SandboxState.TERMINATED, SandboxState.FAILED):
            with self._lock:
                self._ended.append(pooled.info)
        self._emit(pooled.info)

    def _emit(self, info: SandboxInfo) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change(info)
        except Exception:
            log.exception("reporting sandbox %s failed", info.id)

    # --- the refill thread -------------------------------------------------------------------

    def _refill_loop(self) -> None:
        keys: Sequence[PoolKey]
        try:
            keys = self._default_keys() if callable(self._default_keys) else self._default_keys
        except Exception:
            log.exception("choosing the sandbox pool's default keys failed; warming on demand only")
            keys = []
        with self._lock:
            self._defaults = list(dict.fromkeys(keys))
        while True:
            with self._lock:
                if self._closed:
                    return
                settle = self._handed_at + self.refill_delay_seconds - time.monotonic()
                if settle > 0:
                    self._wake.wait(settle)
                    continue
            try:
                self._reap_dead()
                self._reconcile()
            except Exception:
                log.exception("the sandbox pool's refill failed; retrying")
            with self._lock:
                if self._closed:
                    return
                self._wake.wait(self.check_seconds)

    def _reap_dead(self) -> None:
        dead: list[PooledSandbox] = []
        with self._lock:
            for queue in self._warm.values():
                for pooled in list(queue):
                    if not _alive(pooled.started):
                        queue.remove(pooled)
                        dead.append(pooled)
        for pooled in dead:
            status = pooled.started.status()
            self._destroy(pooled, SandboxState.FAILED, status.reason or "it died while warm")

    def _plan(self) -> dict[PoolKey, int]:
        """How many warm sandboxes each key should have now (called with the lock held)."""
        now = time.monotonic()
        for key, used in list(self._last_used.items()):
            if now - used > self.idle_seconds and key not in self._defaults:
                del self._last_used[key]
        recent = sorted(self._last_used, key=lambda k: self._last_used[k], reverse=True)
        budget = self.memory_budget_mib
        plan: dict[PoolKey, int] = {}
        for key in dict.fromkeys([*self._defaults, *recent]):
            cost = MEMORY_ESTIMATE_MIB.get(key.backend, _UNKNOWN_ESTIMATE_MIB)
            wanted = 0 if self._retry_at.get(key, 0.0) > now else self.size
            count = max(0, min(wanted, budget // cost))
            plan[key] = count
            budget -= count * cost
        return plan

    def _reconcile(self) -> None:
        """Retire what is over plan, then start one sandbox at a time until the plan is met."""
        while True:
            surplus: list[PooledSandbox] = []
            start: PoolKey | None = None
            with self._lock:
                if self._closed:
                    return
                plan = self._plan()
                for key, queue in self._warm.items():
                    while len(queue) + self._starting[key] > plan.get(key, 0) and queue:
                        surplus.append(queue.pop())
                for key, wanted in plan.items():
                    if len(self._warm.get(key, ())) + self._starting[key] < wanted:
                        start = key
                        self._starting[key] += 1
                        break
            for pooled in surplus:
                self._destroy(pooled, SandboxState.TERMINATED, None)
            if start is None:
                return
            try:
                pooled = self._start(start, for_run=False)
            except SandboxError as exc:
                log.warning("could not warm a %s sandbox: %s", start.backend, exc.detail)
                with self._lock:
                    self._starting[start] -= 1
                    self._retry_at[start] = time.monotonic() + _RETRY_SECONDS
                continue
            with self._lock:
                self._starting[start] -= 1
                if self._closed:
                    late = True
                else:
                    late = False
                    self._warm.setdefault(start, collections.deque()).append(pooled)
            if late:
                self._destroy(pooled, SandboxState.TERMINATED, None)
                return


def _refuse(method: str, params: object) -> object:
    raise CallError(_METHOD_NOT_FOUND, f"a warm sandbox may not call {method!r}")


def _wait_ready(sandbox: Sandbox) -> None:
    """One ``ping`` round trip: the interpreter is up and the runner serves (a runner without
    ``ping`` says so, which proves the same)."""
    try:
        sandbox.call("ping", {}, handler=_refuse)
    except CallError as exc:
        if exc.code != _METHOD_NOT_FOUND:
            raise SandboxError(f"the sandbox did not become ready: {exc.message}") from None


def _alive(sandbox: Sandbox) -> bool:
    """Ready for a call: Warm by its own account, and its process (our child) has not exited.

    A backend learns that its idle sandbox died only when it next talks to it; ``waitid`` with
    WNOWAIT asks the kernel without reaping, so the backend still sees the exit status itself.
    """
    status = sandbox.status()
    if status.state is not SandboxState.WARM:
        return False
    if status.pid is None:
        return True
    try:
        exited = os.waitid(os.P_PID, status.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # not our child (or reaped already): the backend's word stands
        return True
    return exited is None


def _remove_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)


def pool_dir_name(pid: int, token: str) -> str:
    """The directory name of one worker process's pool: ``host.pid.token`` (a token has no dots)."""
    return f"{socket.gethostname()}.{pid}.{token}"


def remove_stale_pool_dirs(parent: Path) -> list[Path]:
    """Remove pool directories left by worker processes of this host that no longer exist.

    A worker killed with SIGKILL leaves its warm sandboxes' (empty) workspaces behind; their
    processes end on their own when their channel closes."""
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    host = socket.gethostname()
    for child in parent.iterdir():
        parts = child.name.rsplit(".", 2)
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
        except PermissionError:
            continue
    return removed


__all__ = [
    "MEMORY_ESTIMATE_MIB",
    "PoolKey",
    "PooledSandbox",
    "SandboxInfo",
    "WarmPool",
    "pool_dir_name",
    "remove_stale_pool_dirs",
]
