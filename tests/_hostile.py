"""Hand-made hostile inputs that used to reach SQL (or a JSON encoder) and come back as 500s
(shared by the API hardening tests and the fuzz test)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from ._docs import agent


def _token(data: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _resource_token(parts: list[str], kind: str | None, namespace: str | None) -> str:
    """A continue token for a resource listing, with the right scope (as an attacker can compute it)."""
    scope = hashlib.sha256(json.dumps([kind, namespace, []]).encode()).hexdigest()[:16]
    return _token([scope, *parts])


RUN_TOKENS = {
    "naive time": _token(["2026-01-01T00:00:00", "00000000-0000-0000-0000-000000000000"]),
    "overflowing time": _token(["9999-12-31T23:59:59-23:59", "x"]),
    "underflowing time": _token(["0001-01-01T00:00:00+23:59", "x"]),
    "NUL in the id": _token(["2026-01-01T00:00:00+00:00", "a\u0000b"]),
    "surrogate in the id": base64.urlsafe_b64encode(b'["2026-01-01T00:00:00+00:00", "\\ud800"]').decode(),
    "not a pair": _token({"a": 1}),
}
RESOURCE_TOKENS = {
    "NUL in the name": _resource_token(["default", "a\u0000", "Agent"], "Agent", "default"),
    "surrogate in the name": _resource_token(["default", "\ud800", "Agent"], "Agent", "default"),
    "non-ASCII namespace": _resource_token(["dé", "a", "Agent"], "Agent", "default"),
}


def hostile_requests(namespace: str = "default") -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, httpx kwargs) of every hand-made input that used to reach SQL and 500."""
    found: list[tuple[str, str, dict[str, Any]]] = []
    for token in RUN_TOKENS.values():
        found.append(("GET", f"/api/v1/namespaces/{namespace}/runs", {"params": {"continue": token}}))
        found.append(("GET", "/api/v1/runs", {"params": {"continue": token}}))
    for token in RESOURCE_TOKENS.values():
        found.append(("GET", f"/api/v1/namespaces/{namespace}/agents", {"params": {"continue": token}}))
    found += [
        ("GET", f"/api/v1/namespaces/{namespace}/agents/a%00b", {}),
        ("GET", "/api/v1/namespaces/de%00fault/runs", {}),
        ("DELETE", f"/api/v1/namespaces/{namespace}/agents/a%00b", {}),
        ("GET", f"/api/v1/namespaces/{namespace}/runs", {"params": {"agent": "a\x00b"}}),
        ("GET", f"/api/v1/namespaces/{namespace}/agents", {"params": {"labelSelector": "app=a\x00"}}),
        ("GET", f"/api/v1/namespaces/{namespace}/runs", {"params": {"continue": "\x00"}}),
        (
            "POST",
            "/api/v1/namespaces",
            {"content": b'{"name": "n\\u0000s"}', "headers": {"content-type": "application/json"}},
        ),
        (
            "POST",
            "/api/v1/apply",
            {"json": {"documents": [agent("a", namespace=namespace, labels={"app": "x\u0000"})]}},
        ),
        (
            "POST",
            "/api/v1/apply",
            {
                "content": json.dumps({"documents": [agent("a", namespace=namespace)]})
                .replace('"runtime"', '"\\ud800": 1, "runtime"')
                .encode(),
                "headers": {"content-type": "application/json"},
            },
        ),
        (
            "POST",
            "/api/v1/apply",
            {
                "content": f"apiVersion: bastion/v1\nkind: Agent\nmetadata: {{name: a, namespace: {namespace}}}\n"
                'spec: {runtime: python, entrypoint: "agent:main", source: "x\\0y"}\n',
                "headers": {"content-type": "application/yaml"},
            },
        ),
        (
            "PUT",
            f"/api/v1/namespaces/{namespace}/agents/a",
            {"json": agent("a", namespace=namespace, source="print('\u0000')")},
        ),
        (
            "POST",
            f"/api/v1/namespaces/{namespace}/runs",
            {"json": {"agent": "a", "input": {"k\u0000": 1}}},
        ),
        (
            "POST",
            "/llm/v1/chat/completions",
            {"json": {"model": "p", "messages": [{"role": "user", "content": "\u0000"}]}},
        ),
    ]
    # Not JSON, though Python's parser reads them: NaN, the infinities, numbers beyond a float.
    runs = f"/api/v1/namespaces/{namespace}/runs"
    for body in (
        '{"agent": "a", "input": {"x": NaN}}',
        '{"agent": "a", "input": -Infinity}',
        '{"agent": "a", "input": [1e999]}',
        '{"agent": "a", "input": {"n": ' + "9" * 400 + ".5}}",
    ):
        found.append(("POST", runs, {"content": body, "headers": {"content-type": "application/json"}}))
    for path, body in (
        (f"{runs}/00000000-0000-0000-0000-000000000000/fork", '{"seq": 1e999}'),
        ("/api/v1/apply", '{"documents": [{"kind": "Agent", "spec": {"limits": {"cpuSeconds": Infinity}}}]}'),
        ("/api/v1/namespaces", '{"name": NaN}'),
        ("/llm/v1/chat/completions", '{"model": "p", "messages": [], "temperature": NaN}'),
    ):
        found.append(("POST", path, {"content": body, "headers": {"content-type": "application/json"}}))
    return found
