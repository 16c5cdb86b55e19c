"""The run state machine (DESIGN §3, Run engine)."""

from __future__ import annotations

import enum


class RunState(enum.StrEnum):
    PENDING = "Pending"
    SCHEDULED = "Scheduled"
    STARTING = "Starting"
    RUNNING = "Running"
    WAITING_APPROVAL = "WaitingApproval"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"
    REVOKED = "Revoked"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.REVOKED})
ACTIVE = frozenset({RunState.STARTING, RunState.RUNNING})
"""States a worker holds a lease in; an expired lease here means the worker died."""

TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    RunState.PENDING: frozenset({RunState.SCHEDULED, RunState.CANCELLED, RunState.FAILED}),
    RunState.SCHEDULED: frozenset({RunState.STARTING, RunState.CANCELLED, RunState.FAILED}),
    RunState.STARTING: frozenset({RunState.RUNNING, RunState.STARTING, *FINISHED}),
    RunState.RUNNING: frozenset(
        {RunState.STARTING, RunState.WAITING_APPROVAL, RunState.SUSPENDED, *FINISHED}
    ),
    # Suspension hooks (approvals, messages, timers): the event re-queues the run (Scheduled).
    RunState.WAITING_APPROVAL: frozenset({RunState.SCHEDULED, *FINISHED}),
    RunState.SUSPENDED: frozenset({RunState.SCHEDULED, *FINISHED}),
}
"""Allowed moves. STARTING -> STARTING and RUNNING -> STARTING are takeovers by a new attempt."""


def can_move(old: RunState, new: RunState) -> bool:
    return new in TRANSITIONS.get(old, frozenset())
