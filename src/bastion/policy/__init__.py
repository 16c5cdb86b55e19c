"""Policy: pure decisions, ``(subject, action, resource, context) -> Decision``. No I/O, no clock."""

from ._decision import Decision, Effect, deny
from ._grants import TIERS, Grant, Subject, decide_tool_call

__all__ = ["TIERS", "Decision", "Effect", "Grant", "Subject", "decide_tool_call", "deny"]
