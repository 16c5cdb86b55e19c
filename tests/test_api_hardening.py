"""Hand-made hostile inputs and privilege edges of the API, on SQLite and PostgreSQL.

Forged continue tokens and bytes the database refuses are 400s; an idempotent replay answers
only a caller who could make the request; completions need an existing namespace; the OpenAPI
document and 405s say what the API answers; developers cannot raise the fields grants trust.
"""

from __future__ import annotations

import http.client as httplib
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI

from bastion.testing import serve_in_thread

from ._docs import agent
from ._hostile import RESOURCE_TOKENS, RUN_TOKENS, hostile_requests
from .conftest import Server, Tenant, unique

PROBLEM = "application/problem+json"


@pytest.fixture
def http(tenant: Tenant) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=tenant.server.url, headers={"Authorization": f"Bearer {tenant.admin_key}"}, timeout=30
    ) as client:
        yield client


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url}: {response.text}"
    )
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status and body["detail"] and "Traceback" not in response.text
    return body


# --- 15: hand-made inputs are 400s, never 500s -------------------------------------------


@pytest.mark.parametrize("case", sorted(RUN_TOKENS))
def test_a_forged_run_continue_token_is_a_400(http: httpx.Client, case: str) -> None:
    for path in ("/api/v1/namespaces/default/runs", "/api/v1/runs"):
        body = assert_problem(http.get(path, params={"continue": RUN_TOKENS[case]}), 400)
        assert body["field"] == "continue"


@pytest.mark.parametrize("case", sorted(RESOURCE_TOKENS))
def test_a_forged_resource_continue_token_is_a_400(http: httpx.Client, case: str) -> None:
    response = http.get("/api/v1/namespaces/default/agents", params={"continue": RESOURCE_TOKENS[case]})
    assert assert_problem(response, 400)["field"] == "continue"


def test_every_byte_the_database_refuses_is_a_400_and_writes_nothing(http: httpx.Client) -> None:
    for method, path, kwargs in hostile_requests():
        response = http.request(method, path, **kwargs)
        assert response.status_code == 400, (
            f"{method} {path} {kwargs}: {response.status_code} {response.text[:300]}"
        )
        assert response.headers["content-type"].startswith(PROBLEM), response.text
    assert http.get("/api/v1/namespaces/default/agents").json()["items"] == []
    assert http.get("/api/v1/runs").json()["items"] == []


def test_a_nul_in_the_path_names_the_path(http: httpx.Client) -> None:
    body = assert_problem(http.get("/api/v1/namespaces/default/agents/a%00b"), 400)
    assert body["field"] == "path" and "NUL" in body["detail"]
    body = assert_problem(http.get("/api/v1/runs", params={"agent": "x\x00"}), 400)
    assert body["field"] == "agent"


def test_an_unexpected_error_is_a_problem_500_and_the_connection_stays_open() -> None:
    """The crash guard: a bug is a problem+json 500, and the client's keep-alive connection survives."""

    from bastion.control.server._middleware import CrashGuard

    boom = FastAPI()

    @boom.get("/boom")
    def explode() -> None:  # pyright: ignore[reportUnusedFunction]
        raise RuntimeError("a bug")

    @boom.get("/fine")
    def fine() -> dict[str, str]:  # pyright: ignore[reportUnusedFunction]
        return {"ok": "yes"}

    boom.add_middleware(CrashGuard)
    with serve_in_thread(boom) as url:
        parts = urlsplit(url)
        conn = httplib.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
        try:
            conn.request("GET", "/boom")
            first = conn.getresponse()
            body = json.loads(first.read())
            assert first.status == 500 and first.getheader("content-type", "").startswith(PROBLEM)
            assert "a bug" not in json.dumps(body) and body["status"] == 500
            sock = conn.sock
            conn.request("GET", "/fine")  # on the same connection: it was not closed
            second = conn.getresponse()
            assert second.status == 200 and json.loads(second.read()) == {"ok": "yes"}
            assert conn.sock is sock
        finally:
            conn.close()


def test_hostile_requests_keep_the_connection_alive(tenant: Tenant) -> None:
    parts = urlsplit(tenant.server.url)
    conn = httplib.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    headers = {"Authorization": f"Bearer {tenant.admin_key}"}
    try:
        conn.request("GET", "/healthz")
        conn.getresponse().read()
        sock = conn.sock
        for token in [*RUN_TOKENS.values()]:
            conn.request("GET", f"/api/v1/runs?continue={token}", headers=headers)
            response = conn.getresponse()
            response.read()
            assert response.status == 400
            assert conn.sock is sock, "the server closed the keep-alive connection"
    finally:
        conn.close()


