"""Workers: claim runs, execute one attempt each in a sandbox, keep the lease alive, finish.

A worker that dies loses its lease; another claims the run (attempt + 1) and the new attempt
replays the journal up to where the dead one stopped. A worker that only *paused* past its lease
(a zombie) finds every later write refused by the fence and abandons its attempt silently.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Connection

from bastion.errors import (
    ErrorBudgetExceeded,
    LeaseLost,
    LimitExceeded,
    NonDeterministic,
    RunError,
    RunSuspended,
    SandboxError,
)
from bastion.execution.gateway import Attempt, Gateway, GatewaySession
from bastion.execution.sandbox import (
    BuildProgress,
    CallError,
    Image,
    ImageBuildFailed,
    ImageCache,
    PooledSandbox,
    PoolKey,
    SandboxLimits,
    WarmPool,
)
from bastion.observe import RunSpan, Telemetry
from bastion.observe.journal import Prepared
from bastion.policy import Attempted, RunOutcome, TrustSettings, build_handoff, evaluate_trust

from ._llm_loop import run_llm_agent
from ._standing import Standing, current_standing
from ._states import ACTIVE, RunState
from ._step import HeldStepWriter, StepWriter
from ._store import Claim, RunStore
from ._trust import Outcome, TrustState, TrustStore

_HOLDS = "SELECT attempt, lease_owner, state FROM runs WHERE id = ?"
_ACTIVE = frozenset(str(s) for s in ACTIVE)
APPROVAL_SWEEP_SECONDS = 1.0
"""How often a worker looks for approvals past their deadline."""
log = logging.getLogger("bastion.worker")

PROCESS_WARNING = (
    "this run's sandbox is the 'process' backend, which does not isolate the agent: it can reach the "
    "host's files and network (as the worker's user, or under an unprivileged uid of its own when the "
    "worker is root; development only; use bwrap or gvisor)"
)
_IMAGE_OUTPUT_LINES = 1000
"""pip output lines kept as events per image build; the rest are counted."""


@dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    owner: str
    """This worker's name in leases (host:pid:random)."""
    workspace_root: Path
    """Each run's workspace lives in ``workspace_root/<run id>``; the last attempt's is kept."""
    lease_seconds: float = 5.0
    poll_seconds: float = 0.2
    concurrency: int = 4
    log_flush_seconds: float = 0.25
    sandbox_defaults: SandboxLimits = field(default_factory=SandboxLimits)
    default_backend: str | Callable[[], str] = "process"
    """The sandbox backend of agents whose spec names none, or a function choosing it (called
    once, when a run first needs it: choosing may probe the machine's backends)."""


class _Outcome(Exception):
    """How an attempt ended, when it did not end with a result."""

    def __init__(self, state: RunState | None, reason: str, result: Any = None) -> None:
        super().__init__(reason)
        self.state, self.reason, self.result = state, reason, result


