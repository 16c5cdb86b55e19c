"""The poison rule's evidence, claim by claim on both backends: which deaths count against a run.

The kill -9 tests in ``test_durability`` show the rule end to end; here each death is placed
exactly (alone or beside a neighbour, before or after the attempt went live), which random kills
can only hit by chance -- the chance that failed a healthy run in CI.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert

from bastion.control.store import Store
from bastion.execution.runs import RunState
from bastion.execution.runs._store import POISON_FUSE, Claim, RunStore
from bastion.observe.journal import journal_entries

LEASE = 10.0


class SteppedClock:
    def __init__(self) -> None:
        self.at = datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self.at

    def past_the_lease(self) -> None:
        self.at += timedelta(seconds=LEASE + 1)


class Cluster:
    """Workers that exist only as lease owners: each ``die`` is a SIGKILL of one."""

    def __init__(self, store: Store) -> None:
        self.clock = SteppedClock()
        self.store = store
        self.runs = RunStore(store, clock=self.clock)
        with store.write() as conn:
            # Two tenants with runs of the same agent name: evidence is per run, never per name.
            self.tenants = [store.create_tenant(conn, name).id for name in ("acme", "globex")]
        self.workers = 0

    def create(self, tenant: int = 0) -> str:
        with self.store.write() as conn:
            run = self.runs.create(
                conn,
                tenant_id=self.tenants[tenant],
                namespace="default",
                agent="same-name",
                agent_spec={"kind": "Agent", "metadata": {"name": "same-name"}, "spec": {}},
                input={},
            )
        return run.id

    def worker(self) -> str:
        self.workers += 1
        return f"worker-{self.workers}"

    def claim(self, owner: str) -> Claim | None:
        return self.runs.claim(owner, LEASE, idle=True)

    def journal(self, claim: Claim, seq: int) -> None:
        with self.store.write() as conn:
            conn.execute(
                insert(journal_entries).values(
                    run_id=claim.run.id,
                    seq=seq,
                    attempt=claim.run.attempt,
                    kind="tool",
                    request={},
                    request_hash="0" * 64,
                    decision="allow",
                    reasons=[],
                    started_at=self.clock.now(),
                    duration_us=1,
                    prev_hash="0" * 64,
                    hash=f"{seq:064d}",
                )
            )

    def live(self, claim: Claim) -> None:
        with self.store.write() as conn:
            self.runs.went_live(conn, claim.run)

    def state(self, run_id: str) -> tuple[RunState, str | None]:
        with self.store.read() as conn:
            run = self.runs.get(conn, run_id)
        assert run is not None
        return run.state, run.reason


@pytest.fixture
def cluster(store: Store) -> Cluster:
    return Cluster(store)


def _alone_deaths(cluster: Cluster, run_id: str, *, live: bool, times: int) -> None:
    """``times`` attempts of the run die alone on their workers at seq 1 (journaled by the first)."""
    for n in range(times):
        claim = cluster.claim(cluster.worker())
        assert claim is not None and claim.run.id == run_id, n
        if claim.run.attempt == 1:
            cluster.journal(claim, 1)
        if live:
            cluster.live(claim)
        cluster.clock.past_the_lease()


def test_attempts_killed_before_going_live_are_no_evidence(cluster: Cluster) -> None:
    """Killed while claimed, starting a sandbox or replaying -- alone, at one seq, again and
    again -- a run is still resumed: it never reached its next step, so nothing of its own
    killed the worker (the chaos test's false poison: kills that land during takeovers)."""
    run_id = cluster.create()
    _alone_deaths(cluster, run_id, live=False, times=5)
    claim = cluster.claim(cluster.worker())
    assert claim is not None and claim.run.id == run_id
    assert cluster.state(run_id)[0] is RunState.STARTING


def test_live_attempts_dying_alone_at_one_seq_make_a_poison_run(cluster: Cluster) -> None:
    run_id = cluster.create()
    _alone_deaths(cluster, run_id, live=True, times=3)
    assert cluster.claim(cluster.worker()) is None
    assert cluster.state(run_id) == (
        RunState.FAILED,
        "poison run: 3 attempts in a row died with their worker at seq 1, the last one alone on it",
    )


def test_deaths_before_going_live_neither_count_nor_break_the_chain(cluster: Cluster) -> None:
    """A poison run cannot reset its evidence by having a worker killed during its replay."""
    run_id = cluster.create()
    _alone_deaths(cluster, run_id, live=True, times=2)
    _alone_deaths(cluster, run_id, live=False, times=2)
    _alone_deaths(cluster, run_id, live=True, times=1)
    assert cluster.claim(cluster.worker()) is None
    assert cluster.state(run_id)[0] is RunState.FAILED


def test_a_live_death_beside_a_neighbour_is_no_evidence(cluster: Cluster) -> None:
    """Another tenant's run of the same agent name on the same worker: the worker's death is
    blamed on neither, and the one that died alone elsewhere is judged on its own deaths."""
    run_id = cluster.create(0)
    neighbour = cluster.create(1)
    for _ in range(4):
        owner = cluster.worker()
        first, second = cluster.claim(owner), cluster.claim(owner)
        assert first is not None and second is not None
        assert {first.run.id, second.run.id} == {run_id, neighbour}
        for claim in (first, second):
            if claim.run.attempt == 1:
                cluster.journal(claim, 1)
            cluster.live(claim)
        cluster.clock.past_the_lease()
    assert cluster.state(run_id)[0] is not RunState.FAILED
    assert cluster.state(neighbour)[0] is not RunState.FAILED


def test_a_run_that_never_goes_live_is_stopped_by_the_fuse(cluster: Cluster) -> None:
    """A run whose replay itself kills the worker is never live: the fuse still ends it."""
    run_id = cluster.create()
    budget = 3
    _alone_deaths(cluster, run_id, live=False, times=POISON_FUSE * budget)
    assert cluster.claim(cluster.worker()) is None
    state, reason = cluster.state(run_id)
    assert state is RunState.FAILED
    assert reason is not None and reason.startswith(f"{POISON_FUSE * budget} attempts died")


def test_a_run_killing_its_workers_before_going_live_cannot_take_a_neighbour_down_with_it(
    cluster: Cluster,
) -> None:
    """A hostile tenant's run journals one step, then kills every worker it lands on during its
    replay, never going live: its deaths are no evidence. Another tenant's run of the SAME agent
    name shares those workers, going live and doing a new step each time, and dies with them. The
    killer must be set apart (quarantined, claimed alone) long before the neighbour's deaths reach
    the fuse: else the neighbour, the one run that did nothing wrong, is failed by it."""
    hostile, innocent = cluster.create(0), cluster.create(1)
    quarantined = False
    for _ in range(3 * POISON_FUSE * 3):
        if cluster.state(hostile)[0].finished:
            break
        owner = cluster.worker()
        first = cluster.claim(owner)
        if first is None:  # nothing left to claim
            break
        held = [first]
        if not first.alone:  # a busy worker takes more (never a quarantined run)
            second = cluster.runs.claim(owner, LEASE, idle=False)
            held += [second] if second is not None else []
        quarantined = quarantined or any(c.alone and c.run.id == hostile for c in held)
        for claim in held:
            if claim.run.id == innocent:
                cluster.journal(claim, claim.run.attempt)  # a new step each attempt
                cluster.live(claim)
            elif claim.run.attempt == 1:
                cluster.journal(claim, 1)
                cluster.live(claim)
        if any(c.run.id == hostile for c in held):
            cluster.clock.past_the_lease()  # the hostile run kills the worker and all on it
        else:  # the worker lives: the neighbour finishes on it
            with cluster.store.write() as conn:
                cluster.runs.transition(conn, held[0].run, owner, RunState.SUCCEEDED)
    assert quarantined, "the run killing its workers was never set apart"
    assert cluster.state(innocent)[0] is not RunState.FAILED, cluster.state(innocent)


def test_no_run_is_failed_while_workers_die_where_it_is_not(cluster: Cluster) -> None:
    """Three live deaths alone at one seq are a poison run's mark -- unless workers died meanwhile
    without it (another tenant's run of the same agent name, on a worker it never touched): then
    the cluster is losing workers anyway, and the run is quarantined, not failed. Once the churn
    stops, the same evidence fails it."""
    run_id, other = cluster.create(0), cluster.create(1)

    def dies_alone_live() -> None:
        claim = cluster.claim(cluster.worker())
        assert claim is not None and claim.run.id == run_id
        if claim.run.attempt == 1:
            cluster.journal(claim, 1)
        cluster.live(claim)

    def other_runs_elsewhere() -> None:
        claim = cluster.claim(cluster.worker())
        assert claim is not None and claim.run.id == other
        cluster.live(claim)

    for _ in range(3):
        dies_alone_live()
        other_runs_elsewhere()
        cluster.clock.past_the_lease()  # both workers die
    # The run's third death is judged with the other run's deaths elsewhere on record.
    claim = cluster.claim(cluster.worker())
    assert claim is not None and claim.run.id == run_id
    assert claim.alone, "suspect all the same: it runs alone from now on"
    assert cluster.state(run_id)[0] is RunState.STARTING
    cluster.live(claim)
    cluster.clock.past_the_lease()
    # The other run is done with (it finished); the run's workers alone keep dying.
    other_claim = cluster.claim(cluster.worker())
    assert other_claim is not None and other_claim.run.id == other
    with cluster.store.write() as conn:
        cluster.runs.transition(conn, other_claim.run, other_claim.owner, RunState.SUCCEEDED)
    for _ in range(2):
        dies_alone_live()
        cluster.clock.past_the_lease()
    assert cluster.claim(cluster.worker()) is None
    assert cluster.state(run_id)[0] is RunState.FAILED


def test_two_poison_runs_shield_each_other_only_up_to_the_fuse(cluster: Cluster) -> None:
    """An attacker's two runs that each kill every worker they go live on, at one seq, alone:
    each one's deaths are the other's "churn" (a worker died where it was not), so the evidence
    rule never fails either; only the fuse does. What it costs: ``POISON_FUSE`` times the
    workers one poison run may kill, per run (measured: 30 deaths each, with a budget of 3; the
    rule before the churn check failed each after 3). This pins that bound: a pair of runs killing
    workers forever fails it. Tenant-scoping the churn check would not stop an attacker with two
    tenants, and would give a one-tenant cluster's churn back to the rule."""
    runs = {cluster.create(0), cluster.create(0)}
    deaths = dict.fromkeys(runs, 0)
    while True:
        claims = [c for c in (cluster.claim(cluster.worker()) for _ in runs) if c is not None]
        if not claims:
            break
        for claim in claims:
            if claim.run.attempt == 1:
                cluster.journal(claim, 1)
            cluster.live(claim)
            deaths[claim.run.id] += 1
        cluster.clock.past_the_lease()  # both workers die
        assert max(deaths.values()) <= POISON_FUSE * 3, deaths
    for run_id in runs:
        state, reason = cluster.state(run_id)
        assert state is RunState.FAILED, (state, reason)
