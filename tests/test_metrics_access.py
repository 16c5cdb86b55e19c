"""``/metrics`` covers every tenant (model tokens and spend by tenant and agent): no tenant's key
may read it, only the system tenant's keys or the scraper's metrics token."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from bastion.control import Bastion, create_app
from bastion.testing import serve_in_thread

from .conftest import Tenant

SCRAPER_TOKEN = "scrape-4b1d-9e0f-only-for-prometheus"


def _get(url: str, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.get(f"{url}/metrics", headers=headers, timeout=30)


def test_tenants_cannot_read_every_tenants_metrics(tenant: Tenant, other_tenant: Tenant) -> None:
    url = tenant.server.url
    # Every role of a tenant, its admin included, and another tenant's admin: refused.
    for key in (tenant.admin_key, tenant.key("operator"), tenant.key("viewer"), other_tenant.admin_key):
        refused = _get(url, key)
        assert refused.status_code == 403, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert "bastion_" not in refused.text
    for key in (None, "bst_not-a-key", tenant.admin_key + "x"):
        assert _get(url, key).status_code == 401
    allowed = _get(url, tenant.server.admin_key)
    assert allowed.status_code == 200 and "bastion_runs" in allowed.text


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_metrics_token_lets_a_scraper_in_and_nothing_else(make_bastion: Callable[..., Bastion]) -> None:
    bastion = make_bastion(metrics_token=SCRAPER_TOKEN)
    bastion.bootstrap()
    with serve_in_thread(create_app(bastion)) as url:
        assert _get(url, SCRAPER_TOKEN).status_code == 200
        assert _get(url, SCRAPER_TOKEN[:-1]).status_code == 401
        assert _get(url, SCRAPER_TOKEN + "x").status_code == 401
        # The token opens /metrics only: it is no API key.
        api = httpx.get(f"{url}/api/v1/namespaces", headers={"Authorization": f"Bearer {SCRAPER_TOKEN}"})
        assert api.status_code == 401
