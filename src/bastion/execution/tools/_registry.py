"""The builtin tools, by name."""

from __future__ import annotations

from ._base import Tool
from ._files import FsList, FsRead, FsWrite
from ._http import HttpFetch


def builtin_tools() -> dict[str, Tool]:
    """A fresh instance of each builtin tool, keyed by its name."""
    tools: list[Tool] = [HttpFetch(), FsRead(), FsWrite(), FsList()]
    return {tool.name: tool for tool in tools}