class Worker:
    def __init__(
        self,
        runs: RunStore,
        gateway: Gateway,
        sandboxes: WarmPool,
        config: WorkerConfig,
        *,
        images: ImageCache | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        """Args:
        sandboxes: where attempts get their sandboxes (warm, or started cold); the worker
            starts its refill when it starts running and closes it when it stops.
        images: builds agent images; without it an agent that names an image fails its run.
        """
        self.runs, self.gateway, self.sandboxes, self.config = runs, gateway, sandboxes, config
        self.images = images
        self.telemetry = telemetry or gateway.telemetry
        self._default_backend: str | None = None
        self.steps = StepWriter(runs.db)
        self.trust = TrustStore()
        self._pool = ThreadPoolExecutor(
            max_workers=config.concurrency * 2, thread_name_prefix="bastion-attempt"
        )
        self._active: set[Future[None]] = set()
        self._alone: Future[None] | None = None
        """The attempt of a quarantined run, which no other attempt may run beside."""
        self._lock = threading.Lock()

    def run_until(self, stop: threading.Event, *, on_ready: Callable[[], None] | None = None) -> None:
        """Claim and execute runs until ``stop`` is set; then wait for the attempts in flight and
        destroy the warm sandboxes. ``on_ready`` is called once the worker can claim."""
        self.sandboxes.start()
        if on_ready is not None:
            on_ready()
        swept = 0.0
        try:
            while not stop.is_set():
                if time.monotonic() - swept >= APPROVAL_SWEEP_SECONDS:
                    swept = time.monotonic()
                    self.expire_approvals()
                claimed = self.claim_into_pool()
                if not claimed:
                    stop.wait(self.config.poll_seconds)
        finally:
            self._pool.shutdown(wait=True)
            self.sandboxes.close()

    def default_backend(self) -> str:
        """The backend of agents that name none (chosen on first use, then kept)."""
        with self._lock:
            if self._default_backend is None:
                chosen = self.config.default_backend
                self._default_backend = chosen() if callable(chosen) else chosen
            return self._default_backend

    def expire_approvals(self) -> int:
        """Deny the approvals nobody decided in time and re-queue their runs; returns how many."""
        approvals, expired = self.gateway.approvals, 0
        try:
            now = self.runs.clock.now()
            with self.runs.db.read() as conn:  # the common case, nothing due, takes no write lock
                due = approvals.due(conn, now)
            if not due:
                return 0
            with self.runs.db.write() as conn:
                for approval in due:
                    self.runs.lock(conn, approval.run_id)  # the order a decision takes its locks in
                    if not approvals.expire(conn, approval, now):
                        continue
                    expired += 1
                    self.runs.add_event(
                        conn, approval.run_id, "approval", {"id": approval.id, "state": "expired"}
                    )
                    self.runs.requeue(conn, approval.run_id, reason=f"approval {approval.id} expired")
        except Exception:
            log.exception("expiring approvals failed")
        return expired

    def claim_into_pool(self) -> bool:
        """Claim one run if there is room. A worker with all its slots busy still takes over a dead
        worker's runs, up to as many again: their users are already waiting, and a run must not
        wait for a restarted worker while live ones poll (a worker takes a few seconds to start)."""
        with self._lock:
            self._active = {f for f in self._active if not f.done()}
            busy = len(self._active)
            alone = self._alone is not None and not self._alone.done()
        if busy >= self.config.concurrency * 2 or alone:
            return False  # a quarantined run has this worker to itself
        try:
            claim = self.runs.claim(
                self.config.owner,
                self.config.lease_seconds,
                takeovers_only=busy >= self.config.concurrency,
                idle=busy == 0,
            )
        except Exception:
            log.exception("claiming a run failed")
            return False
        if claim is None:
            return False
        future = self._pool.submit(self.execute, claim)
        with self._lock:
            self._active.add(future)
            if claim.alone:
                self._alone = future
        return True

    def execute(self, claim: Claim) -> None:
        """Run one attempt of a claimed run to its end (or until the lease is lost)."""
        try:
            _AttemptRunner(self, claim).run()
        except Exception:
            log.exception("attempt %s of run %s crashed the worker thread", claim.run.attempt, claim.run.id)


class _Lease:
    """What this process knows of its attempt's lease: valid until a monotonic instant, which
    each renewal moves to the renewal's *start* plus the lease's length (the database dates the
    expiry later than that, so the local view is never the longer one). Monotonic time keeps
    running while the process is stopped, so a worker that wakes from SIGSTOP sees its lease
    expired here before it could act on it."""

    def __init__(self, runner: _AttemptRunner, claimed: float) -> None:
        self.runner = runner
        seconds = runner.w.config.lease_seconds
        self.seconds = seconds
        self.margin = min(seconds / 4, 1.0)
        """Sends need this much lease left: the time a request may take to reach the tool,
        plus the clock skew between hosts that claims compare expiries with."""
        self._until = claimed + seconds
        self._lock = threading.Lock()

    def extend(self, started: float) -> None:
        with self._lock:
            self._until = max(self._until, started + self.seconds)

    def left(self) -> float:
        with self._lock:
            return self._until - time.monotonic()

    def renew(self) -> None:
        runner = self.runner
        writer, run = runner.writer, runner.run_
        assert writer is not None
        started = time.monotonic()
        expires = runner.w.runs.clock.now() + timedelta(seconds=self.seconds)
        if not writer.renew(run_id=run.id, attempt=run.attempt, owner=runner.claim.owner, expires=expires):
            runner.lost.set()
            raise LeaseLost(f"attempt {run.attempt} of run {run.id} no longer holds its lease")
        self.extend(started)

    def confirm(self) -> None:
        """One read of the run's row on the held connection: this attempt still owns it, and it is
        not finished. That and the local lease (at least half of it left, which the database's
        expiry outlasts) together say what a renewal would: no successor can hold the run before
        the local lease ends, and ``check`` still stands between this and the send. With less
        than half left, renew (a write) instead."""
        runner = self.runner
        if self.left() < self.seconds / 2:
            self.renew()
            return
        writer, run = runner.writer, runner.run_
        assert writer is not None
        row = writer.first(_HOLDS, (run.id,))
        if row is None or row[0] != run.attempt or row[1] != runner.claim.owner or row[2] not in _ACTIVE:
            runner.lost.set()
            raise LeaseLost(f"attempt {run.attempt} of run {run.id} no longer holds its lease")

    def check(self) -> None:
        if self.runner.lost.is_set():
            raise LeaseLost(f"attempt {self.runner.run_.attempt} of run {self.runner.run_.id} lost its lease")
        if self.left() < self.margin:
            # Slow since the last renewal (a loaded machine) or stopped (a zombie): renew, which
            # fails if a successor has the run, and then send with a full lease ahead.
            self.renew()
        left = self.left()
        if left < self.margin:
            self.runner.lost.set()
            raise LeaseLost(
                f"attempt {self.runner.run_.attempt} of run {self.runner.run_.id} has {max(left, 0):.3f} s "
                f"of lease left, under the {self.margin:g} s an external effect needs"
            )


class _AttemptRunner:
    def __init__(self, worker: Worker, claim: Claim) -> None:
        self.w = worker
        self.claim = claim
        self.run_ = claim.run
        self.lease = _Lease(self, claim.claimed)
        self.stopping = threading.Event()
        self.lost = threading.Event()
        self.cancelled = threading.Event()
        self.sandbox: Any = None
        self.pending_logs: list[str] = []
        self.log_lock = threading.Lock()
        self.session: GatewaySession | None = None
        self.writer: HeldStepWriter | None = None
        self.span: RunSpan | None = None
        self.standing: Standing | None = None
        """The Agent's tier and labels as stored when this attempt started (never the run's snapshot)."""

    # --- fencing and events, handed to the gateway ------------------------------------

    def fence(self, conn: Connection) -> None:
        self.w.runs.fence(conn, self.run_.id, self.run_.attempt, self.claim.owner)

    def query(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """A read on the attempt's held connection (the gateway's policy stamp)."""
        if self.writer is None:  # before the attempt holds its connection: a pooled one
            with self.w.steps.held() as writer:
                return writer.first(sql, params)
        return self.writer.first(sql, params)

    def commit(self, prepared: Prepared, events: list[tuple[str, dict[str, Any]]]) -> None:
        assert self.writer is not None
        self.writer.commit(
            run_id=self.run_.id,
            attempt=self.run_.attempt,
            owner=self.claim.owner,
            prepared=prepared,
            events=self._drain_logs() + events,
            at=self.w.runs.clock.now(),
        )

    def _drain_logs(self) -> list[tuple[str, dict[str, Any]]]:
        with self.log_lock:
            lines, self.pending_logs = self.pending_logs, []
        scrub: Callable[[str], str] = (
            self.session.redactor.scrub_text if self.session else (lambda text: text)
        )
        return [("log", {"line": scrub(line)}) for line in lines]

    def on_log(self, line: str) -> None:
        with self.log_lock:
            self.pending_logs.append(line)

    def on_notify(self, method: str, params: dict[str, Any]) -> None:
        """``log(...)`` from the SDK: joins the stderr lines, in order, scrubbed when written."""
        if method == "log":
            self.on_log(str(params.get("message", ""))[:16_384])

    # --- the attempt ------------------------------------------------------------------

    def run(self) -> None:
        run = self.run_
        with self.w.telemetry.run_span(
            run_id=run.id, agent=run.agent, attempt=run.attempt, namespace=run.namespace, tenant=run.tenant_id
        ) as span:
            self.span = span
            self._run(span)

    def _run(self, span: RunSpan) -> None:
        run = self.run_
        standing = self._standing()
        trust = self._trust()
        if trust.revoked:
            self._finish(RunState.REVOKED, reason=f"agent revoked: {trust.reason}")
            return
        workspace = self._fresh_workspace()
        attempt = Attempt(
            run_id=run.id,
            attempt=run.attempt,
            tenant_id=run.tenant_id,
            namespace=run.namespace,
            agent=run.agent,
            agent_spec=run.agent_spec,
            workspace=workspace,
            fence=self.fence,
            commit=self.commit,
            span=span,
            tier=trust.tier,
            lease=self.lease,
            labels=standing.labels,
            query=self.query,
            input=run.input,
            on_live=self._went_live,
        )
        # The lease clock started at the claim: renew from now on, through setup as well.
        heartbeat = threading.Thread(target=self._heartbeat, name=f"bastion-lease-{run.id[:8]}", daemon=True)
        heartbeat.start()
        try:
            with self.w.steps.held() as writer:
                self.writer = writer
                try:
                    result = self._attempt(attempt, workspace)
                finally:
                    self.writer = None  # the connection goes back to the pool: nothing may use it
        except LeaseLost as exc:
            log.warning("attempt %s of run %s lost its lease; abandoning it", run.attempt, run.id)
            span.fail("lease_lost", exc.detail, exc)
            self._abandoned()
            return
        except _Outcome as outcome:
            if outcome.state is not None:
                self._finish(outcome.state, reason=outcome.reason, result=outcome.result)
            return
        except RunSuspended as exc:
            self._park(exc)
            return
        except ErrorBudgetExceeded as exc:
            settings = self._trust_settings()
            if (
                settings is not None
                and settings.budget.on_exhausted == "revokeAgent"
                and settings.on_budget_exceeded == "demote"
            ):
                self._finish(RunState.FAILED, reason=exc.detail, exc=exc)
            else:
                self._finish(
                    RunState.REVOKED,
                    reason=exc.detail,
                    result={"handoff": self._handoff(exc.detail)},
                    exc=exc,
                )
            return
        except RunError as exc:
            self._finish(RunState.FAILED, reason=exc.detail, exc=exc)
            return
        finally:
            self.stopping.set()
            if heartbeat.is_alive():
                heartbeat.join(timeout=5)
        self._finish(RunState.SUCCEEDED, result=result)

    def _attempt(self, attempt: Attempt, workspace: Path) -> Any:
        self.session = session = self.w.gateway.session(attempt)
        llm = self.run_.agent_spec["spec"].get("runtime") == "llm"
        with self.w.runs.db.write() as conn:
            self.w.runs.transition(conn, self.run_, self.claim.owner, RunState.RUNNING)
            if llm and not session.recorded:
                self.w.runs.went_live(conn, self.run_)  # Bastion's own loop starts at once
        return self._call_agent(workspace)

    def _went_live(self) -> None:
        """The session replayed the last journaled step: this attempt's death is now evidence."""
        try:
            with self.w.runs.db.write() as conn:
                self.w.runs.went_live(conn, self.run_)
        except Exception:  # evidence for the poison rule only: never the agent's failure
            log.exception(
                "recording that attempt %s of run %s went live failed", self.run_.attempt, self.run_.id
            )

    def _cancelled(self) -> _Outcome:
        """How a run stopped by flag ends: Revoked (with a handoff) if its agent was revoked, else Cancelled."""
        trust = self._trust()
        if trust.revoked:
            reason = f"agent revoked: {trust.reason}"
            return _Outcome(RunState.REVOKED, reason, {"handoff": self._handoff(reason)})
        return _Outcome(RunState.CANCELLED, "cancelled by request")

    def _standing(self) -> Standing:
        """The Agent's tier and labels now, read once per attempt: a fork, retry or resume of an
        old run is judged as the agent is today, not as its snapshot says (module ``_standing``)."""
        if self.standing is None:
            run = self.run_
            self.standing = current_standing(
                self.w.gateway.resources, run.tenant_id, run.namespace, run.agent
            )
        return self.standing

    def _trust(self) -> TrustState:
        """The agent's earned tier and whether it is revoked (its declared tier until a change)."""
        run = self.run_
        declared = self._standing().tier
        with self.w.runs.db.read() as conn:
            return self.w.trust.state(conn, run.tenant_id, run.namespace, run.agent, declared=declared)

    def _fresh_workspace(self) -> Path:
        """Where this attempt's workspace will be: the run's initial workspace, the agent's source
        and nothing else, put there by ``_call_agent`` (the sandbox's own directory, renamed).

        Each attempt gets its own directory (a zombie of an earlier attempt cannot touch this one's
        files); earlier attempts' directories are removed, the last one is kept for inspection.
        """
        run_dir = self.w.config.workspace_root / self.run_.id
        if run_dir.exists():
            for old in run_dir.iterdir():
                shutil.rmtree(old, ignore_errors=True)
        run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return run_dir / f"attempt-{self.run_.attempt}"

    def _write_source(self, root: Path) -> None:
        spec: dict[str, Any] = self.run_.agent_spec["spec"]
        module = str(spec.get("entrypoint", "agent:main")).split(":")[0]
        source = spec.get("source")
        if isinstance(source, str):
            path = root / (module.replace(".", "/") + ".py")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(source, encoding="utf-8")

    def _limits(self) -> SandboxLimits:
        limits: dict[str, Any] = self.run_.agent_spec["spec"].get("limits", {})
        base = self.w.config.sandbox_defaults
        return SandboxLimits(
            cpu_seconds=float(limits.get("cpuSeconds", base.cpu_seconds)),
            memory_mib=int(limits.get("memoryMib", base.memory_mib)),
            wall_seconds=float(limits.get("wallSeconds", base.wall_seconds)),
            open_files=base.open_files,
            processes=base.processes,
            log_bytes=base.log_bytes,
            message_bytes=base.message_bytes,
            file_bytes=base.file_bytes,
        )

    def _call_agent(self, workspace: Path) -> Any:
        spec: dict[str, Any] = self.run_.agent_spec["spec"]
        session = self.session
        assert session is not None
        if spec.get("runtime") == "llm":
            return self._llm_loop(session)
        backend = str(spec.get("sandbox") or self.w.default_backend())
        key = PoolKey(backend=backend, image=self._image(spec), limits=self._limits())
        if self.cancelled.is_set():
            raise self._cancelled()
        try:
            pooled = self.w.sandboxes.acquire(
                key, run_id=self.run_.id, tenant_id=self.run_.tenant_id, on_log=self.on_log
            )
        except SandboxError as exc:
            fix = f" (fix: {exc.hint})" if exc.hint else ""
            raise _Outcome(RunState.FAILED, f"the sandbox did not start: {exc.detail}{fix}") from None
        self.sandbox = pooled.started
        try:
            return self._run_in(pooled, workspace, spec, session)
        finally:
            self.w.sandboxes.release(pooled)

    def _run_in(
        self, pooled: PooledSandbox, workspace: Path, spec: dict[str, Any], session: GatewaySession
    ) -> Any:
        # The sandbox's directory becomes the attempt's workspace: a rename, which the sandbox's
        # cwd (or its bind mount) follows, so a warm sandbox needs no restart to serve this run.
        try:
            pooled.workspace.rename(workspace)
            self._write_source(workspace)
        except OSError as exc:
            raise _Outcome(RunState.FAILED, f"could not prepare the run's workspace: {exc}") from None
        # The gateway's workspace tools work where the agent does (a tmpfs on isolating backends);
        # the attempt's directory receives that tree when the sandbox stops.
        session.workspace = pooled.started.live_workspace or workspace
        event: dict[str, Any] = {
            "id": pooled.id,
            "backend": pooled.key.backend,
            "image": pooled.key.image_label,
            "warm": pooled.warm,
        }
        if pooled.key.backend == "process":
            event["warning"] = PROCESS_WARNING
        # With no journal to replay, the attempt is live from its agent's start.
        self._record([("sandbox", event)], live=not session.recorded)
        # The run span's context, so agent code (and the coming shim) can continue the trace;
        # given with the call, since a warm sandbox started before this run existed.
        env = {"TRACEPARENT": self.span.traceparent} if self.span is not None else {}
        # The in-sandbox model endpoint's key: fresh per attempt, checked in the sandbox, never forwarded.
        env["BASTION_RUN_TOKEN"] = f"bst-run-{self.w.runs.ids.token(24)}"
        try:
            value = pooled.started.call(
                "run",
                {"entrypoint": spec.get("entrypoint"), "input": self.run_.input, "env": env},
                handler=session.handle,
                notify=self.on_notify,
            )
            return session.redactor.scrub(value)
        except (LeaseLost, NonDeterministic):
            raise
        except CallError as exc:
            raise _Outcome(
                RunState.FAILED, f"the agent raised {session.redactor.scrub_text(exc.message)}"
            ) from None
        except (LimitExceeded, SandboxError) as exc:
            if self.lost.is_set():
                raise LeaseLost("the lease was lost while the agent ran") from None
            if self.cancelled.is_set():
                raise self._cancelled() from None
            raise _Outcome(RunState.FAILED, session.redactor.scrub_text(exc.detail)) from None

    def _image(self, spec: dict[str, Any]) -> Image | None:
        """The agent's image, built now if needed, with the build's progress as ``image`` events.
        A build that fails fails the run: the agent never runs without its requirements."""
        base = spec.get("image")
        if base is None:
            return None
        images = self.w.images
        if images is None:
            raise _Outcome(
                RunState.FAILED, f"the agent's image {base!r} cannot be built: this worker has no image cache"
            )
        events: list[tuple[str, dict[str, Any]]] = []
        lines = 0
        flushed = time.monotonic()

        def progress(step: BuildProgress) -> None:
            nonlocal lines, flushed
            data: dict[str, Any] = {"phase": step.phase, "digest": step.digest[:12], "message": step.message}
            if step.seconds is not None:
                data["seconds"] = round(step.seconds, 3)
            if step.size_bytes is not None:
                data["sizeBytes"] = step.size_bytes
            if step.phase == "output":
                lines += 1
                if lines > _IMAGE_OUTPUT_LINES:
                    return
            events.append(("image", data))
            if step.phase != "output" or time.monotonic() - flushed > 0.25:
                self._record(events)
                events.clear()
                flushed = time.monotonic()

        try:
            image = images.resolve(str(base), spec.get("requirements") or [], progress=progress)
        except ImageBuildFailed as exc:
            raise _Outcome(RunState.FAILED, exc.detail) from None
        except SandboxError as exc:
            fix = f" (fix: {exc.hint})" if exc.hint else ""
            raise _Outcome(
                RunState.FAILED, f"the agent's image is not available: {exc.detail}{fix}"
            ) from None
        finally:
            if lines > _IMAGE_OUTPUT_LINES:
                events.append(
                    ("image", {"phase": "output", "message": f"... {lines - _IMAGE_OUTPUT_LINES} more lines"})
                )
            if events:
                self._record(events)
        return image

    def _record(self, events: list[tuple[str, dict[str, Any]]], *, live: bool = False) -> None:
        """Write events on the run now, under this attempt's fence (``live``: and that the
        attempt went live, see ``RunStore.went_live``)."""
        if not events:
            return
        scrub: Callable[[str], str] = self.session.redactor.scrub_text if self.session else (lambda t: t)
        scrubbed = [
            (kind, {k: scrub(v) if isinstance(v, str) else v for k, v in data.items()})
            for kind, data in events
        ]
        with self.w.runs.db.write() as conn:
            self.fence(conn)
            self.w.runs.add_events(conn, self.run_.id, scrubbed)
            if live:
                self.w.runs.went_live(conn, self.run_)

    def _abandoned(self) -> None:
        """Say that this attempt ended on a live worker: its run's next claim must not count it
        as a death (the poison rule's evidence)."""
        try:
            with self.w.runs.db.write() as conn:
                self.w.runs.abandoned(conn, self.run_)
        except Exception:
            log.exception("recording that attempt %s of run %s ended failed", self.run_.attempt, self.run_.id)

    def _park(self, suspended: RunSuspended) -> None:
        """Wait for an approval without a sandbox or a lease (suspend = stop; resume = replay)."""
        run, approvals = self.run_, self.w.gateway.approvals
        try:
            with self.w.runs.db.write() as conn:
                # Fence (the run row's lock) before reading the approval: a decision that got the lock
                # first is visible here, and one that comes later finds the run parked and re-queues it.
                self.fence(conn)
                approval = approvals.get(conn, suspended.approval_id, tenant_id=run.tenant_id)
                self.w.runs.add_events(conn, run.id, self._drain_logs())
                if approval is not None:
                    event = {"id": approval.id, "seq": approval.seq, "tool": approval.tool}
                    event |= {"state": approval.state, "reasons": approval.reasons}
                    event["expiresAt"] = approval.public()["expiresAt"]
                    self.w.runs.add_event(conn, run.id, "approval", event)
                self.w.runs.park(
                    conn,
                    run,
                    self.claim.owner,
                    RunState.WAITING_APPROVAL,
                    reason=suspended.detail,
                    ready=approval is None or approval.state != "pending",
                )
        except LeaseLost:
            log.warning(
                "run %s asked for an approval, but attempt %s had lost its lease", run.id, run.attempt
            )

    def _llm_loop(self, session: GatewaySession) -> Any:
        """``runtime: llm``: Bastion's own loop, in this thread, every call through the session."""
        spec: dict[str, Any] = self.run_.agent_spec["spec"]
        # No sandbox hands this loop a workspace: its workspace tools get the attempt's own directory.
        session.workspace.mkdir(mode=0o700, exist_ok=True)
        wall = self._limits().wall_seconds
        started = time.monotonic()

        def check() -> None:
            if self.lost.is_set():
                raise LeaseLost("the lease was lost while the agent loop ran")
            if self.cancelled.is_set():
                raise self._cancelled()
            if time.monotonic() - started > wall:
                raise _Outcome(RunState.FAILED, f"limit exceeded: wall_time: the loop ran past {wall:g} s")

        value = run_llm_agent(
            spec=spec, input=self.run_.input, tools=session.tool_manifests, handle=session.handle, check=check
        )
        return session.redactor.scrub(value)

    def _heartbeat(self) -> None:
        interval = self.w.config.lease_seconds / 3
        while not self.stopping.wait(interval):
            started = time.monotonic()
            try:
                cancel = self.w.runs.renew(
                    self.run_.id, self.run_.attempt, self.claim.owner, self.w.config.lease_seconds
                )
            except Exception:
                log.exception("renewing the lease of run %s failed", self.run_.id)
                continue
            if cancel is None:
                self.lost.set()
            else:
                self.lease.extend(started)
                if cancel:
                    self.cancelled.set()
            if (self.lost.is_set() or self.cancelled.is_set()) and self.sandbox is not None:
                self.sandbox.stop()
                return
            self._flush_logs()

    def _flush_logs(self) -> None:
        events = self._drain_logs()
        if not events:
            return
        try:
            with self.w.runs.db.write() as conn:
                self.fence(conn)
                self.w.runs.add_events(conn, self.run_.id, events)
        except LeaseLost:
            self.lost.set()

    def _finish(
        self,
        state: RunState,
        *,
        reason: str | None = None,
        result: Any = None,
        exc: BaseException | None = None,
    ) -> None:
        if reason is not None and self.session is not None:
            # Reasons can quote the agent's requests (non-determinism): scrub them like everything else.
            reason = self.session.redactor.scrub_text(reason)
        if self.span is not None:
            self.span.finished(state)
            if state != RunState.SUCCEEDED:
                self.span.fail(_error_type(state, exc), reason or str(state), exc)
        journal = self.session.journal_head if self.session else None
        try:
            with self.w.runs.db.write() as conn:
                self.w.runs.add_events(conn, self.run_.id, self._drain_logs())
                self.w.runs.transition(
                    conn, self.run_, self.claim.owner, state, reason=reason, result=result, journal=journal
                )
                if state is not RunState.CANCELLED:
                    self._judge_trust(conn, state)
        except LeaseLost:
            log.warning(
                "run %s finished as %s, but attempt %s had lost its lease",
                self.run_.id,
                state,
                self.run_.attempt,
            )

    # --- trust ------------------------------------------------------------------------

    def _trust_settings(self) -> TrustSettings | None:
        if self.session is None:
            return None
        policy, _ = self.session.policy()
        return TrustSettings.from_manifests(self.run_.agent_spec, policy.trust)

    def _judge_trust(self, conn: Connection, state: RunState) -> None:
        """Record this run's outcome and apply what it does to the agent's trust: a revocation or
        demotion when it exceeded the error budget, a promotion after enough compliant runs."""
        session, run = self.session, self.run_
        settings = self._trust_settings()
        if session is None or settings is None:
            return
        declared = self._standing().tier
        trust = self.w.trust.state(conn, run.tenant_id, run.namespace, run.agent, declared=declared)
        outcome = Outcome(
            run_id=run.id,
            tier=trust.tier,
            succeeded=state is RunState.SUCCEEDED,
            errors=list(session.errors),
            violations=list(session.violations),
        )
        now = self.w.runs.clock.now()
        self.w.trust.record_outcome(conn, run.tenant_id, run.namespace, run.agent, outcome, now)
        history = [
            RunOutcome(
                run_id=o.run_id, tier=o.tier, succeeded=o.succeeded, errors=o.errors, violations=o.violations
            )
            for o in self.w.trust.history(conn, run.tenant_id, run.namespace, run.agent)
        ]
        change = evaluate_trust(history, settings, tier=trust.tier)
        if change is None or (change.action == "revoke" and trust.revoked):
            return
        event = self.w.trust.change(
            conn,
            run.tenant_id,
            run.namespace,
            run.agent,
            declared=declared,
            action=change.action,
            to_tier=change.to_tier,
            actor="bastion",
            reason=change.reason,
            now=now,
            rule_id=change.rule_id,
            run_id=run.id,
            evidence=change.evidence,
        )
        self.w.runs.add_event(conn, run.id, "trust", event)
        if change.action == "revoke":
            # The explicit ``onExhausted: revokeAgent``: the agent is revoked everywhere in its
            # namespace, as an operator's ``bastion trust revoke`` would do it.
            self.w.runs.revoke_active(
                conn, run.tenant_id, run.namespace, run.agent, reason=f"agent revoked: {change.reason}"
            )

    def _handoff(self, reason: str) -> dict[str, Any]:
        """What this run leaves for whoever takes over: what it tried, where it stopped, what blocks."""
        tried: list[Attempted] = []
        for entry in self.w.gateway.journal.entries(self.run_.id):
            request: Any = self.w.gateway.journal.resolve(entry.request)
            params: dict[str, Any] = (
                cast(dict[str, Any], request).get("params", {}) if isinstance(request, dict) else {}
            )
            what = f"tool {params.get('name')}" if entry.kind == "tool" else entry.kind
            if entry.decision == "deny":
                outcome = "denied: " + "; ".join(str(r.get("text", "")) for r in entry.reasons)[:300]
            elif entry.error is not None:
                outcome = f"failed: {entry.error.get('reason') or entry.error.get('type')}"[:300]
            else:
                outcome = "ok"
            tried.append(Attempted(seq=entry.seq, what=what, outcome=outcome))
        goal = _summary(self.run_.input)
        handoff = build_handoff(
            run_id=self.run_.id, agent=self.run_.agent, reason=reason, tried=tried, goal=goal
        )
        record = handoff.to_record()
        return record if self.session is None else self.session.redactor.scrub(record)


def _summary(value: Any) -> str | None:
    if value is None:
        return None
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 200 else text[:197] + "..."


def _error_type(state: RunState, exc: BaseException | None) -> str:
    """``error.type`` of a run span: the exception's class, else the run's end state."""
    if exc is not None:
        return type(exc).__name__
    return str(state).lower()
