"""The fence before an external effect reads the run on the attempt's held connection.

``_Lease.confirm`` replaced a renewal (a write transaction) by one read of the run's row; it must
refuse exactly what the renewal refused. Its local lease cannot tell it that a successor holds the
run when the database's view of time and the worker's disagree (hosts' clocks, a lease shortened
by hand): here the run's lease is expired in the database behind the worker's back and another
worker claims it, while the first worker's local lease still has nearly all of its time. The read
must still say no, and nothing may be sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import update

from bastion.control import Bastion
from bastion.errors import LeaseLost
from bastion.execution.runs import _worker as worker_module  # pyright: ignore[reportPrivateUsage]
from bastion.execution.runs._step import StepWriter  # pyright: ignore[reportPrivateUsage]
from bastion.execution.runs._tables import runs  # pyright: ignore[reportPrivateUsage]

from ._agents import code_agent

LEASE = 30.0


def _lease(bastion: Bastion, writer: Any, claim: Any) -> Any:
    runner = SimpleNamespace(
        w=SimpleNamespace(config=SimpleNamespace(lease_seconds=LEASE), runs=bastion.runs),
        writer=writer,
        run_=claim.run,
        claim=claim,
        lost=SimpleNamespace(set=lambda: None, is_set=lambda: False),
    )
    return worker_module._Lease(runner, time.monotonic())  # pyright: ignore[reportPrivateUsage, reportArgumentType]


@pytest.mark.parametrize("successor", ["takes-over", "none"])
def test_the_pre_effect_read_refuses_once_a_successor_holds_the_run(
    make_bastion: Callable[..., Bastion], successor: str
) -> None:
    bastion = make_bastion()
    with bastion.store.write() as conn:
        tenant = bastion.store.create_tenant(conn, "fence")
        run = bastion.runs.create(
            conn,
            tenant_id=tenant.id,
            namespace="default",
            agent="a",
            agent_spec=code_agent("a", "def main(input):\n    return None\n"),
            input=None,
        )
    claim = bastion.runs.claim("first", LEASE)
    assert claim is not None and claim.run.id == run.id
    with StepWriter(bastion.store).held() as writer:
        lease = _lease(bastion, writer, claim)
        lease.confirm()  # holds the run: no error
        if successor == "takes-over":
            with bastion.store.write() as conn:
                past = bastion.runs.clock.now() - timedelta(seconds=1)
                conn.execute(update(runs).where(runs.c.id == run.id).values(lease_expires_at=past))
            taken = bastion.runs.claim("second", LEASE)
            assert taken is not None and taken.run.attempt == claim.run.attempt + 1
        assert lease.left() > LEASE / 2, "the local lease still looks fresh"
        if successor == "takes-over":
            with pytest.raises(LeaseLost):
                lease.confirm()
        else:
            lease.confirm()