# --- 16: replay, completions, OpenAPI, Allow ---------------------------------------------


def test_an_idempotent_replay_checks_the_callers_role_first(tenant: Tenant, other_tenant: Tenant) -> None:
    policy: dict[str, Any] = {
        "apiVersion": "bastion/v1",
        "kind": "Policy",
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"rules": [{"id": "no-rm", "blockedPatterns": [{"pattern": "rm -rf"}]}]},
    }
    body: dict[str, Any] = {"documents": [policy, agent("a")]}
    key = unique("idem")
    url = tenant.server.url
    with httpx.Client(base_url=url, timeout=30) as client:
        first = client.post(
            "/api/v1/apply",
            json=body,
            headers={"Authorization": f"Bearer {tenant.admin_key}", "Idempotency-Key": key},
        )
        assert first.status_code == 200, first.text
        for role in ("viewer", "developer"):  # a Policy needs operator
            replay = client.post(
                "/api/v1/apply",
                json=body,
                headers={"Authorization": f"Bearer {tenant.key(role)}", "Idempotency-Key": key},
            )
            assert_problem(replay, 403)
            assert "Idempotent-Replayed" not in replay.headers
        again = client.post(
            "/api/v1/apply",
            json=body,
            headers={"Authorization": f"Bearer {tenant.key('operator')}", "Idempotency-Key": key},
        )
        assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
        # Another tenant with the same key gets its own apply, not the first tenant's answer.
        theirs = client.post(
            "/api/v1/apply",
            json=body,
            headers={"Authorization": f"Bearer {other_tenant.admin_key}", "Idempotency-Key": key},
        )
        assert theirs.status_code == 200 and "Idempotent-Replayed" not in theirs.headers
        uids = {i["resource"]["metadata"]["uid"] for i in first.json()["items"]}
        assert uids.isdisjoint({i["resource"]["metadata"]["uid"] for i in theirs.json()["items"]})


def test_completions_in_a_namespace_that_does_not_exist_create_no_run(
    tenant: Tenant, http: httpx.Client
) -> None:
    response = http.post(
        "/llm/v1/chat/completions",
        json={"model": "nowhere/some-policy", "messages": [{"role": "user", "content": "hi"}]},
    )
    body = assert_problem(response, 404)
    assert body["field"] == "model" and "nowhere" in body["detail"]
    assert body["error"]["type"] == "not_found_error"
    assert http.get("/api/v1/runs").json()["items"] == []


def test_openapi_declares_problem_json_errors(server: Server) -> None:
    spec = httpx.get(f"{server.url}/api/v1/openapi.json").json()
    assert "HTTPValidationError" not in json.dumps(spec)
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status in ("400", "401", "403", "404", "422", "500"):
                content = operation["responses"][status]["content"]
                assert list(content) == [PROBLEM], (method, path, status)
    assert spec["components"]["schemas"]["Problem"]["required"] == ["type", "title", "status", "detail"]


def test_a_405_lists_every_allowed_method(http: httpx.Client) -> None:
    response = http.patch("/api/v1/namespaces/default/agents/a", json={})
    assert_problem(response, 405)
    allowed = {m.strip() for m in response.headers["Allow"].split(",")}
    assert {"GET", "PUT", "DELETE"} <= allowed and "PATCH" not in allowed
    response = http.delete("/api/v1/namespaces/default/runs")
    assert_problem(response, 405)
    assert {m.strip() for m in response.headers["Allow"].split(",")} >= {"GET", "POST"}


# --- 17: developers cannot set the fields operators' grants trust ------------------------


def _apply(client: httpx.Client, key: str, *docs: dict[str, Any]) -> httpx.Response:
    return client.post(
        "/api/v1/apply", json={"documents": list(docs)}, headers={"Authorization": f"Bearer {key}"}
    )


