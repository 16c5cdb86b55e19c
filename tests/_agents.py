"""Agents and waiting helpers for run tests."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Collection
from typing import Any

from bastion.client import BastionClient

FINISHED = {"Succeeded", "Failed", "Cancelled", "Revoked"}


def code_agent(
    name: str,
    source: str,
    *,
    tools: list[str] | None = None,
    limits: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "runtime": "python",
        "entrypoint": "agent:main",
        "source": textwrap.dedent(source),
        "tools": tools or [],
    }
    if limits:
        spec["limits"] = limits
    meta: dict[str, Any] = {"name": name}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "bastion/v1", "kind": "Agent", "metadata": meta, "spec": spec}


def builtin_tool(name: str, builtin: str | None = None, **impl: Any) -> dict[str, Any]:
    return {
        "apiVersion": "bastion/v1",
        "kind": "Tool",
        "metadata": {"name": name},
        "spec": {"description": name, "implementation": {"type": "builtin", "name": builtin or name, **impl}},
    }


def http_tool(
    name: str,
    url: str,
    *,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    secrets: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "bastion/v1",
        "kind": "Tool",
        "metadata": {"name": name},
        "spec": {
            "description": name,
            "implementation": {"type": "http", "url": url, "method": method, "headers": headers or {}},
            "secrets": secrets or [],
        },
    }


def grant_for(agent: str, *tools: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "bastion/v1",
        "kind": "ToolGrant",
        "metadata": {"name": f"{agent}-grant"},
        "spec": {"subjects": {"agents": [agent]}, "tools": list(tools), **spec},
    }


def wait_finished(
    client: BastionClient,
    run_id: str,
    timeout: float = 60.0,
    *,
    namespace: str = "default",
    states: Collection[str] = FINISHED,
) -> dict[str, Any]:
    """The run once it is in one of ``states`` (finished, by default)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.get_run(run_id, namespace=namespace)
        if run["state"] in states:
            return run
        time.sleep(0.05)
    run = client.get_run(run_id, namespace=namespace)
    raise AssertionError(f"run {run_id} did not reach {sorted(states)} in {timeout} s: {run}")


def in_namespace(namespace: str, *docs: dict[str, Any]) -> list[dict[str, Any]]:
    """``docs`` with ``metadata.namespace`` set."""
    return [{**d, "metadata": {**d["metadata"], "namespace": namespace}} for d in docs]
