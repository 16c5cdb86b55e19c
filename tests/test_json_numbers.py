"""NaN, the infinities and numbers that overflow to one are not JSON, wherever JSON comes in.

Python's parser accepts them; a run input of ``NaN`` used to be a 500 that left a stored run
behind whose every attempt crashed its worker thread. Now: a 400 problem+json naming the field
before anything is stored, on every JSON body; the agent channel refuses them both ways; the
journal and the store never write one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bastion.api import NonFiniteNumber, parse_json
from bastion.errors import SandboxError
from bastion.execution.sandbox import ProcessBackend, SandboxSpec
from bastion.observe.journal import canonical

from ._agents import code_agent, wait_finished
from ._docs import raw
from .conftest import Tenant

NOT_FINITE = ["NaN", "Infinity", "-Infinity", "1e999", "-1.8e308", "1" + "0" * 400 + ".0", "0.5E+0400"]
FINITE = ["1.7e308", "-0.0", "1e-999", "1" + "0" * 400, "5e-324", '"NaN"', '"Infinity"']


@pytest.mark.parametrize("literal", NOT_FINITE)
def test_parse_json_refuses_what_is_not_a_finite_number_and_names_where(literal: str) -> None:
    with pytest.raises(NonFiniteNumber) as refused:
        parse_json('{"agent": "a", "input": {"xs": [1, {"y": ' + literal + "}]}}")
    assert refused.value.path == "input.xs[1].y"
    with pytest.raises(NonFiniteNumber) as top:
        parse_json(literal)
    assert top.value.path == ""


@pytest.mark.parametrize("literal", FINITE)
def test_parse_json_keeps_every_finite_number(literal: str) -> None:
    value = parse_json('{"v": ' + literal + "}")["v"]
    assert isinstance(value, str | int) or math.isfinite(value)
    assert value == parse_json(literal)


def test_the_journal_never_writes_a_non_finite_number() -> None:
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError):
            canonical({"response": [value]})


# --- the API -----------------------------------------------------------------------------------


def _post(tenant: Tenant, path: str, body: str, content_type: str = "application/json") -> httpx.Response:
    headers = {"Authorization": f"Bearer {tenant.admin_key}", "Content-Type": content_type}
    return httpx.post(f"{tenant.server.url}{path}", content=body, headers=headers, timeout=30)


def _refused(response: httpx.Response, field: str) -> None:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["field"] == field and "not a JSON number" in problem["detail"], problem
    assert "Traceback" not in response.text


def test_a_run_input_that_is_not_json_is_refused_and_nothing_is_stored(tenant: Tenant) -> None:
    runs = "/api/v1/namespaces/default/runs"
    with tenant.client() as client:
        client.apply(raw(code_agent("a", "def main(input):\n    return input\n")))
        for literal in NOT_FINITE:
            _refused(_post(tenant, runs, '{"agent": "a", "input": {"x": [' + literal + "]}}"), "input.x[0]")
            _refused(_post(tenant, runs, '{"agent": "a", "input": ' + literal + "}"), "input")
        assert client.list_runs() == [], "a refused request left a run behind"
        # the worker is unharmed, and finite numbers at the edges of the range go through
        done = wait_finished(client, client.create_run("a", {"big": 1.7e308, "tiny": 5e-324})["id"])
        assert done["state"] == "Succeeded" and done["result"] == {"big": 1.7e308, "tiny": 5e-324}


def test_every_json_body_refuses_them(tenant: Tenant) -> None:
    """Not only runs: whatever route a JSON body is for, before the route runs."""
    doc = '{"apiVersion": "bastion/v1", "kind": "Agent", "metadata": {"name": "a"}, '
    doc += '"spec": {"runtime": "python", "limits": {"cpuSeconds": Infinity}}}'
    _refused(
        _post(tenant, "/api/v1/apply", '{"documents": [' + doc + "]}"), "documents[0].spec.limits.cpuSeconds"
    )
    _refused(
        _post(tenant, "/api/v1/diff", '{"documents": [' + doc + "]}"), "documents[0].spec.limits.cpuSeconds"
    )
    fork = "/api/v1/namespaces/default/runs/00000000-0000-0000-0000-000000000000/fork"
    _refused(_post(tenant, fork, '{"seq": 1e999}'), "seq")
    _refused(_post(tenant, "/api/v1/namespaces", '{"name": NaN}'), "name")
    chat = '{"model": "p", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'
    _refused(_post(tenant, "/llm/v1/chat/completions", chat), "temperature")
    # the /llm endpoint's own parser is the same one, whatever the content type says
    _refused(_post(tenant, "/llm/v1/chat/completions", chat, "text/plain"), "temperature")
    with tenant.client() as client:
        assert list(client.list("Agent")) == []
        assert [n["name"] for n in client.list_namespaces()] == ["default"]


# --- the agent channel -------------------------------------------------------------------------


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Any]:
    started: list[Any] = []

    def start(source: str) -> Any:
        (tmp_path / "agent.py").write_text(source)
        box = backend.start(SandboxSpec(workspace=tmp_path), on_log=lambda _line: None)
        started.append(box)
        return box

    with ProcessBackend() as backend:
        yield start
        for box in started:
            box.stop()


def _answer(method: str, params: dict[str, Any]) -> Any:
    return {"ok": True}


@pytest.mark.parametrize("literal", ["NaN", "-Infinity", "1e999"])
def test_an_agent_writing_a_non_finite_number_is_a_protocol_error(sandbox: Any, literal: str) -> None:
    line = '{"jsonrpc": "2.0", "id": 1, "method": "tool.call", "params": {"name": "t", "args": {"x": %s}}}\n'
    box = sandbox(
        "import os, time\nfrom bastion.agent import _channel\n"
        f"def main(_):\n    os.write(_channel.current()._write_fd, {(line % literal).encode()!r})\n"
        "    time.sleep(30)\n"
    )
    seen: list[Any] = []

    def handler(method: str, params: dict[str, Any]) -> Any:
        seen.append(params)
        return {"ok": True}

    with pytest.raises(SandboxError, match="protocol error"):
        box.call("run", {"entrypoint": "agent:main", "input": None}, handler=handler)
    assert seen == [], "a request carrying a non-finite number reached the gateway"


def test_the_host_never_sends_a_non_finite_number_and_its_thread_survives(sandbox: Any) -> None:
    box = sandbox("def main(input):\n    return input\n")
    with pytest.raises(SandboxError, match="not JSON"):
        box.call("run", {"entrypoint": "agent:main", "input": {"x": math.nan}}, handler=_answer)
