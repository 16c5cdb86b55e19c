"""The kinds' names and URL plurals, without their models: what the client and the CLI's client
commands need to build a URL or name a kind, importable without pydantic."""

from __future__ import annotations

KIND_PLURALS: dict[str, str] = {
    "Agent": "agents",
    "Tool": "tools",
    "ToolGrant": "toolgrants",
    "Secret": "secrets",
    "ModelPolicy": "modelpolicies",
    "MemoryScope": "memoryscopes",
    "Policy": "policies",
}
"""Every kind's ``kind`` name and URL plural (``_kinds`` checks its models against this)."""

_ALIASES: dict[str, str] = {
    alias.lower(): kind for kind, plural in KIND_PLURALS.items() for alias in (kind, plural)
}


def kind_named(text: str) -> str | None:
    """The ``kind`` name a user's word means (name, plural or lowercase name), or None."""
    return _ALIASES.get(text.lower())
