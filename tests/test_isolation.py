"""Tenant isolation (DESIGN invariant 6): another tenant's key cannot reach, or learn of, anything.

Every probe must answer exactly as if the resource did not exist: 404, not 403.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from bastion.errors import NotFound

from ._docs import agent, raw, secret
from .conftest import Tenant


@pytest.fixture
def victim(tenant: Tenant) -> Tenant:
    with tenant.client() as client:
        client.create_namespace("private")
        client.apply(
            raw(
                agent("crown-jewel", namespace="private", labels={"team": "a"}),
                secret("token", value="a-secret-value"),
            )
        )
    return tenant


@pytest.fixture
def attacker(other_tenant: Tenant) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=other_tenant.server.url, headers={"Authorization": f"Bearer {other_tenant.admin_key}"}
    ) as http:
        yield http


def same_as_missing(response: httpx.Response, missing: httpx.Response) -> None:
    assert response.status_code == missing.status_code == 404
    scrub = lambda body: {k: v for k, v in body.items() if k not in {"instance", "detail", "hint"}}  # noqa: E731
    assert scrub(response.json()) == scrub(missing.json())


def test_other_tenant_cannot_get_list_or_delete(victim: Tenant, attacker: httpx.Client) -> None:
    same_as_missing(
        attacker.get("/api/v1/namespaces/private/agents/crown-jewel"),
        attacker.get("/api/v1/namespaces/private/agents/never-existed"),
    )
    same_as_missing(
        attacker.get("/api/v1/namespaces/default/secrets/token"),
        attacker.get("/api/v1/namespaces/default/secrets/nope"),
    )
    same_as_missing(
        attacker.delete("/api/v1/namespaces/private/agents/crown-jewel"),
        attacker.delete("/api/v1/namespaces/private/agents/never-existed"),
    )
    assert attacker.get("/api/v1/agents").json()["items"] == []
    assert attacker.get("/api/v1/agents", params={"labelSelector": "team=a"}).json()["items"] == []
    assert attacker.get("/api/v1/secrets").json()["items"] == []
    assert [n["name"] for n in attacker.get("/api/v1/namespaces").json()["items"]] == ["default"]
    with victim.client() as client:
        assert client.get("Agent", "crown-jewel", namespace="private")["metadata"]["name"] == "crown-jewel"


def test_other_tenant_cannot_apply_into_or_diff_against(victim: Tenant, attacker: httpx.Client) -> None:
    apply = attacker.post(
        "/api/v1/apply", json={"documents": [agent("crown-jewel", namespace="private", tier="T4")]}
    )
    assert apply.status_code == 404
    assert apply.json()["field"] == "metadata.namespace"
    diff = attacker.post("/api/v1/diff", json={"documents": [agent("crown-jewel", namespace="default")]})
    assert diff.json()["items"][0]["action"] == "create"
    made = attacker.post("/api/v1/apply", json={"documents": [agent("crown-jewel")]})
    assert made.json()["items"][0]["action"] == "created"
    with victim.client() as client:
        jewel = client.get("Agent", "crown-jewel", namespace="private")
        assert jewel["spec"]["tier"] == "T0"
        assert jewel["metadata"]["generation"] == 1
        with pytest.raises(NotFound):
            client.get("Agent", "crown-jewel", namespace="default")


def test_cursors_do_not_cross_tenants(victim: Tenant, attacker: httpx.Client) -> None:
    with victim.client() as client:
        client.apply(raw(*[agent(f"p{i}", namespace="private") for i in range(3)]))
        _, cursor = client.list_page("Agent", namespace="private", limit=1)
    assert cursor
    page = attacker.get("/api/v1/namespaces/private/agents", params={"limit": 1, "continue": cursor})
    assert page.status_code == 200
    assert page.json()["items"] == []


def test_keys_and_tenants_stay_inside(victim: Tenant, attacker: httpx.Client) -> None:
    with victim.client() as client:
        victim_key = client.list_keys()[0]["id"]
    same_as_missing(attacker.delete(f"/api/v1/keys/{victim_key}"), attacker.delete("/api/v1/keys/nope"))
    assert victim_key not in attacker.get("/api/v1/keys").text
    assert attacker.get("/api/v1/tenants").status_code == 404
    assert attacker.post("/api/v1/tenants", json={"name": "evil"}).status_code == 404
    assert (
        attacker.post(f"/api/v1/tenants/{victim.name}/keys", json={"name": "x", "role": "admin"}).status_code
        == 404
    )
    with victim.client() as client:
        assert client.whoami()["tenant"] == victim.name


def test_idempotency_keys_are_per_tenant(victim: Tenant, attacker: httpx.Client) -> None:
    with victim.client() as client:
        client.apply(raw(agent("same")), idempotency_key="shared-key")
    response = attacker.post(
        "/api/v1/apply", json={"documents": [agent("same")]}, headers={"Idempotency-Key": "shared-key"}
    )
    assert response.status_code == 200
    assert response.headers.get("Idempotent-Replayed") is None
    assert response.json()["items"][0]["resource"]["metadata"]["uid"] != ""


PUBLIC_PATHS = {
    "/healthz",
    "/readyz",
    "/api/v1/openapi.json",
    "/api/v1/docs",
    "/docs/oauth2-redirect",
}


def test_every_route_but_health_demands_a_key(tenant: Tenant) -> None:
    """Walks the OpenAPI document so a route added later cannot forget authentication."""
    spec = httpx.get(f"{tenant.server.url}/api/v1/openapi.json").json()
    probed = 0
    for path, methods in spec["paths"].items():
        if path in PUBLIC_PATHS:
            continue
        concrete = path.replace("{namespace}", "default").replace("{name}", "x").replace("{tenant}", "x")
        concrete = concrete.replace("{kind}", "Agent").replace("{key_id}", "x")
        for method in methods:
            response = httpx.request(method.upper(), f"{tenant.server.url}{concrete}", json={})
            assert response.status_code == 401, (
                f"{method.upper()} {path} answered {response.status_code} without a key"
            )
            probed += 1
    assert probed > 30
