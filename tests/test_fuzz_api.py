"""Schemathesis over the OpenAPI document of a live server: no generated request may get a 5xx.

Each operation gets a bounded number of generated requests, sent with a real tenant admin key
so they reach past authentication into validation and the store. Hand-made inputs generation
does not find (forged continue tokens, NUL and unpaired surrogates) are sent as well.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    FailureGroup,
    allow_header_conformance,
    content_type_conformance,
    status_code_conformance,
)

from ._hostile import hostile_requests
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
            # The status and content type are the ones the OpenAPI document declares.
            try:
                case.validate_response(
                    response,
                    checks=[status_code_conformance, content_type_conformance, allow_header_conformance],
                )
            except FailureGroup as failed:
                raise AssertionError(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: {failed}"
                ) from None

        try:
            probe()
        except AssertionError as exc:
            failures.append(str(exc).splitlines()[0])
    if failures:
        pytest.fail("\n".join(failures))


def test_hand_made_inputs_are_400s_on_one_kept_alive_connection(server: Server) -> None:
    """What generation does not find: forged continue tokens (naive, overflowing, NUL-bearing)
    and NUL or unpaired surrogates in paths, queries and bodies, sent over one connection.
    Each must be a 400 problem+json, and the server must keep the connection open."""
    with server.client() as system:
        key = system.create_tenant(unique("fuzz"))["adminKey"]["token"]
    requests = hostile_requests()
    assert len(requests) > 20
    streams: list[Any] = []  # the connection each answer came on (held, so ids are not reused)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30, limits=limits
    ) as client:
        failures: list[str] = []
        for method, path, kwargs in requests:
            response = client.request(method, path, **kwargs)
            if response.status_code != 400 or not response.headers["content-type"].startswith(
                "application/problem+json"
            ):
                failures.append(f"{method} {path} {kwargs}: {response.status_code} {response.text[:200]}")
            streams.append(response.extensions["network_stream"])
        assert client.get("/healthz").status_code == 200
    assert not failures, "\n".join(failures)
    assert len({id(s) for s in streams}) == 1, "the server dropped the keep-alive connection"
