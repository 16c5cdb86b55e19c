"""The SDK agent code uses inside a Bastion sandbox. Standard library only.

Everything here goes through the gateway, the sandbox's one way out::

    from bastion.agent import ToolDenied, log, tools

    def main(task):
        try:
            page = tools.call("http.fetch", url=task["url"])
        except ToolDenied as denied:
            log("no web access:", denied.reasons)
            page = None
        return {"summary": summarize(page)}

The sandbox runs ``main(input)`` from the workspace module the Agent's entrypoint names and returns
what it returns (or what was passed to `result`) as the run's result.
"""

from ._api import Tools, call_tool, log, now, random, result, tools, uuid
from ._errors import AgentError, ToolDenied, ToolFailed

__all__ = [
    "AgentError",
    "ToolDenied",
    "ToolFailed",
    "Tools",
    "call_tool",
    "log",
    "now",
    "random",
    "result",
    "tools",
    "uuid",
]
