"""The run engine: runs, leases, attempts, events (DESIGN §3, Run engine)."""

from ._replay import Replayer, ReplayReport
from ._states import ACTIVE, FINISHED, RunState, can_move
from ._store import DEFAULT_MAX_ATTEMPTS, Claim, Event, Run, RunStore
from ._tables import metadata, run_events, runs
from ._trust import ACTIONS as TRUST_ACTIONS
from ._trust import Outcome, TrustAction, TrustState, TrustStore
from ._worker import Worker, WorkerConfig

__all__ = [
    "ACTIVE",
    "DEFAULT_MAX_ATTEMPTS",
    "FINISHED",
    "TRUST_ACTIONS",
    "Claim",
    "Event",
    "Outcome",
    "ReplayReport",
    "Replayer",
    "Run",
    "RunState",
    "RunStore",
    "TrustAction",
    "TrustState",
    "TrustStore",
    "Worker",
    "WorkerConfig",
    "can_move",
    "metadata",
    "run_events",
    "runs",
]
