"""The in-sandbox SDK, ``bastion.agent``, driven through the process backend against a handler that
answers the way the gateway does."""

from __future__ import annotations

import ast
import pickle
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import bastion.agent
from bastion.agent import AgentError, ToolDenied, ToolFailed
from bastion.agent import _errors as sdk_errors  # pyright: ignore[reportPrivateUsage]
from bastion.agent import _runner as sdk_runner  # pyright: ignore[reportPrivateUsage]
from bastion.execution.sandbox import (
    DENIED,
    TOOL_FAILED,
    CallError,
    ProcessBackend,
    ProcessSandbox,
    SandboxSpec,
    SandboxState,
)
from bastion.execution.sandbox import _process as process_backend  # pyright: ignore[reportPrivateUsage]

NOW = "2030-01-02T03:04:05.678+02:00"
UUID = "0b6a4a52-57f6-4c39-9d3a-2a3f0a3c1d11"


class Gateway:
    """Answers the SDK's requests like the gateway: tools by name, recorded time, randomness and ids."""

    def __init__(self, **tools: Callable[..., Any]) -> None:
        self.tools = tools
        self.requests: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, method: str, params: dict[str, Any]) -> Any:
        self.requests.append((method, params))
        if method == "tool.call":
            return self.tools[params["name"]](**params["args"])
        return {"time.now": NOW, "random.random": 0.25, "random.uuid": UUID}[method]


def _add(a: int, b: int) -> int:
    return a + b


def _lookup(name: str) -> dict[str, str]:
    return {"name": name}


def _echo(value: object) -> object:
    return value


def deny(**_: Any) -> Any:
    raise CallError(
        DENIED, "denied", {"tool": "shell.exec", "reasons": ["no grant"], "rule_ids": ["grant/none"]}
    )


def fail(**_: Any) -> Any:
    raise CallError(TOOL_FAILED, "failed", {"tool": "http.fetch", "reason": "HTTP 503", "retryable": True})


Run = Callable[..., Any]


@pytest.fixture(scope="module")
def backend() -> Iterator[ProcessBackend]:
    with ProcessBackend() as backend:
        yield backend


