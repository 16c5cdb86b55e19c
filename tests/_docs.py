"""Manifest builders for tests."""

from __future__ import annotations

from typing import Any

from bastion.api import RawDocument


def agent(
    name: str, *, namespace: str = "default", labels: dict[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"runtime": "python", "entrypoint": "agent:main", **spec}
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "bastion/v1", "kind": "Agent", "metadata": meta, "spec": body}


def secret(name: str, **values: str) -> dict[str, Any]:
    return {
        "apiVersion": "bastion/v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "spec": {"stringData": values},
    }


def grant(name: str, *tools: str) -> dict[str, Any]:
    return {
        "apiVersion": "bastion/v1",
        "kind": "ToolGrant",
        "metadata": {"name": name},
        "spec": {"subjects": {"agents": ["a"]}, "tools": list(tools)},
    }


def raw(*bodies: Any) -> list[RawDocument]:
    return [RawDocument(body=b, source=f"test.yaml, document {i + 1}") for i, b in enumerate(bodies)]
