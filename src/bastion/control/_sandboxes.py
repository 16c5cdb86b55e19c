"""The workers' warm pools, written to the ``sandboxes`` table so the API sees every worker's.

Each worker reports its pool's state changes here; a background thread writes them in batches
(a sandbox changing state several times within one batch is written once, in its last state),
refreshes ``seen_at`` on the worker's rows while it lives, and drops its ended sandboxes after a
while. Rows whose ``seen_at`` is stale belong to a dead worker: readers ignore them and any
worker's flush deletes them.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, or_, select, update

from bastion.api import Clock
from bastion.execution.sandbox import SandboxInfo, SandboxState

from .store import Store
from .store._tables import sandboxes

log = logging.getLogger("bastion.sandboxes")

ENDED = (str(SandboxState.TERMINATED), str(SandboxState.FAILED))


class SandboxRegistry:
    """One worker's pool, mirrored into the ``sandboxes`` table."""

    def __init__(
        self,
        store: Store,
        worker: str,
        clock: Clock,
        *,
        flush_seconds: float = 0.5,
        refresh_seconds: float = 5.0,
        expire_seconds: float = 30.0,
        keep_ended_seconds: float = 60.0,
    ) -> None:
        self.store, self.worker, self.clock = store, worker, clock
        self.flush_seconds, self.refresh_seconds = flush_seconds, refresh_seconds
        self.expire_seconds, self.keep_ended_seconds = expire_seconds, keep_ended_seconds
        self._pending: dict[str, SandboxInfo] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._closed = False

    def report(self, info: SandboxInfo) -> None:
        """A sandbox changed state (the pool's ``on_change``); written within ``flush_seconds``."""
        with self._lock:
            if self._closed:
                return
            self._pending[info.id] = info
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="bastion-sandboxes", daemon=True)
                self._thread.start()

    def flush(self) -> None:
        """Write what is pending now, refresh this worker's rows, expire the dead's."""
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
        now = self.clock.now()
        with self.store.write() as conn:
            if pending:
                ids = [info.id for info in pending]
                known = set(conn.execute(select(sandboxes.c.id).where(sandboxes.c.id.in_(ids))).scalars())
                for info in pending:
                    row = _row(info, self.worker, now)
                    if info.id in known:
                        conn.execute(update(sandboxes).where(sandboxes.c.id == info.id).values(**row))
                    else:
                        conn.execute(insert(sandboxes).values(id=info.id, **row))
            conn.execute(update(sandboxes).where(sandboxes.c.worker == self.worker).values(seen_at=now))
            conn.execute(
                delete(sandboxes).where(
                    or_(
                        sandboxes.c.seen_at < now - timedelta(seconds=self.expire_seconds),
                        and_(
                            sandboxes.c.worker == self.worker,
                            sandboxes.c.state.in_(ENDED),
                            sandboxes.c.changed_at < now - timedelta(seconds=self.keep_ended_seconds),
                        ),
                    )
                )
            )

    def close(self) -> None:
        """Write what is pending, then remove this worker's rows: it holds no sandbox any more."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=10)
        try:
            with self.store.write() as conn:
                conn.execute(delete(sandboxes).where(sandboxes.c.worker == self.worker))
        except Exception:
            log.exception("could not remove worker %s's sandboxes from the table", self.worker)

    def _loop(self) -> None:
        refreshed = 0.0
        while True:
            with self._lock:
                if self._closed:
                    return
                self._wake.wait(self.flush_seconds)
                due = bool(self._pending)
            now = self.clock.now().timestamp()
            if not due and now - refreshed < self.refresh_seconds:
                continue
            try:
                self.flush()
                refreshed = now
            except Exception:
                log.warning("could not write the sandbox pool's state; retrying", exc_info=True)


def _row(info: SandboxInfo, worker: str, now: datetime) -> dict[str, Any]:
    return {
        "worker": worker,
        "backend": info.backend,
        "image": info.image[:80],
        "state": str(info.state),
        "run_id": info.run_id,
        "tenant_id": info.tenant_id,
        "reason": info.reason,
        "started_at": info.started_at,
        "changed_at": info.changed_at,
        "seen_at": now,
    }


def list_sandboxes(
    conn: Connection, now: datetime, *, expire_seconds: float = 30.0, tenant_id: str | None = None
) -> list[dict[str, Any]]:
    """Live workers' sandboxes, by worker then start; only ``tenant_id``'s runs' when given."""
    query = select(sandboxes).where(sandboxes.c.seen_at >= now - timedelta(seconds=expire_seconds))
    if tenant_id is not None:
        query = query.where(sandboxes.c.tenant_id == tenant_id)
    query = query.order_by(sandboxes.c.worker, sandboxes.c.started_at, sandboxes.c.id)
    return [
        {
            "id": row.id,
            "worker": row.worker,
            "backend": row.backend,
            "image": row.image,
            "state": row.state,
            "runId": row.run_id,
            "reason": row.reason,
            "startedAt": row.started_at.isoformat(),
            "changedAt": row.changed_at.isoformat(),
        }
        for row in conn.execute(query)
    ]


def count_sandboxes(
    conn: Connection, now: datetime, *, expire_seconds: float = 30.0
) -> dict[tuple[str, str], int]:
    """Live sandboxes by (backend, state), for the metrics."""
    query = (
        select(sandboxes.c.backend, sandboxes.c.state, func.count())
        .where(sandboxes.c.seen_at >= now - timedelta(seconds=expire_seconds))
        .group_by(sandboxes.c.backend, sandboxes.c.state)
    )
    return {(str(b), str(s)): int(n) for b, s, n in conn.execute(query)}
