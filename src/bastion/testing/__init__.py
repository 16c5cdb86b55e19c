"""Test helpers that ship with Bastion: real servers, no monkeypatching."""

from ._server import serve_in_thread

__all__ = ["serve_in_thread"]
