"""Builders for policy tests: manifests as the store holds them, and calls to decide."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from bastion.policy import CallContext, Counters, Subject, ToolInfo

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def grant(name: str, tools: list[str], agents: list[str] | None = None, **spec: Any) -> dict[str, Any]:
    subjects = spec.pop("subjects", {"agents": agents or ["bot"]})
    return {
        "apiVersion": "bastion/v1",
        "kind": "ToolGrant",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"subjects": subjects, "tools": tools, **spec},
    }


def policy(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "bastion/v1",
        "kind": "Policy",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


def blocking(*patterns: str | Mapping[str, Any], name: str = "guard", action: str = "deny") -> dict[str, Any]:
    """A Policy with one rule blocking ``patterns`` (strings are substrings)."""
    items = [{"match": "substring", "pattern": p} if isinstance(p, str) else dict(p) for p in patterns]
    return policy(name, rules=[{"id": "block", "action": action, "blockedPatterns": items}])


BOT = Subject(name="bot", tools=("kb.search", "http.fetch", "fs.read"), tier="T1")


def call(
    args: Mapping[str, Any],
    *,
    tool: str = "kb.search",
    subject: Subject = BOT,
    counters: Counters | None = None,
    now: datetime = NOW,
    builtin: str | None = None,
) -> CallContext:
    return CallContext(
        subject=subject,
        tool=ToolInfo(name=tool, builtin=builtin),
        args=args,
        now=now,
        counters=counters or Counters(),
    )
