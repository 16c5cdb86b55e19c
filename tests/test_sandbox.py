"""The process sandbox backend with real child processes: the channel, the environment, every limit,
and that nothing the agent started outlives ``stop``."""

from __future__ import annotations

import os
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bastion.errors import LimitExceeded, RunKilled, SandboxError
from bastion.execution.sandbox import (
    MIB,
    CallError,
    ProcessBackend,
    ProcessSandbox,
    SandboxLimits,
    SandboxSpec,
    SandboxState,
    read_agent_file,
)
from bastion.execution.sandbox._sdk import remove_tree  # pyright: ignore[reportPrivateUsage]


@dataclass
class Agent:
    """A started sandbox and the lines it logged."""

    sandbox: ProcessSandbox
    workspace: Path
    logs: list[str] = field(default_factory=list[str])

    def run(
        self, payload: Any = None, handler: Callable[[str, dict[str, Any]], Any] | None = None, **kw: Any
    ) -> Any:
        params = {"entrypoint": "agent:main", "input": payload}
        return self.sandbox.call("run", params, handler=handler or _no_requests, **kw)


Start = Callable[..., Agent]


def _no_requests(method: str, params: dict[str, Any]) -> Any:
    raise AssertionError(f"unexpected request {method} {params}")


@pytest.fixture(scope="module")
def backend() -> Iterator[ProcessBackend]:
    with ProcessBackend() as backend:
        yield backend


