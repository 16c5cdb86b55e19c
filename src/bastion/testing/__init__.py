"""Test helpers that ship with Bastion: real servers, no monkeypatching."""

from ._providers import (
    FakeProvider,
    Hold,
    Received,
    Step,
    disconnect,
    fault,
    malformed,
    reply,
    tool_call,
    tool_calls,
)
from ._server import serve_in_thread
from ._weather import weather_api

__all__ = [
    "FakeProvider",
    "Hold",
    "Received",
    "Step",
    "disconnect",
    "fault",
    "malformed",
    "reply",
    "serve_in_thread",
    "tool_call",
    "tool_calls",
    "weather_api",
]
