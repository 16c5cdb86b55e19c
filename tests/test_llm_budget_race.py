"""Budgets on the governed model path (``llm.chat`` through gateway sessions), racing for real.

The reservation is written with the fence's read in one transaction and the settlement with the
call's journal entry; these check that folding them there kept the guarantees: concurrent
calls never overspend a budget (N callers racing a budget that fits k calls: k get an answer),
every settled call leaves no reservation behind, and a call whose entry cannot be written (its
attempt lost the run) is still charged. SQLite and PostgreSQL; the provider is the local fake
server speaking OpenAI's wire format.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from bastion.api import RawDocument, validate_documents
from bastion.control import Bastion, Settings
from bastion.control.store import get_row
from bastion.errors import LeaseLost
from bastion.execution.gateway import Attempt, GatewaySession
from bastion.execution.llm import Route, llm_reservations, request_from_openai
from bastion.execution.runs import RunState, runs
from bastion.execution.runs._step import StepWriter  # pyright: ignore[reportPrivateUsage]
from bastion.execution.sandbox import CallError
from bastion.testing import FakeProvider, Hold, reply

OWNER = "test:1:race"
BODY: dict[str, Any] = {
    "model": "fake-model",
    "messages": [{"role": "user", "content": "Say hello."}],
    "max_tokens": 500,
}


class Bed:
    """A Bastion with a ModelPolicy whose per-agent daily budget fits ``calls`` calls, and
    gateway sessions over claimed runs of one agent."""

    def __init__(self, bastion: Bastion, provider_url: str, calls: int) -> None:
        self.bastion = b = bastion
        first = b.bootstrap()
        assert first is not None
        principal = b.store.authenticate(first.admin_key)
        assert principal is not None
        self.tenant = principal.tenant_id
        spec: dict[str, Any] = {
            "targets": [{"provider": "openai", "model": "fake-model", "baseUrl": provider_url}]
        }
        self.reserved, _ = Route.from_spec(spec).estimate(request_from_openai(BODY)[0])
        self.limit = calls * self.reserved + self.reserved // 2  # k calls fit, k + 1 do not
        spec["budgets"] = {"tokensPerAgentPerDay": self.limit}
        docs = [
            {"apiVersion": "bastion/v1", "kind": "ModelPolicy", "metadata": {"name": "m"}, "spec": spec},
            {
                "apiVersion": "bastion/v1",
                "kind": "Agent",
                "metadata": {"name": "racer"},
                "spec": {"runtime": "llm", "instructions": "x", "modelPolicy": "m"},
            },
        ]
        with b.store.write() as conn:
            b.resources.apply(conn, principal, validate_documents([RawDocument(body=d) for d in docs]))
        self.writer = StepWriter(b.store)
        self.held = ExitStack()

    def session(self, *, hold: bool) -> tuple[str, GatewaySession]:
        b = self.bastion
        with b.store.write() as conn:
            row = get_row(conn, self.tenant, "Agent", "default", "racer")
            assert row is not None
            run = b.runs.create(
                conn,
                tenant_id=self.tenant,
                namespace="default",
                agent="racer",
                agent_spec=row.manifest(),
                input=None,
            )
        claim = b.runs.claim(OWNER, 3600)
        assert claim is not None and claim.run.id == run.id
        with b.store.write() as conn:
            b.runs.transition(conn, claim.run, OWNER, RunState.RUNNING)
        writer: Any = self.held.enter_context(self.writer.held()) if hold else self.writer

        def commit(prepared: Any, events: list[tuple[str, dict[str, Any]]]) -> None:
            writer.commit(
                run_id=run.id, attempt=1, owner=OWNER, prepared=prepared, events=events, at=b.clock.now()
            )

        def fence(conn: Any) -> None:
            b.runs.fence(conn, run.id, 1, OWNER)

        return run.id, b.gateway.session(
            Attempt(
                run_id=run.id,
                attempt=1,
                tenant_id=self.tenant,
                namespace="default",
                agent="racer",
                agent_spec=row.manifest(),
                workspace=Path("/nonexistent"),
                fence=fence,
                commit=commit,
            )
        )

    def used(self) -> int:
        day = self.bastion.clock.now().date().isoformat()
        return self.bastion.models.ledger.used(f"agent:{self.tenant}/default/racer/{day}")[0]

    def reservations(self) -> int:
        with self.bastion.store.read() as conn:
            return int(conn.execute(select(func.count()).select_from(llm_reservations)).scalar_one())

    def close(self) -> None:
        self.held.close()


@pytest.fixture
def make_bed(tmp_path: Path, database_url: str) -> Iterator[Callable[[str, int], Bed]]:
    made: list[Bed] = []

    def build(provider_url: str, calls: int) -> Bed:
        bastion = Bastion(Settings(home=tmp_path / "home", database_url=database_url))
        made.append(Bed(bastion, provider_url, calls))
        return made[-1]

    yield build
    for bed in made:
        bed.close()
        bed.bastion.close()


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.mark.parametrize("held", [True, False], ids=["held-connection", "own-transaction"])
def test_racing_callers_never_overspend_a_budget(make_bed: Callable[[str, int], Bed], held: bool) -> None:
    callers, fits = 8, 3
    hold = Hold()
    with FakeProvider(default=reply("Hello there.", hold=hold)) as fake:
        bed = make_bed(fake.openai_url, fits)
        sessions = [bed.session(hold=held)[1] for _ in range(callers)]
        gate = threading.Barrier(callers)
        answered: list[Any] = []
        refused: list[CallError] = []

        def call(session: GatewaySession) -> None:
            gate.wait()
            try:
                answered.append(session.handle("llm.chat", {"format": "openai", "request": BODY}))
            except CallError as exc:
                refused.append(exc)

        threads = [threading.Thread(target=call, args=(s,)) for s in sessions]
        for t in threads:
            t.start()

        # Every caller has reserved or been refused while the admitted ones wait at the provider.
        def settled() -> bool:
            assert len(fake.requests) <= fits, "more calls reached the provider than the budget fits"
            return len(refused) == callers - fits and len(fake.requests) == fits

        try:
            wait_until(settled, "the race")
            assert bed.used() <= bed.limit
        finally:
            hold.release()
        for t in threads:
            t.join(30)
        assert len(fake.requests) == fits, "a refused call never reached the provider"
    assert len(answered) == fits and len(refused) == callers - fits
    assert all(e.data and e.data.get("type") == "budget_exceeded" for e in refused), [e.data for e in refused]
    real = sum(a["body"]["usage"]["total_tokens"] for a in answered)
    assert bed.used() == real, "settled with the real usage, no reservation left counted"
    assert bed.reservations() == 0


def test_a_call_whose_entry_cannot_be_written_is_still_charged(make_bed: Callable[[str, int], Bed]) -> None:
    hold = Hold()
    with FakeProvider(reply("Hello there.", hold=hold)) as fake:
        bed = make_bed(fake.openai_url, 2)
        run_id, session = bed.session(hold=True)
        failed: list[BaseException] = []

        def call() -> None:
            try:
                session.handle("llm.chat", {"format": "openai", "request": BODY})
            except BaseException as exc:
                failed.append(exc)

        thread = threading.Thread(target=call)
        thread.start()
        hold.wait_reached()
        assert bed.used() == bed.reserved and bed.reservations() == 1
        with bed.bastion.store.write() as conn:  # a successor takes the run while the call is out
            conn.execute(
                update(runs).where(runs.c.id == run_id).values(attempt=2, lease_owner="test:2:other")
            )
        hold.release()
        thread.join(30)
        assert len(failed) == 1 and isinstance(failed[0], LeaseLost), failed
        assert bed.reservations() == 0, "the reservation is given back"
        charged = bed.used()
        assert 0 < charged < bed.reserved, "and the call's real usage charged"
        # The next call's fence, read in its reservation's transaction, stops it before the provider.
        with pytest.raises(LeaseLost):
            session.handle("llm.chat", {"format": "openai", "request": BODY})
        assert len(fake.requests) == 1 and bed.reservations() == 0 and bed.used() == charged
