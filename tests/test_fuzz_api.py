"""Schemathesis over the OpenAPI document of a live server: no generated request may get a 5xx.

Each operation gets a bounded number of generated requests, sent with a real tenant admin key
so they reach past authentication into validation and the store.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from .conftest import Server, unique

EXAMPLES_PER_OPERATION = 25


def _operations(server: Server) -> list[Any]:
    schema = schemathesis.openapi.from_url(f"{server.url}/api/v1/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def test_no_generated_request_gets_a_server_error(server: Server) -> None:
    with server.client() as system:
        key = system.create_tenant(unique("fuzz"))["adminKey"]["token"]
    operations = _operations(server)
    assert len(operations) > 30
    failures: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def probe(case: Any) -> None:
            response = case.call(headers={"Authorization": f"Bearer {key}"})
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
            )
            if response.status_code >= 400:
                content_type = response.headers.get("content-type", [""])[0]
                assert content_type.startswith("application/problem+json"), response.text[:200]

        try:
            probe()
        except AssertionError as exc:
            failures.append(str(exc).splitlines()[0])
    if failures:
        pytest.fail("\n".join(failures))