def test_a_developer_cannot_raise_an_agents_tier(tenant: Tenant, other_tenant: Tenant) -> None:
    developer, operator = tenant.key("developer"), tenant.key("operator")
    with httpx.Client(base_url=tenant.server.url, timeout=30) as client:
        assert client.post(
            "/api/v1/namespaces",
            json={"name": "second"},
            headers={"Authorization": f"Bearer {tenant.admin_key}"},
        ).status_code in (200, 201)
        refused = _apply(client, developer, agent("a", tier="T4"))
        body = assert_problem(refused, 403)
        assert body["field"] == "spec.tier" and "operator" in body["hint"]
        assert _apply(client, developer, agent("a", tier="T0")).status_code == 200
        # PUT is held to the same rule.
        put = client.put(
            "/api/v1/namespaces/default/agents/a",
            json=agent("a", tier="T2"),
            headers={"Authorization": f"Bearer {developer}"},
        )
        assert assert_problem(put, 403)["field"] == "spec.tier"
        # An operator raises it; the developer may then keep (or lower) it, not raise it further.
        assert _apply(client, operator, agent("a", tier="T3")).status_code == 200
        assert _apply(client, developer, agent("a", tier="T3")).status_code == 200
        assert_problem(_apply(client, developer, agent("a", tier="T4")), 403)
        assert _apply(client, developer, agent("a", tier="T1")).status_code == 200
        assert_problem(_apply(client, developer, agent("a", tier="T3")), 403)
        # An operator's T3 for 'a' in one namespace is no licence for 'a' in another, or another tenant.
        assert _apply(client, operator, agent("a", tier="T3")).status_code == 200
        assert_problem(_apply(client, developer, agent("a", namespace="second", tier="T3")), 403)
        assert_problem(_apply(client, other_tenant.key("developer"), agent("a", tier="T3")), 403)
        got = client.get(
            "/api/v1/namespaces/default/agents/a", headers={"Authorization": f"Bearer {developer}"}
        )
        assert got.json()["spec"]["tier"] == "T3"


def test_operator_owned_labels_are_set_by_operators_only(tenant: Tenant) -> None:
    developer, operator = tenant.key("developer"), tenant.key("operator")
    owned = "grants.bastion.io/pci"
    with httpx.Client(base_url=tenant.server.url, timeout=30) as client:
        for labels in ({owned: "yes"}, {"bastion.io/team": "pay"}):
            body = assert_problem(_apply(client, developer, agent("a", labels=labels)), 403)
            assert body["field"] == f"metadata.labels.{next(iter(labels))}"
        # Other keys are the developer's own.
        assert (
            _apply(
                client, developer, agent("a", labels={"app": "x", "example.com/bastion.io": "y"})
            ).status_code
            == 200
        )
        assert _apply(client, operator, agent("a", labels={"app": "x", owned: "yes"})).status_code == 200
        # The developer may carry it unchanged, not change or remove it.
        assert _apply(client, developer, agent("a", labels={"app": "y", owned: "yes"})).status_code == 200
        assert_problem(_apply(client, developer, agent("a", labels={"app": "y", owned: "no"})), 403)
        assert_problem(_apply(client, developer, agent("a", labels={"app": "y"})), 403)
        stored = client.get(
            "/api/v1/namespaces/default/agents/a", headers={"Authorization": f"Bearer {developer}"}
        )
        assert stored.json()["metadata"]["labels"] == {"app": "y", owned: "yes"}


def test_only_an_operator_chooses_the_unisolated_process_sandbox(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    """``process`` shares the host's network: a developer's agent may not pick it for itself."""
    developer, operator = tenant.key("developer"), tenant.key("operator")
    with httpx.Client(base_url=tenant.server.url, timeout=30) as client:
        refused = _apply(client, developer, agent("a", sandbox="process"))
        body = assert_problem(refused, 403)
        assert body["field"] == "spec.sandbox" and "operator" in body["hint"]
        put = client.put(
            "/api/v1/namespaces/default/agents/a",
            json=agent("a", sandbox="process"),
            headers={"Authorization": f"Bearer {developer}"},
        )
        assert assert_problem(put, 403)["field"] == "spec.sandbox"
        assert _apply(client, developer, agent("a", sandbox="bwrap")).status_code == 200
        # An operator's choice may be kept by the developer, in that namespace and tenant only.
        assert _apply(client, operator, agent("a", sandbox="process")).status_code == 200
        assert _apply(client, developer, agent("a", sandbox="process")).status_code == 200
        assert_problem(_apply(client, other_tenant.key("developer"), agent("a", sandbox="process")), 403)
