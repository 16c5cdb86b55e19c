"""Test helpers that ship with Bastion: real servers, no monkeypatching."""

from ._server import serve_in_thread
from ._weather import weather_api

__all__ = ["serve_in_thread", "weather_api"]
