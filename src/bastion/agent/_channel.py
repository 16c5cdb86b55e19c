"""The sandbox's end of the JSON-RPC channel: one JSON object per line, UTF-8, on two private fds.

The channel starts on fds 0 and 1. ``Channel.from_stdio`` moves it to private fds and points fd 1
at stderr and fd 0 at /dev/null, so nothing the agent prints or reads (``print``, ``os.write(1,
...)``, ``input()``, a subprocess it starts) can corrupt or consume a channel message.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import threading
from typing import Any, BinaryIO, cast

from ._errors import AgentError, error_from_rpc

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def encode(message: dict[str, Any]) -> bytes:
    """One message as a channel line.

    Raises:
        TypeError: a value in it is not JSON.
        ValueError: a float is NaN or infinite, or a string is not encodable as UTF-8.
    """
    return _ENCODER.encode(message).encode() + b"\n"


class Channel:
    """Requests and notifications to the host; safe to use from several threads."""

    def __init__(self, reader: BinaryIO, write_fd: int) -> None:
        self._reader = reader
        self._write_fd = write_fd
        self._ids = itertools.count(1)
        # The host answers one request at a time, so a request holds the channel until its answer.
        self._request_lock = threading.Lock()
        # A notification may be sent while another thread waits for an answer; lines must not interleave.
        self._write_lock = threading.Lock()

    @classmethod
    def from_stdio(cls) -> Channel:
        """Take fds 0 and 1 for the channel and leave the agent a harmless stdin and stdout."""
        # os.dup makes non-inheritable fds: subprocesses of the agent never hold the channel.
        read_fd, write_fd = os.dup(0), os.dup(1)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        return cls(open(read_fd, "rb", buffering=64 * 1024), write_fd)

    def write(self, line: bytes) -> None:
        """Write one encoded line in one piece."""
        with self._write_lock:
            view = memoryview(line)
            while view:
                view = view[os.write(self._write_fd, view) :]

    def send(self, message: dict[str, Any]) -> None:
        self.write(encode(message))

    def receive(self) -> dict[str, Any] | None:
        """The next message from the host, or None when the host closed the channel."""
        line = self._reader.readline()
        if not line:
            return None
        message = json.loads(line)
        if not isinstance(message, dict):
            raise AgentError(f"protocol error: the host sent {line[:80]!r}")
        return cast(dict[str, Any], message)

    def request(self, method: str, params: dict[str, Any]) -> Any:
        """Send one request and wait for its answer.

        Raises:
            ToolDenied: the gateway refused it.
            ToolFailed: the tool ran and failed.
            AgentError: any other error answer, or the host went away.
        """
        with self._request_lock:
            request_id = next(self._ids)
            self.send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
            reply = self.receive()
        if reply is None:
            raise AgentError(f"the host closed the channel before answering {method!r}")
        if reply.get("id") != request_id:
            raise AgentError(
                f"protocol error: expected the answer to request {request_id}, got {reply!r:.200}"
            )
        if "error" in reply:
            raise error_from_rpc(reply["error"], params.get("name") if method == "tool.call" else None)
        return reply.get("result")

    def notify(self, method: str, params: dict[str, Any]) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params})


_current: Channel | None = None


def install(channel: Channel) -> None:
    """Make ``channel`` the one the SDK's functions use (the runner does this at start)."""
    global _current
    _current = channel


def current() -> Channel:
    """The channel to the host.

    Raises:
        AgentError: the code is not running inside a Bastion sandbox.
    """
    if _current is None:
        raise AgentError(
            "bastion.agent works only inside a Bastion sandbox: there is no channel to the gateway"
        )
    return _current