@pytest.fixture
def sandbox(backend: ProcessBackend, tmp_path: Path) -> Iterator[Callable[..., ProcessSandbox]]:
    """Write modules into a workspace (``name=source``) and start a sandbox on it."""
    started: list[ProcessSandbox] = []

    def _sandbox(**modules: str) -> ProcessSandbox:
        for name, source in modules.items():
            (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        started.append(backend.start(SandboxSpec(workspace=tmp_path), on_log=print))
        return started[-1]

    yield _sandbox
    for box in started:
        box.stop()


@pytest.fixture
def run(sandbox: Callable[..., ProcessSandbox]) -> Run:
    """Run ``main(payload)`` from ``source`` once, against ``gateway``."""

    def _run(source: str, payload: Any = None, gateway: Gateway | None = None) -> Any:
        box = sandbox(agent=source)
        params = {"entrypoint": "agent:main", "input": payload}
        return box.call("run", params, handler=gateway or Gateway())

    return _run


def test_tools_call_returns_the_gateways_result(run: Run) -> None:
    gateway = Gateway(add=_add, lookup=_lookup)
    source = """
        from bastion.agent import call_tool, tools
        def main(payload):
            return [tools.call("add", a=payload, b=2), tools.call("lookup", name="x"), call_tool("add", {"a": 1, "b": 1})]
    """
    assert run(source, 40, gateway) == [42, {"name": "x"}, 2]
    assert gateway.requests[0] == ("tool.call", {"name": "add", "args": {"a": 40, "b": 2}})


def test_a_denied_tool_raises_tool_denied_which_the_agent_can_catch(run: Run) -> None:
    source = """
        from bastion.agent import ToolDenied, log, tools
        def main(_):
            try:
                tools.call("shell.exec", cmd="rm -rf /")
            except PermissionError as error:
                assert isinstance(error, ToolDenied)
                return [error.tool, error.reasons, error.rule_ids, str(error), tools.call("ok")]
    """
    answer = run(source, gateway=Gateway(**{"shell.exec": deny, "ok": lambda: "carried on"}))
    assert answer == [
        "shell.exec",
        ["no grant"],
        ["grant/none"],
        "tool 'shell.exec' denied: no grant",
        "carried on",
    ]


def test_a_failed_tool_raises_tool_failed_with_its_fields(run: Run) -> None:
    source = """
        from bastion.agent import AgentError, ToolFailed, tools
        def main(_):
            try:
                tools.call("http.fetch", url="https://example.com")
            except ToolFailed as error:
                return [error.tool, error.reason, error.retryable, error.code, isinstance(error, AgentError)]
    """
    assert run(source, gateway=Gateway(**{"http.fetch": fail})) == [
        "http.fetch",
        "HTTP 503",
        True,
        TOOL_FAILED,
        True,
    ]


def test_an_uncaught_denial_fails_the_run_naming_it(run: Run) -> None:
    source = """
        from bastion.agent import tools
        def main(_):
            tools.call("shell.exec")
    """
    with pytest.raises(CallError) as raised:
        run(source, gateway=Gateway(**{"shell.exec": deny}))
    assert raised.value.code == -32000
    assert raised.value.data["exception"] == "ToolDenied"


def test_time_randomness_and_ids_come_from_the_gateway(run: Run) -> None:
    source = """
        from bastion.agent import now, random, uuid
        def main(_):
            moment = now()
            return [moment.isoformat(), str(moment.tzinfo), random(), uuid()]
    """
    moment, zone, number, ident = run(source)
    assert datetime.fromisoformat(moment) == datetime.fromisoformat(NOW)
    assert datetime.fromisoformat(moment).tzinfo == UTC
    assert zone == "UTC"
    assert number == 0.25
    assert uuid.UUID(ident) == uuid.UUID(UUID)


def test_result_replaces_the_return_value_for_that_run_only(sandbox: Callable[..., ProcessSandbox]) -> None:
    box = sandbox(
        agent="""
        from bastion.agent import result
        def main(payload):
            if payload:
                result({"explicit": 1})
                result({"explicit": 2})
            return "returned"
        """
    )
    assert box.call("run", {"entrypoint": "agent:main", "input": True}, handler=Gateway()) == {"explicit": 2}
    assert box.call("run", {"entrypoint": "agent:main", "input": False}, handler=Gateway()) == "returned"


def test_an_agent_exception_is_an_error_with_the_workspace_traceback(
    sandbox: Callable[..., ProcessSandbox],
) -> None:
    box = sandbox(
        helper="""
        def check(value):
            raise ValueError(f"bad value {value}")
        """,
        agent="""
        from bastion.agent import tools
        from helper import check
        def main(payload):
            tools.call("noop")
            check(payload)
        """,
    )
    gateway = Gateway(noop=lambda: None)
    with pytest.raises(CallError) as raised:
        box.call("run", {"entrypoint": "agent:main", "input": 7}, handler=gateway)
    error = raised.value
    assert (error.code, error.message) == (-32000, "ValueError: bad value 7")
    assert (error.data["type"], error.data["exception"]) == ("agent_error", "ValueError")
    trace = error.data["traceback"]
    assert "agent.py" in trace and "helper.py" in trace and "check(payload)" in trace
    assert trace.endswith("ValueError: bad value 7")
    assert "_runner" not in trace and "importlib" not in trace
    # The agent's error ends the run, not the sandbox.
    assert box.status().state is SandboxState.WARM
    with pytest.raises(CallError, match="bad value 8"):
        box.call("run", {"entrypoint": "agent:main", "input": 8}, handler=gateway)


@pytest.mark.parametrize(
    ("returned", "why"), [("{1, 2}", "set is not JSON"), ("float('nan')", "Out of range")]
)
def test_a_result_that_is_not_json_is_a_clear_error(run: Run, returned: str, why: str) -> None:
    with pytest.raises(CallError, match="the agent's result is not JSON-serializable") as raised:
        run(f"def main(_):\n    return {returned}\n")
    assert raised.value.data == {"type": "invalid_result"}
    assert why in raised.value.message


@pytest.mark.parametrize(
    ("entrypoint", "code", "message"),
    [
        ("agent", -32602, "entrypoint must be 'module:function'"),
        ("missing:main", -32000, "ModuleNotFoundError: No module named 'missing'"),
        ("agent:absent", -32000, "AttributeError"),
    ],
)
def test_a_bad_entrypoint_is_an_error_answer(
    sandbox: Callable[..., ProcessSandbox], entrypoint: str, code: int, message: str
) -> None:
    box = sandbox(agent="def main(_):\n    return 1\n")
    with pytest.raises(CallError, match=message) as raised:
        box.call("run", {"entrypoint": entrypoint}, handler=Gateway())
    assert raised.value.code == code
    with pytest.raises(CallError, match="no method 'debug'") as raised:
        box.call("debug", {}, handler=Gateway())
    assert raised.value.code == -32601


def test_requests_from_several_threads_each_get_their_own_answer(run: Run) -> None:
    source = """
        import threading
        from bastion.agent import tools
        def main(_):
            answers = {}
            def ask(n):
                answers[n] = [tools.call("echo", value=n * 1000 + i) for i in range(50)]
            threads = [threading.Thread(target=ask, args=(n,)) for n in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return all(answers[n] == [n * 1000 + i for i in range(50)] for n in range(4))
    """
    assert run(source, gateway=Gateway(echo=_echo)) is True


def test_the_sdk_outside_a_sandbox_says_so() -> None:
    with pytest.raises(AgentError, match="only inside a Bastion sandbox"):
        bastion.agent.tools.call("anything")
    with pytest.raises(AgentError, match="while a run is in progress"):
        bastion.agent.result(1)


def _round_trip(error: AgentError) -> Any:
    return pickle.loads(pickle.dumps(error))  # noqa: S301 -- bytes this test just made


def test_sdk_errors_keep_their_fields_when_pickled() -> None:
    denied = _round_trip(ToolDenied("t", ["why"], ["r1"]))
    assert (denied.tool, denied.reasons, denied.rule_ids) == ("t", ["why"], ["r1"])
    assert str(denied) == "tool 't' denied: why"
    failed = _round_trip(ToolFailed("t", "down", retryable=True))
    assert (failed.tool, failed.reason, failed.retryable, failed.code) == ("t", "down", True, TOOL_FAILED)


def test_the_sdk_and_the_host_agree_on_codes() -> None:
    assert (sdk_errors.DENIED, sdk_errors.TOOL_FAILED) == (DENIED, TOOL_FAILED)
    assert process_backend._LIMIT_EXCEEDED == sdk_runner.LIMIT_EXCEEDED  # pyright: ignore[reportPrivateUsage]
    assert process_backend._EXIT_MEMORY == sdk_runner.EXIT_MEMORY  # pyright: ignore[reportPrivateUsage]


def test_the_sdk_imports_only_the_standard_library() -> None:
    package = Path(bastion.agent.__file__).parent
    outside: list[str] = []
    for module in package.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top not in sys.stdlib_module_names and top != "__future__":
                    outside.append(f"{module.name}: {name}")
    assert outside == []


def test_the_public_names_are_exactly_all() -> None:
    public = {name for name in vars(bastion.agent) if not name.startswith("_")}
    public -= {name for name, value in vars(bastion.agent).items() if type(value).__name__ == "module"}
    assert sorted(bastion.agent.__all__) == sorted(public)
