"""Tools the gateway executes: the builtins (``http.fetch``, ``fs.*``) and HTTP tools."""

from ._base import MIB, BoundSecret, Tool, ToolContext, ToolLimits
from ._files import MAX_ENTRIES, FsList, FsRead, FsWrite
from ._http import METHODS, RESERVED_HEADERS, HttpFetch, HttpTool
from ._registry import builtin_tools

__all__ = [
    "MAX_ENTRIES",
    "METHODS",
    "MIB",
    "RESERVED_HEADERS",
    "BoundSecret",
    "FsList",
    "FsRead",
    "FsWrite",
    "HttpFetch",
    "HttpTool",
    "Tool",
    "ToolContext",
    "ToolLimits",
    "builtin_tools",
]
