"""The warm pool: pre-started sandboxes handed to runs, never reused, refilled, bounded, cleaned up;
and the pool as the API, the metrics and the CLI show it."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from bastion.api import RandomIds, SystemClock
from bastion.cli import app
from bastion.client import BastionClient
from bastion.control import create_app
from bastion.control._sandboxes import SandboxRegistry, list_sandboxes
from bastion.control.store._tables import sandboxes
from bastion.errors import Forbidden, SandboxError
from bastion.execution.sandbox import (
    MEMORY_ESTIMATE_MIB,
    CallError,
    Image,
    PoolKey,
    SandboxInfo,
    SandboxLimits,
    SandboxState,
    WarmPool,
    open_backend,
)
from bastion.execution.sandbox._sdk import remove_tree  # pyright: ignore[reportPrivateUsage]
from bastion.testing import serve_in_thread

from ._agents import code_agent, wait_finished
from ._docs import raw
from .conftest import Tenant

KEY = PoolKey(backend="process")


def refuse(method: str, params: dict[str, Any]) -> Any:
    raise CallError(-32601, f"no {method}")


def wait_until(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def make_pool(tmp_path: Path) -> Iterator[Callable[..., tuple[WarmPool, list[SandboxInfo]]]]:
    """Pools over real process backends; every one is closed (and checked empty) afterwards."""
    pools: list[WarmPool] = []
    # Not under tmp_path: as root the agents run as leased uids, which must reach the SDK copy.
    state = Path(tempfile.mkdtemp(prefix="bastion-pool-"))
    state.chmod(0o711)

    def build(**options: Any) -> tuple[WarmPool, list[SandboxInfo]]:
        seen: list[SandboxInfo] = []
        defaults: dict[str, Any] = {"size": 2, "default_keys": [KEY], "check_seconds": 0.05}
        pool = WarmPool(
            open_backend=lambda name: open_backend(name, state_dir=state),
            workspace_dir=tmp_path / "workspaces" / ".pool" / f"p{len(pools)}",
            clock=SystemClock(),
            ids=RandomIds(),
            on_change=seen.append,
            **{**defaults, **options},
        )
        pools.append(pool)
        return pool, seen

    yield build
    for pool in pools:
        pool.close()
        assert not pool.workspace_dir.exists()
    remove_tree(state)


def hand_off(pooled: Any, workspace: Path, source: str, input: Any = None) -> Any:
    """What the worker does: rename the sandbox's workspace to the run's, write the source, call."""
    pooled.workspace.rename(workspace)
    (workspace / "agent.py").write_text(source)
    return pooled.started.call("run", {"entrypoint": "agent:main", "input": input}, handler=refuse)


def test_warm_sandboxes_are_handed_over_renamed_and_never_reused(
    make_pool: Callable[..., tuple[WarmPool, list[SandboxInfo]]], tmp_path: Path
) -> None:
    pool, seen = make_pool()
    pool.start()
    wait_until(lambda: pool.warm_count(KEY) == 2, "two warm sandboxes")
    logs: list[str] = []
    first = pool.acquire(KEY, run_id="run-1", on_log=logs.append)
    assert first.warm
    source = (
        "import builtins, os\n"
        "def main(input):\n"
        "    print('from run', input)\n"
        "    seen = getattr(builtins, 'left_by_a_run', None)\n"
        "    builtins.left_by_a_run = input\n"
        "    files = sorted(os.listdir('.'))\n"
        "    open('mine.txt', 'w').write(str(input))\n"
        "    return {'cwd': os.getcwd(), 'seen': seen, 'files': files}\n"
    )
    answer = hand_off(first, tmp_path / "run-1", source, 1)
    assert answer == {"cwd": str(tmp_path / "run-1"), "seen": None, "files": ["agent.py"]}
    pid = first.started.status().pid
    assert pid is not None
    pool.release(first)
    assert first.started.status().state is SandboxState.TERMINATED
    assert not alive(pid)
    assert (tmp_path / "run-1" / "mine.txt").read_text() == "1", "the run's workspace stays for inspection"
    wait_until(lambda: any("from run 1" in line for line in logs), "the run's log line")
    # The next run gets another sandbox: nothing the first run left in memory or on disk is there.
    second = pool.acquire(KEY, run_id="run-2", on_log=logs.append)
    assert second.id != first.id and second.started is not first.started
    assert hand_off(second, tmp_path / "run-2", source, 2)["seen"] is None
    pool.release(second)
    states = [info.state for info in seen if info.id == first.id]
    assert states == [SandboxState.COLD, SandboxState.WARM, SandboxState.HOT, SandboxState.TERMINATED]
    hot = next(info for info in seen if info.id == first.id and info.state is SandboxState.HOT)
    assert hot.run_id == "run-1"
    wait_until(lambda: pool.warm_count(KEY) == 2, "the pool refilled")


def test_an_empty_pool_starts_cold_and_then_warms_the_key(
    make_pool: Callable[..., tuple[WarmPool, list[SandboxInfo]]], tmp_path: Path
) -> None:
    pool, _ = make_pool(default_keys=[])
    pool.start()
    other = PoolKey(backend="process", limits=SandboxLimits(memory_mib=256))
    pooled = pool.acquire(other, run_id="r", on_log=lambda _: None)
    assert not pooled.warm
    assert hand_off(pooled, tmp_path / "r", "def main(input):\n    return 'cold'\n") == "cold"
    pool.release(pooled)
    wait_until(lambda: pool.warm_count(other) == 2, "the used key kept warm")
    assert pool.warm_count(KEY) == 0


def test_size_zero_means_no_warm_sandboxes(
    make_pool: Callable[..., tuple[WarmPool, list[SandboxInfo]]], tmp_path: Path
) -> None:
    pool, _ = make_pool(size=0)
    pool.start()
    pooled = pool.acquire(KEY, run_id="r", on_log=lambda _: None)
    assert not pooled.warm
    pool.release(pooled)
    time.sleep(0.3)
    assert pool.warm_count() == 0


def test_a_warm_sandbox_that_dies_is_never_handed_out_and_is_replaced(
    make_pool: Callable[..., tuple[WarmPool, list[SandboxInfo]]], tmp_path: Path
) -> None:
    pool, seen = make_pool(check_seconds=60.0)  # the refill thread will not notice on its own
    pool.start()
    wait_until(lambda: pool.warm_count(KEY) == 2, "two warm sandboxes")
    victims = [info.id for info in pool.snapshot() if info.state is SandboxState.WARM]
    pids = [sandbox.started.status().pid or 0 for sandbox in pool._warm[KEY]]  # pyright: ignore[reportPrivateUsage]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    for pid in pids:
        wait_until(lambda pid=pid: not alive(pid), "the kill")
    pooled = pool.acquire(KEY, run_id="r", on_log=lambda _: None)
    assert pooled.id not in victims and not pooled.warm
    assert hand_off(pooled, tmp_path / "r", "def main(input):\n    return 'alive'\n") == "alive"
    pool.release(pooled)
    failed = {info.id for info in seen if info.state is SandboxState.FAILED}
    assert failed == set(victims)
    assert not any((pool.workspace_dir / victim).exists() for victim in victims)


def test_the_refill_thread_replaces_sandboxes_that_die_while_warm(
    make_pool: Callable[..., tuple[WarmPool, list[SandboxInfo]]],
) -> None:
    pool, seen = make_pool()
    pool.start()
    wait_until(lambda: pool.warm_count(KEY) == 2, "two warm sandboxes")
    victim = pool._warm[KEY][0]  # pyright: ignore[reportPrivateUsage]
    os.kill(victim.started.status().pid or 0, signal.SIGKILL)
    wait_until(
        lambda: any(i.id == victim.id and i.state is SandboxState.FAILED for i in seen), "the dead one failed"
    )
    wait_until(lambda: pool.warm_count(KEY) == 2, "a replacement")
    assert victim.id not in {info.id for info in pool.snapshot() if info.state is SandboxState.WARM}


def test_the_memory_budget_bounds_the_pool_and_recent_keys_get_the_room(
    make_pool: Callable[..., tuple[WarmPool, list[SandboxInfo]]], tmp_path: Path
) -> None:
    pool, _ = make_pool(size=5, memory_budget_mib=2 * MEMORY_ESTIMATE_MIB["process"] + 1, default_keys=[])
    pool.start()
    small = PoolKey(backend="process", limits=SandboxLimits(memory_mib=200))
    other = PoolKey(backend="process", limits=SandboxLimits(memory_mib=300))
    pool.release(pool.acquire(small, run_id="a", on_log=lambda _: None))
    wait_until(lambda: pool.warm_count(small) == 2, "the budget's two")
    time.sleep(0.3)
    assert pool.warm_count() == 2
    pool.release(pool.acquire(other, run_id="b", on_log=lambda _: None))
    wait_until(lambda: pool.warm_count(other) == 2 and pool.warm_count(small) == 0, "room for the recent key")
    assert pool.warm_count() == 2


def test_keys_unused_for_a_while_are_no_longer_kept_warm(
    make_pool: Callable[..., tuple[WarmPool, list[SandboxInfo]]],
) -> None:
    pool, _ = make_pool(idle_seconds=3.0)
    pool.start()
    used = PoolKey(backend="process", limits=SandboxLimits(memory_mib=200))
    pool.release(pool.acquire(used, run_id="a", on_log=lambda _: None))
    wait_until(lambda: pool.warm_count(used) == 2, "the used key warm")
    wait_until(lambda: pool.warm_count(used) == 0, "the idle key retired")
    assert pool.warm_count(KEY) == 2, "the default key stays warm"


def test_close_stops_everything_and_leaves_nothing_behind(
    make_pool: Callable[..., tuple[WarmPool, list[SandboxInfo]]],
) -> None:
    pool, seen = make_pool()
    pool.start()
    wait_until(lambda: pool.warm_count(KEY) == 2, "two warm sandboxes")
    hot = pool.acquire(KEY, run_id="r", on_log=lambda _: None)
    pids = [info_pid for info_pid in (p.started.status().pid for p in pool._warm[KEY]) if info_pid]  # pyright: ignore[reportPrivateUsage]
    pids.append(hot.started.status().pid or 0)
    pool.close()
    assert all(not alive(pid) for pid in pids)
    assert not pool.workspace_dir.exists()
    assert pool.warm_count() == 0
    ended = {info.id for info in seen if info.state is SandboxState.TERMINATED}
    assert hot.id in ended
    with pytest.raises(SandboxError, match="closed"):
        pool.acquire(KEY, run_id="late", on_log=lambda _: None)


def test_a_backend_that_cannot_be_set_up_fails_and_nothing_runs_elsewhere(
    make_pool: Callable[..., tuple[WarmPool, list[SandboxInfo]]],
) -> None:
    pool, seen = make_pool(default_keys=[])
    with pytest.raises(SandboxError) as caught:
        pool.acquire(PoolKey(backend="vmware"), run_id="r", on_log=lambda _: None)
    assert "unknown sandbox backend 'vmware'" in caught.value.detail
    assert caught.value.hint and "process" in caught.value.hint
    assert seen == [] and pool.snapshot() == []


def test_a_warm_sandboxes_log_before_the_handoff_reaches_no_run(
    make_pool: Callable[..., tuple[WarmPool, list[SandboxInfo]]], tmp_path: Path
) -> None:
    pool, _ = make_pool(size=0)
    logs: list[str] = []
    pooled = pool.acquire(KEY, run_id="r", on_log=logs.append)
    source = "import sys\ndef main(input):\n    print('mine', file=sys.stderr)\n    return 1\n"
    assert hand_off(pooled, tmp_path / "r", source) == 1
    pool.release(pooled)
    assert logs == ["mine"]


# --- the worker, the API, the metrics and the CLI --------------------------------------------


def test_runs_get_warm_sandboxes_with_a_warning_on_process(tenant: Tenant) -> None:
    with tenant.client() as client:
        client.apply(raw(code_agent("pooled", "def main(input):\n    return input\n")))
        wait_until(lambda: _warm(client_rows(tenant)), "the server's pool warm")
        runs = [wait_finished(client, client.create_run("pooled", n)["id"]) for n in range(3)]
        assert [r["result"] for r in runs] == [0, 1, 2]
        events = [e for r in runs for e in client.events(r["id"]) if e["type"] == "sandbox"]
    assert len(events) == 3
    assert len({e["data"]["id"] for e in events}) == 3, "a sandbox serves one run"
    assert all(e["data"]["backend"] == tenant.server.bastion.default_backend for e in events)
    assert any(e["data"]["warm"] for e in events)
    if tenant.server.bastion.default_backend == "process":
        assert all("does not isolate" in e["data"]["warning"] for e in events)


def client_rows(tenant: Tenant) -> list[dict[str, Any]]:
    with tenant.server.client() as system:
        return system.list_sandboxes()


def _warm(rows: list[dict[str, Any]]) -> bool:
    return sum(1 for row in rows if row["state"] == "Warm") >= 2


def test_sandboxes_are_listed_for_operators_and_tenants_see_only_their_runs(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    rows = wait_until(lambda: (r := client_rows(tenant)) and _warm(r) and r, "warm rows")
    assert {"id", "worker", "backend", "image", "state", "runId", "startedAt"} <= set(rows[0])
    assert all(row["image"] == "default" for row in rows if row["state"] == "Warm")
    sleeper = "import time\ndef main(input):\n    time.sleep(30)\n"
    with tenant.client() as client, other_tenant.client("operator") as other:
        client.apply(raw(code_agent("sleeper", sleeper, limits={"wallSeconds": 60})))
        run = client.create_run("sleeper")
        with tenant.client("operator") as operator:
            mine = wait_until(
                lambda: [r for r in operator.list_sandboxes() if r["runId"] == run["id"]], "the Hot row"
            )
            assert mine[0]["state"] == "Hot"
            assert all(r["runId"] == run["id"] or r["runId"] is None for r in operator.list_sandboxes())
            assert not [r for r in operator.list_sandboxes() if r["state"] == "Warm"]
        assert not [r for r in other.list_sandboxes() if r["runId"] == run["id"]], "another tenant's run"
        with tenant.client("developer") as developer, pytest.raises(Forbidden):
            developer.list_sandboxes()
        system = {"Authorization": f"Bearer {tenant.server.admin_key}"}
        metrics = httpx.get(f"{tenant.server.url}/metrics", headers=system).text
        assert 'bastion_sandboxes{backend="process",state="Hot"}' in metrics
        client.cancel_run(run["id"])
        wait_finished(client, run["id"])
    code, out = _cli(tenant, "get", "sandboxes")
    assert code == 0 and "Warm" in out and "default" in out
    code, out = _cli(tenant, "get", "sandboxes", "-o", "json")
    assert code == 0 and '"state"' in out


def _cli(tenant: Tenant, *args: str) -> tuple[int, str]:
    env = {"BASTION_URL": tenant.server.url, "BASTION_API_KEY": tenant.server.admin_key}
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output


def test_a_dead_workers_rows_expire_and_a_closed_workers_rows_are_removed(
    make_bastion: Callable[..., Any],
) -> None:
    bastion = make_bastion()
    clock = SystemClock()

    class Past:
        def now(self) -> Any:
            return clock.now() - timedelta(minutes=5)

    info = SandboxInfo(
        id="sb-dead",
        backend="process",
        image="default",
        state=SandboxState.WARM,
        started_at=clock.now(),
        changed_at=clock.now(),
    )
    dead = SandboxRegistry(bastion.store, "host:1:dead", Past())
    dead.report(info)
    dead.flush()
    live = SandboxRegistry(bastion.store, "host:2:live", clock)
    live.report(SandboxInfo(**{**info.__dict__, "id": "sb-live"}))
    live.flush()
    with bastion.store.read() as conn:
        assert [r["id"] for r in list_sandboxes(conn, clock.now())] == ["sb-live"]
    with bastion.store.read() as conn:
        assert [row.id for row in conn.execute(sandboxes.select())] == ["sb-live"], "expired rows deleted"
    live.close()
    dead.close()
    with bastion.store.read() as conn:
        assert list_sandboxes(conn, clock.now()) == []


def test_the_worker_fails_closed_on_a_backend_that_does_not_work_here(
    make_bastion: Callable[..., Any], tmp_path: Path
) -> None:
    # bwrap's unprivileged uids cannot traverse a 0700 parent: a state directory under one breaks it
    # (where bwrap is missing altogether, it is broken anyway).
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    bastion = make_bastion(poll_seconds=0.05, pool_size=0, sandbox_dir=locked / "sandbox")
    broken = [r for r in bastion.backend_reports() if not r.works and r.name == "bwrap"]
    if not broken:
        pytest.skip("the worker runs unprivileged: bwrap then binds the caller's directories itself")
    first = bastion.bootstrap()
    assert first is not None
    thread, stop = bastion.start_worker()
    try:
        with serve_in_thread(create_app(bastion)) as url, BastionClient(url, first.admin_key) as client:
            agent = code_agent("isolated", "def main(input):\n    return 'ran'\n")
            agent["spec"]["sandbox"] = broken[0].name
            client.apply(raw(agent))
            done = wait_finished(client, client.create_run("isolated")["id"])
            events = list(client.events(done["id"]))
    finally:
        stop.set()
        thread.join(timeout=30)
    assert done["state"] == "Failed"
    assert done["reason"].startswith("the sandbox did not start: ")
    assert broken[0].detail in done["reason"] and "(fix: " in done["reason"]
    assert not [e for e in events if e["type"] in {"sandbox", "log"}], "nothing ran anywhere"


def test_a_key_whose_sandboxes_cannot_start_fails_its_acquire_and_is_not_retried_in_a_loop(
    make_pool: Callable[..., tuple[WarmPool, list[SandboxInfo]]],
) -> None:
    pool, seen = make_pool(default_keys=[])
    pool.start()
    broken = PoolKey(
        backend="process",
        image=Image(name="python3.11", digest="0" * 64, interpreter=Path("/nonexistent/python3.11")),
    )
    with pytest.raises(SandboxError, match="could not start"):
        pool.acquire(broken, run_id="r", on_log=lambda _: None)
    time.sleep(0.5)
    failed = [info for info in seen if info.state is SandboxState.FAILED]
    assert len(failed) == 2, "the cold start, then one warming attempt; then the key waits"
    assert all("/nonexistent/python3.11" in (info.reason or "") for info in failed)
    assert pool.warm_count() == 0
    assert not list(pool.workspace_dir.iterdir())
