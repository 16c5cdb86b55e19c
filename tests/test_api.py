"""The API over a real uvicorn server, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bastion.client import BastionClient
from bastion.errors import Conflict, Forbidden, IdempotencyKeyReused, InvalidManifest, Unauthorized

from ._docs import agent, grant, raw, secret
from .conftest import Server, Tenant, unique

PROBLEM = "application/problem+json"


@pytest.fixture
def http(tenant: Tenant) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=tenant.server.url, headers={"Authorization": f"Bearer {tenant.admin_key}"}
    ) as client:
        yield client


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["type"] == f"urn:bastion:problem:{slug}"
    assert body["status"] == status
    assert body["title"] and body["detail"]
    assert "Traceback" not in response.text
    return body


def test_health_readiness_and_metrics(server: Server) -> None:
    with httpx.Client(base_url=server.url) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz").json()
        assert ready["status"] == "ready"
        assert ready["database"] == ("sqlite" if server.backend == "sqlite" else "postgresql")
        http.get("/api/v1/namespaces/default/agents/some-unique-name-123")
        metrics = http.get("/metrics", headers={"Authorization": f"Bearer {server.admin_key}"}).text
    assert "bastion_http_requests_total" in metrics
    assert 'route="/api/v1/namespaces/{namespace}/agents/{name}"' in metrics
    assert "some-unique-name-123" not in metrics


def test_openapi_lists_every_kind(server: Server) -> None:
    spec = httpx.get(f"{server.url}/api/v1/openapi.json").json()
    for plural in ("agents", "tools", "toolgrants", "secrets", "modelpolicies", "memoryscopes", "policies"):
        assert f"/api/v1/namespaces/{{namespace}}/{plural}/{{name}}" in spec["paths"]
    assert "/api/v1/apply" in spec["paths"]


def test_no_key_bad_key_and_revoked_key_are_401(tenant: Tenant) -> None:
    url = tenant.server.url
    body = assert_problem(httpx.get(f"{url}/api/v1/namespaces"), 401, "unauthorized")
    assert body["field"] == "Authorization" and body["hint"]
    assert_problem(
        httpx.get(f"{url}/api/v1/namespaces", headers={"Authorization": "Bearer nonsense"}),
        401,
        "unauthorized",
    )
    forged = tenant.admin_key[:-4] + "AAAA"
    assert_problem(
        httpx.get(f"{url}/api/v1/namespaces", headers={"Authorization": f"Bearer {forged}"}),
        401,
        "unauthorized",
    )
    with tenant.client() as admin:
        key = admin.create_key("short-lived", "viewer")
        with BastionClient(url, key["token"]) as viewer:
            assert viewer.whoami()["role"] == "viewer"
            admin.revoke_key(key["id"])
            with pytest.raises(Unauthorized):
                viewer.whoami()


@pytest.mark.parametrize(
    ("role", "kind_doc", "allowed"),
    [
        ("viewer", agent("a"), False),
        ("developer", agent("a"), True),
        ("developer", grant("g", "kb.search"), False),
        ("developer", secret("s", k="v"), False),
        ("operator", grant("g", "kb.search"), True),
        ("operator", secret("s", k="v"), True),
    ],
)
def test_roles_decide_who_writes_what(
    tenant: Tenant, role: str, kind_doc: dict[str, Any], allowed: bool
) -> None:
    with tenant.client(role) as client:
        if allowed:
            assert client.apply(raw(kind_doc))[0]["action"] == "created"
            client.delete(kind_doc["kind"], kind_doc["metadata"]["name"])
        else:
            with pytest.raises(Forbidden):
                client.apply(raw(kind_doc))
        assert client.list(kind_doc["kind"]) is not None


def test_a_forbidden_document_stops_the_whole_apply(tenant: Tenant) -> None:
    with tenant.client("developer") as dev:
        with pytest.raises(Forbidden):
            dev.apply(raw(agent("a"), grant("g", "x")))
        assert list(dev.list("Agent")) == []


def test_only_admins_manage_keys(tenant: Tenant) -> None:
    for role in ("viewer", "developer", "operator"):
        with tenant.client(role) as client:
            with pytest.raises(Forbidden):
                client.create_key("x", "admin")
            with pytest.raises(Forbidden):
                client.list_keys()


def test_keys_are_stored_hashed_and_shown_once(tenant: Tenant) -> None:
    with tenant.client() as admin:
        created = admin.create_key("ci", "developer")
        listed = admin.list_keys()
    assert created["token"].startswith("bst_")
    assert all("token" not in k for k in listed)
    assert created["token"] not in json.dumps(listed)


def test_apply_accepts_yaml_bodies(http: httpx.Client) -> None:
    text = "apiVersion: bastion/v1\nkind: Agent\nmetadata: {name: y}\nspec: {runtime: python, entrypoint: 'a:b'}\n"
    response = http.post("/api/v1/apply", content=text, headers={"Content-Type": "application/yaml"})
    assert response.status_code == 200, response.text
    assert response.json()["items"][0]["action"] == "created"


def test_validation_errors_name_source_document_field_and_fix(http: httpx.Client) -> None:
    body = {
        "documents": [agent("ok"), agent("ok2", limts={})],
        "sources": ["a.yaml, document 1", "a.yaml, document 2"],
    }
    problem = assert_problem(http.post("/api/v1/apply", json=body), 422, "invalid-manifest")
    [error] = problem["errors"]
    assert error == {
        "message": "unknown field 'limts'",
        "field": "spec.limts",
        "hint": "remove it; did you mean 'limits'?",
        "document": 1,
        "source": "a.yaml, document 2",
    }
    assert http.get("/api/v1/namespaces/default/agents/ok").status_code == 404


@pytest.mark.parametrize(
    ("content", "content_type", "status", "slug"),
    [
        (b"apiVersion: [unclosed", "application/yaml", 422, "invalid-manifest"),
        (b"{not json", "application/json", 422, "invalid-manifest"),
        (b"[]", "application/json", 422, "invalid-manifest"),
        (b'{"documents": [], "extra": 1}', "application/json", 422, "invalid-manifest"),
        (b'{"documents": []}', "application/json", 422, "invalid-manifest"),
        (b"\xff\xfe\x00", "application/json", 400, "bad-request"),
        (b"<xml/>", "application/xml", 415, "unsupported-media-type"),
    ],
)
def test_malformed_bodies_are_clear_errors(
    http: httpx.Client, content: bytes, content_type: str, status: int, slug: str
) -> None:
    response = http.post("/api/v1/apply", content=content, headers={"Content-Type": content_type})
    body = assert_problem(response, status, slug)
    assert body.get("hint") or body.get("errors")


@pytest.mark.parametrize(
    "bad",
    [
        {"apiVersion": "bastion/v9", "kind": "Agent", "metadata": {"name": "x"}, "spec": {}},
        {"apiVersion": "bastion/v1", "kind": "Robot", "metadata": {"name": "x"}, "spec": {}},
        agent("x", maxTurns="many"),
        agent("x", bogus=True),
        agent("ünïcode"),
        agent("ｆｕｌｌ"),
        agent("zero\u200bwidth"),
        agent("x" * 64),
    ],
)
def test_a_valid_document_after_an_invalid_one_is_not_written(
    http: httpx.Client, bad: dict[str, Any]
) -> None:
    body = {"documents": [bad, agent("innocent")]}
    problem = assert_problem(http.post("/api/v1/apply", json=body), 422, "invalid-manifest")
    assert problem["errors"][0]["document"] == 0
    assert problem["errors"][0]["field"]
    assert http.get("/api/v1/namespaces/default/agents/innocent").status_code == 404


def test_duplicate_names_in_one_request_are_refused(http: httpx.Client) -> None:
    problem = assert_problem(
        http.post("/api/v1/apply", json={"documents": [agent("d"), agent("d")]}), 422, "invalid-manifest"
    )
    assert problem["errors"][0]["document"] == 1
    assert http.get("/api/v1/namespaces/default/agents/d").status_code == 404


def test_oversized_bodies_are_413_whether_declared_or_streamed(http: httpx.Client) -> None:
    big = json.dumps({"documents": [agent("big", instructions="x" * 300_000)]}).encode()
    assert_problem(
        http.post("/api/v1/apply", content=big, headers={"Content-Type": "application/json"}),
        413,
        "payload-too-large",
    )

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 16_384):
            yield big[i : i + 16_384]

    response = http.post("/api/v1/apply", content=chunks(), headers={"Content-Type": "application/json"})
    assert_problem(response, 413, "payload-too-large")
    assert http.get("/api/v1/namespaces/default/agents/big").status_code == 404


def test_unknown_routes_and_methods_are_problems(http: httpx.Client) -> None:
    assert_problem(http.get("/api/v1/nothing-here"), 404, "not-found")
    assert_problem(http.patch("/api/v1/apply"), 405, "method-not-allowed")


def test_idempotency_key_replays_the_first_response(tenant: Tenant, http: httpx.Client) -> None:
    key = unique("idem")
    first = http.post("/api/v1/keys", json={"name": "ci", "role": "viewer"}, headers={"Idempotency-Key": key})
    again = http.post("/api/v1/keys", json={"role": "viewer", "name": "ci"}, headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    with tenant.client() as admin:
        assert [k["name"] for k in admin.list_keys()].count("ci") == 1
    other = http.post("/api/v1/keys", json={"name": "ci", "role": "admin"}, headers={"Idempotency-Key": key})
    assert_problem(other, 422, "idempotency-key-reused")


def test_idempotency_key_on_apply(tenant: Tenant) -> None:
    with tenant.client() as client:
        first = client.apply(raw(agent("i")), idempotency_key="apply-1")
        client.apply(raw(agent("i", tier="T2")))
        replay = client.apply(raw(agent("i")), idempotency_key="apply-1")
        assert replay == first
        with pytest.raises(IdempotencyKeyReused):
            client.apply(raw(agent("i", tier="T3")), idempotency_key="apply-1")
        assert client.get("Agent", "i")["spec"]["tier"] == "T2"


def test_stale_resource_version_is_409(tenant: Tenant) -> None:
    with tenant.client() as client:
        created = client.apply(raw(agent("v")))[0]["resource"]
        client.apply(raw(agent("v", tier="T1")))
        stale = agent("v", tier="T2")
        stale["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]
        with pytest.raises(Conflict) as caught:
            client.apply(raw(stale))
        assert caught.value.field == "metadata.resourceVersion"


def test_generation_bumps_only_on_spec_change(tenant: Tenant) -> None:
    with tenant.client() as client:
        client.apply(raw(agent("g")))
        client.apply(raw(agent("g", labels={"a": "b"})))
        meta = client.get("Agent", "g")["metadata"]
        assert (meta["generation"], meta["resourceVersion"]) == (1, "2")
        client.apply(raw(agent("g", labels={"a": "b"}, tier="T1")))
        meta = client.get("Agent", "g")["metadata"]
        assert (meta["generation"], meta["resourceVersion"]) == (2, "3")


def test_diff_returns_the_patch_and_changes_nothing(tenant: Tenant) -> None:
    with tenant.client() as client:
        [plan] = client.diff(raw(agent("p")))
        assert plan["action"] == "create"
        client.apply(raw(agent("p")))
        [plan] = client.diff(raw(agent("p", tier="T3", labels={"x": "y"})))
        assert plan["action"] == "update"
        assert {"op": "replace", "path": "/spec/tier", "value": "T3"} in plan["patch"]
        assert {"op": "add", "path": "/metadata/labels/x", "value": "y"} in plan["patch"]
        assert client.get("Agent", "p")["spec"]["tier"] == "T0"
        [plan] = client.diff(raw(agent("p")))
        assert plan == {
            "kind": "Agent",
            "namespace": "default",
            "name": "p",
            "action": "unchanged",
            "patch": [],
        }


def test_secret_values_never_come_back(tenant: Tenant, http: httpx.Client) -> None:
    value = "hunter2-but-much-longer-and-unique"
    seen: list[str] = []
    seen.append(http.post("/api/v1/apply", json={"documents": [secret("db", password=value)]}).text)
    seen.append(http.get("/api/v1/namespaces/default/secrets/db").text)
    seen.append(http.get("/api/v1/namespaces/default/secrets").text)
    seen.append(http.get("/api/v1/secrets").text)
    seen.append(http.post("/api/v1/diff", json={"documents": [secret("db", password=value + "x")]}).text)
    seen.append(http.post("/api/v1/diff", json={"documents": [secret("db", password=value)]}).text)
    for text in seen:
        assert value not in text
    got = http.get("/api/v1/namespaces/default/secrets/db").json()
    assert got["spec"]["stringData"] == {"password": "[REDACTED]"}
    changed = http.post("/api/v1/diff", json={"documents": [secret("db", password="other")]}).json()["items"][
        0
    ]
    assert changed["action"] == "update"


def test_put_creates_and_checks_the_path(http: httpx.Client) -> None:
    created = http.put("/api/v1/namespaces/default/agents/put-me", json=agent("put-me"))
    assert created.status_code == 200 and created.json()["action"] == "created"
    body = assert_problem(
        http.put("/api/v1/namespaces/default/agents/other", json=agent("put-me")), 422, "invalid-manifest"
    )
    assert body["field"] == "metadata.name"
    assert_problem(
        http.put("/api/v1/namespaces/default/tools/put-me", json=agent("put-me")), 422, "invalid-manifest"
    )


def test_namespaces_labels_and_pages_over_http(tenant: Tenant) -> None:
    with tenant.client("operator") as client:
        client.create_namespace("team-a")
        client.apply(raw(*[agent(f"n{i}", namespace="team-a", labels={"i": str(i % 3)}) for i in range(7)]))
        names = [
            a["metadata"]["name"]
            for a in client.list("Agent", namespace="team-a", selector="i=1", page_size=1)
        ]
        assert names == ["n1", "n4"]
        items, cont = client.list_page("Agent", namespace=None, limit=5)
        assert len(items) == 5 and cont
        with pytest.raises(InvalidManifest):
            client.create_namespace("Bad_NS")
        namespaces = {n["name"]: n["resources"] for n in client.list_namespaces()}
        assert namespaces == {"default": 0, "team-a": 7}
        with pytest.raises(Conflict):
            client.delete_namespace("team-a")


def test_bad_label_selector_is_a_400(http: httpx.Client) -> None:
    body = assert_problem(http.get("/api/v1/agents", params={"labelSelector": "a in b"}), 400, "bad-request")
    assert body["field"] == "labelSelector"
