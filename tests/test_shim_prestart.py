"""The in-sandbox model endpoint, started at warm-up before its run is known, serves no one until
the run's token opens it, and only that run's token from then on.

A warm sandbox's shim listens on loopback before any run: with the process backend every sandbox
of the host shares that loopback, so a neighbour that finds the port must get nothing through it --
no request may reach the channel (and so the gateway, which would charge it to whichever run then
owns the sandbox) without the current run's token. The host side is a real channel over pipes.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from bastion.agent import _shim  # pyright: ignore[reportPrivateUsage]
from bastion.agent._channel import Channel  # pyright: ignore[reportPrivateUsage]

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


class Host:
    """The host end of a sandbox's channel: answers every request, and remembers it."""

    def __init__(self) -> None:
        to_host_r, to_host_w = os.pipe()
        to_agent_r, to_agent_w = os.pipe()
        self._agent_reader = open(to_agent_r, "rb")  # noqa: SIM115 -- closed by close()
        self.channel = Channel(self._agent_reader, to_host_w)
        self._to_host_w = to_host_w
        self._reader = open(to_host_r, "rb")  # noqa: SIM115 -- closed by close()
        self._write_fd = to_agent_w
        self.requests: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while line := self._reader.readline():
            message = json.loads(line)
            self.requests.append(message)
            answer = {"jsonrpc": "2.0", "id": message["id"], "result": {"body": {"answered": True}}}
            os.write(self._write_fd, json.dumps(answer).encode() + b"\n")

    def close(self) -> None:
        os.close(self._to_host_w)  # the serving thread reads the end of the channel and stops
        self._thread.join(timeout=10)
        self._reader.close()
        os.close(self._write_fd)
        self._agent_reader.close()


@pytest.fixture
def host() -> Iterator[Host]:
    host = Host()
    try:
        yield host
    finally:
        started = _shim._started  # pyright: ignore[reportPrivateUsage]
        if started is not None:
            started.close()
        _shim._started = None  # pyright: ignore[reportPrivateUsage]
        host.close()


def _post(port: int, headers: dict[str, str]) -> tuple[int, Any]:
    """(status, JSON body); http.client sends header values as given (blank, trailing spaces)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        body = json.dumps(BODY)
        connection.request(
            "POST", "/v1/chat/completions", body, {"Content-Type": "application/json", **headers}
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def _probes(token: str | None) -> list[dict[str, str]]:
    """Every way of presenting a key, with nothing, blanks, and (if given) a wrong or stale one."""
    probes: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer"},
        {"x-api-key": ""},
        {"Authorization": "Bearer  ", "x-api-key": " "},
        {"Authorization": "Basic Zm9vOmJhcg=="},
    ]
    if token is not None:
        probes += [{"Authorization": f"Bearer {token}"}, {"x-api-key": token}]
    return probes


def test_a_prestarted_shim_refuses_every_request_until_a_run_token_opens_it(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    _shim.prestart(host.channel)
    shim = _shim._started  # pyright: ignore[reportPrivateUsage]
    assert shim is not None
    for headers in _probes("guess"):
        status, _ = _post(shim.port, headers)
        assert status == 401, (headers, status)
    assert host.requests == [], "nothing reached the channel before the run's token"

    monkeypatch.setenv(_shim.TOKEN_ENV, "token-of-run-1")
    opened = _shim.start_from_environment(host.channel)
    assert opened is shim, "the prestarted endpoint is the one the run gets"
    assert _shim.TOKEN_ENV not in os.environ
    assert os.environ["OPENAI_API_KEY"] == "token-of-run-1"
    for headers in _probes("token-of-run-2"):
        assert _post(shim.port, headers)[0] == 401, headers
    assert host.requests == []
    good = _post(shim.port, {"Authorization": "Bearer token-of-run-1"})
    assert good == (200, {"answered": True})
    assert _post(shim.port, {"x-api-key": "token-of-run-1"})[0] == 200
    assert [r["method"] for r in host.requests] == ["llm.chat", "llm.chat"]

    shim.authorize("token-of-run-2", traceparent=None)
    for headers in _probes("token-of-run-1"):
        assert _post(shim.port, headers)[0] == 401, ("a replaced token still works", headers)
    assert len(host.requests) == 2