@pytest.fixture
def start(backend: ProcessBackend, tmp_path: Path) -> Iterator[Start]:
    """Write ``source`` as the workspace's agent.py and start a sandbox on it; stop them all at the end."""
    agents: list[Agent] = []

    def _start(source: str, *, env: dict[str, str] | None = None, **limits: Any) -> Agent:
        workspace = tmp_path / f"ws{len(agents)}"
        workspace.mkdir()
        (workspace / "agent.py").write_text(textwrap.dedent(source))
        spec = SandboxSpec(workspace=workspace, limits=SandboxLimits(**limits), env=env or {})
        logs: list[str] = []
        agent = Agent(backend.start(spec, on_log=logs.append), workspace, logs)
        agents.append(agent)
        return agent

    yield _start
    for agent in agents:
        agent.sandbox.stop()


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie waiting for a reaper counts as gone."""
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _gone(pid: int) -> bool:
    until = time.monotonic() + 3.0
    while _alive(pid) and time.monotonic() < until:
        time.sleep(0.01)
    return not _alive(pid)


def test_a_call_serves_the_agents_requests_and_returns_its_result(start: Start) -> None:
    agent = start("""
        from bastion.agent import tools
        def main(numbers):
            return [tools.call("double", n=n) for n in numbers]
    """)
    assert agent.sandbox.status().state is SandboxState.WARM
    states: list[SandboxState] = []

    def double(method: str, params: dict[str, Any]) -> Any:
        states.append(agent.sandbox.status().state)
        assert (method, params["name"]) == ("tool.call", "double")
        return params["args"]["n"] * 2

    assert agent.run([1, 2, 3], double) == [2, 4, 6]
    assert states == [SandboxState.HOT] * 3
    status = agent.sandbox.status()
    assert (status.state, status.exit_code) == (SandboxState.WARM, None)
    assert status.pid is not None and _alive(status.pid)


def test_a_handler_refusal_reaches_the_agent_as_an_error(start: Start) -> None:
    agent = start("""
        from bastion.agent import AgentError, tools
        def main(_):
            try:
                tools.call("nope")
            except AgentError as error:
                return [error.code, error.message, error.data]
    """)

    def refuse(method: str, params: dict[str, Any]) -> Any:
        raise CallError(-32602, "bad arguments", {"field": "x"})

    assert agent.run(None, refuse) == [-32602, "bad arguments", {"field": "x"}]


def test_notifications_go_to_notify(start: Start) -> None:
    agent = start("""
        from bastion.agent import log
        def main(_):
            log("step", 1, {"a": 2})
            log("done")
            return "ok"
    """)
    seen: list[tuple[str, dict[str, Any]]] = []

    def notify(method: str, params: dict[str, Any]) -> None:
        seen.append((method, params))

    assert agent.run(notify=notify) == "ok"
    assert seen == [("log", {"message": "step 1 {'a': 2}"}), ("log", {"message": "done"})]
    assert agent.run() == "ok"  # without notify they are dropped


def test_what_the_agent_prints_goes_to_the_log_never_the_channel(start: Start) -> None:
    agent = start("""
        import os, subprocess, sys
        def main(_):
            print("from print")
            sys.stdout.write("from sys.stdout\\n")
            sys.stdout.flush()
            os.write(1, b"from fd 1\\n")
            os.write(2, b"from fd 2\\n")
            subprocess.run(["echo", "from a subprocess"], check=True)
            print("to stderr", file=sys.stderr)
            return sys.stdin.read()
    """)
    assert agent.run() == ""  # stdin is /dev/null, not the channel
    agent.sandbox.stop()  # joins the log reader, so every line has arrived
    assert agent.logs == [
        "from print",
        "from sys.stdout",
        "from fd 1",
        "from fd 2",
        "from a subprocess",
        "to stderr",
    ]


def test_the_agent_sees_only_its_own_environment_and_workspace(
    start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BASTION_CANARY", "host-secret")
    agent = start(
        """
        import os, sys
        def main(_):
            return {"env": dict(os.environ), "cwd": os.getcwd(), "path": sys.path}
        """,
        env={"AGENT_SETTING": "1"},
    )
    seen = agent.run()
    assert "BASTION_CANARY" not in seen["env"]
    assert "host-secret" not in str(seen)
    assert seen["env"]["AGENT_SETTING"] == "1"
    assert set(seen["env"]) <= {"AGENT_SETTING", "PATH", "LANG", "HOME", "MALLOC_ARENA_MAX"} | {
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONUNBUFFERED",
    }
    assert seen["cwd"] == str(agent.workspace.resolve())
    assert not [entry for entry in seen["path"] if "site-packages" in entry]


@pytest.mark.parametrize(
    ("limit", "body", "limits"),
    [
        ("cpu", "while True: pass", {"cpu_seconds": 1}),
        ("cpu", "signal.signal(signal.SIGXCPU, signal.SIG_IGN)\n    while True: pass", {"cpu_seconds": 1}),
        ("memory", "return len(b'x' * (1 << 30))", {"memory_mib": 128}),
        ("memory", "x = []\n    while True: x.append(bytearray(1 << 20))", {"memory_mib": 128}),
        ("wall_time", "import time; time.sleep(30)", {"wall_seconds": 0.5}),
        ("output", "for _ in range(2048): print('x' * 1023)", {"log_bytes": 64 * 1024}),
        ("message_size", "tools.call('big', blob='a' * 10_000_000)", {"message_bytes": 8 * MIB}),
        ("file_size", "open('big.bin', 'wb').write(b'x' * 2_000_000)", {"file_bytes": MIB}),
    ],
)
def test_each_limit_ends_the_call_and_the_sandbox(
    start: Start, limit: str, body: str, limits: dict[str, Any]
) -> None:
    agent = start(f"import signal\nfrom bastion.agent import tools\ndef main(_):\n    {body}\n", **limits)
    began = time.monotonic()
    with pytest.raises(LimitExceeded) as raised:
        agent.run()
    assert raised.value.limit == limit
    assert time.monotonic() - began < 10
    status = agent.sandbox.status()
    assert status.state is SandboxState.FAILED
    assert status.reason is not None and limit in status.reason
    assert status.pid is not None and not _alive(status.pid)
    with pytest.raises(SandboxError, match="failed"):
        agent.run()


def test_an_agent_that_exits_mid_call_is_a_sandbox_error(start: Start) -> None:
    agent = start("""
        import os
        def main(_):
            os._exit(3)
    """)
    with pytest.raises(SandboxError, match="exited with code 3 before returning a result"):
        agent.run()
    assert agent.sandbox.status().exit_code == 3


def test_a_crash_names_the_signal(start: Start) -> None:
    agent = start("""
        import os, signal
        def main(_):
            os.kill(os.getpid(), signal.SIGSEGV)
    """)
    with pytest.raises(SandboxError, match="killed by SIGSEGV"):
        agent.run()


@pytest.mark.parametrize(
    "garbage", [b"not json\n", b"[1, 2]\n", b'{"id": 1, "result": 2}\n', b'{"jsonrpc": "2.0"}\n']
)
def test_garbage_on_the_channel_is_a_protocol_error(start: Start, garbage: bytes) -> None:
    agent = start(f"""
        import os, time
        from bastion.agent import _channel
        def main(_):
            os.write(_channel.current()._write_fd, {garbage!r})
            time.sleep(30)
    """)
    with pytest.raises(SandboxError, match="protocol error"):
        agent.run()
    assert agent.sandbox.status().state is SandboxState.FAILED


class Boom(Exception):
    pass


@pytest.mark.parametrize(
    ("raised", "where"),
    [
        (RunKilled("an operator cancelled the run"), "handler"),
        (Boom("the gateway broke"), "handler"),
        (CallError(-32001, "a notification cannot be refused"), "notify"),
        (RunKilled("killed while logging"), "notify"),
    ],
)
def test_an_exception_from_the_handler_or_notify_stops_the_sandbox_and_propagates(
    start: Start, raised: BaseException, where: str
) -> None:
    agent = start("""
        from bastion.agent import log, tools
        def main(_):
            log("starting")
            tools.call("anything")
    """)

    def fail(method: str, params: dict[str, Any]) -> Any:
        raise raised

    def ignore(method: str, params: dict[str, Any]) -> Any:
        return None

    with pytest.raises(type(raised)) as caught:
        agent.run(None, fail if where == "handler" else ignore, notify=fail if where == "notify" else None)
    assert caught.value is raised
    status = agent.sandbox.status()
    assert status.state is SandboxState.TERMINATED
    assert status.reason == f"the call raised {type(raised).__name__}"
    assert status.pid is not None and not _alive(status.pid)


def test_stop_is_idempotent_and_kills_what_the_agent_started(start: Start) -> None:
    agent = start("""
        import subprocess
        def main(_):
            return subprocess.Popen(["sleep", "60"]).pid
    """)
    child = agent.run()
    assert _alive(child)
    agent.sandbox.stop()
    agent.sandbox.stop()
    assert _gone(child)
    status = agent.sandbox.status()
    assert status.state is SandboxState.TERMINATED
    assert status.pid is not None and not _alive(status.pid)
    with pytest.raises(SandboxError, match="was stopped"):
        agent.run()


def test_stop_from_another_thread_ends_a_call_in_progress(start: Start) -> None:
    agent = start("""
        import time
        def main(_):
            time.sleep(30)
    """)
    timer = threading.Timer(0.3, agent.sandbox.stop)
    timer.start()
    with pytest.raises(SandboxError, match="stopped during the call"):
        agent.run()
    timer.join()
    assert agent.sandbox.status().state is SandboxState.TERMINATED


def test_a_long_log_line_arrives_in_bounded_pieces(start: Start) -> None:
    agent = start("""
        def main(_):
            print("y" * 40_000)
    """)
    agent.run()
    agent.sandbox.stop()
    assert "".join(agent.logs) == "y" * 40_000
    assert max(len(line) for line in agent.logs) <= 16 * 1024


def test_a_workspace_that_does_not_exist_cannot_start(backend: ProcessBackend, tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="could not start"):
        backend.start(SandboxSpec(workspace=tmp_path / "missing"), on_log=print)


def test_the_sdk_copy_is_read_only_and_removed_on_close(tmp_path: Path) -> None:
    backend = ProcessBackend()
    copy = Path(backend._sdk)  # pyright: ignore[reportPrivateUsage]
    runner = copy / "bastion" / "agent" / "_runner.py"
    assert runner.is_file()
    assert not runner.stat().st_mode & 0o222
    backend.close()
    backend.close()
    assert not copy.exists()
    with pytest.raises(SandboxError, match="closed"):
        backend.start(SandboxSpec(workspace=tmp_path), on_log=print)


def test_a_shared_sdk_cache_is_made_once_and_outlives_its_backends() -> None:
    # As root the agent runs under a leased uid, which must reach the cache: not under tmp_path.
    parent = Path(tempfile.mkdtemp(prefix="bastion-sdk-cache-"))
    parent.chmod(0o711)
    cache = parent / "sdk"
    try:
        with ProcessBackend(sdk_cache=cache), ProcessBackend(sdk_cache=cache):
            pass
        versions = [p for p in cache.iterdir() if not p.name.startswith(".")]
        assert len(versions) == 1
        assert (versions[0] / "bastion" / "agent" / "_runner.py").exists()
        assert not [p for p in cache.iterdir() if p.name.startswith(".staging-")]
    finally:
        remove_tree(parent)


def test_host_readers_of_agent_files_follow_no_link(tmp_path: Path) -> None:
    """What the demo (and any host reader) shows of a workspace is never a host file behind a link."""
    secret = tmp_path / "master.key"
    secret.write_text("host master key")
    workspace = tmp_path / "ws"
    (workspace / "out").mkdir(parents=True)
    (workspace / "out" / "report.md").write_text("the agent's report")
    os.symlink(secret, workspace / "report.md")
    os.symlink("../master.key", workspace / "relative.md")
    os.symlink(tmp_path, workspace / "up")
    os.mkfifo(workspace / "fifo")
    assert read_agent_file(workspace, "out/report.md") == b"the agent's report"
    assert read_agent_file(workspace, "out/report.md", limit=3) == b"the"
    for hostile in ("report.md", "relative.md", "up/master.key", "fifo", "../master.key", "out", "missing"):
        assert read_agent_file(workspace, hostile) is None, hostile


def test_entrypoints_load_as_imports_would(start: Start) -> None:
    """The entrypoint's own file is read directly (no ``sys.path`` scan), and everything an
    import would give still holds: sibling modules, packages, dotted names, a module's state
    across runs of one sandbox, and a traceback of the agent's own frames when it fails."""
    agent = start(
        """
        import helper

        calls = []

        def main(input):
            calls.append(input)
            return {"helper": helper.VALUE, "calls": calls, "name": __name__, "file": __file__.rsplit("/", 1)[-1]}

        def broken(input):
            return helper.explode()
        """
    )
    (agent.workspace / "helper.py").write_text(
        "VALUE = 42\n\ndef explode():\n    raise ValueError('from the helper')\n"
    )
    package = agent.workspace / "team"
    package.mkdir()
    (package / "__init__.py").write_text("ROLE = 'package'\n")
    (package / "worker.py").write_text(
        "from team import ROLE\n\ndef main(input):\n    return [ROLE, input]\n"
    )
    (agent.workspace / "syntax.py").write_text("def main(input):\n    return (\n")

    assert agent.run(1) == {"helper": 42, "calls": [1], "name": "agent", "file": "agent.py"}
    assert agent.run(2)["calls"] == [1, 2]  # imported once: the module keeps its state
    call = agent.sandbox.call
    assert call("run", {"entrypoint": "team.worker:main", "input": 3}, handler=_no_requests) == ["package", 3]
    with pytest.raises(CallError) as failed:
        call("run", {"entrypoint": "agent:broken", "input": None}, handler=_no_requests)
    assert failed.value.message == "ValueError: from the helper"
    assert "helper.py" in failed.value.data["traceback"] and "agent.py" in failed.value.data["traceback"]
    with pytest.raises(CallError) as failed:
        call("run", {"entrypoint": "syntax:main", "input": None}, handler=_no_requests)
    assert failed.value.message.startswith("SyntaxError")
    with pytest.raises(CallError) as failed:
        call("run", {"entrypoint": "missing:main", "input": None}, handler=_no_requests)
    assert "No module named 'missing'" in failed.value.message
    # A failed import leaves nothing behind: the fixed file loads on the next run.
    (agent.workspace / "syntax.py").write_text("def main(input):\n    return 'fixed'\n")
    assert call("run", {"entrypoint": "syntax:main", "input": None}, handler=_no_requests) == "fixed"
