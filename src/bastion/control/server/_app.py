"""The API server: FastAPI routes under /api/v1, health, readiness and metrics."""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import AsyncGenerator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from bastion.control._bastion import Bastion
from bastion.control._sandboxes import count_sandboxes
from bastion.errors import Forbidden, Unavailable
from bastion.execution.runs import RunState, runs
from bastion.execution.sandbox import BACKENDS, SandboxState

from . import (
    _routes_admin,
    _routes_approvals,
    _routes_llm,
    _routes_resources,
    _routes_runs,
    _routes_sandboxes,
    _routes_trust,
    _routes_whatif,
)
from ._deps import authenticated, bearer
from ._docs import install_docs
from ._inputs import InputGuard
from ._middleware import BodyLimit, CrashGuard, Metrics
from ._openapi import install_problem_openapi
from ._problems import ProblemResponse, install_problem_handlers, problem_response

log = logging.getLogger("bastion.server")


class RunStates(Collector):
    """``bastion_runs{state}``: runs by state, read from the database at scrape time, so every
    worker's runs count, wherever it runs. Labels are bounded: states only, no run ids."""

    def __init__(self, bastion: Bastion) -> None:
        self._bastion = bastion

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("bastion_runs", "Runs by state.", labels=["state"])
        try:
            with self._bastion.store.read() as conn:
                query = select(runs.c.state, func.count()).group_by(runs.c.state)
                counts: dict[str, int] = {str(row[0]): int(row[1]) for row in conn.execute(query)}
                takeovers = conn.execute(select(func.coalesce(func.sum(runs.c.takeovers), 0))).scalar()
        except Exception:  # a scrape must not fail because the database is away; /readyz says so
            log.warning("could not count runs for /metrics", exc_info=True)
            return
        for state in RunState:
            family.add_metric([str(state)], float(counts.get(str(state), 0)))
        yield family
        yield CounterMetricFamily(
            "bastion_lease_takeovers",
            "Attempts that took a run over from a worker whose lease expired.",
            value=float(takeovers or 0),
        )


class SandboxCounts(Collector):
    """``bastion_sandboxes{backend,state}``: every live worker's pooled sandboxes, from the
    ``sandboxes`` table at scrape time. Labels are bounded: backend and state names only."""

    def __init__(self, bastion: Bastion) -> None:
        self._bastion = bastion

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "bastion_sandboxes", "Pooled sandboxes by backend and state.", labels=["backend", "state"]
        )
        try:
            with self._bastion.store.read() as conn:
                counts = count_sandboxes(conn, self._bastion.clock.now())
        except Exception:
            log.warning("could not count sandboxes for /metrics", exc_info=True)
            return
        for backend in BACKENDS:
            for state in SandboxState:
                family.add_metric([backend, str(state)], float(counts.get((backend, str(state)), 0)))
        yield family


def _may_read_metrics(bastion: Bastion, credentials: HTTPAuthorizationCredentials | None) -> None:
    """The metrics token, or a key of the system tenant: the figures cover every tenant, and
    label model usage and spend by tenant and agent, which no tenant may read of another."""
    token = bastion.settings.metrics_token
    if (
        token is not None
        and credentials is not None
        and hmac.compare_digest(credentials.credentials.encode(), token.get_secret_value().encode())
    ):
        return
    principal = authenticated(bastion, credentials)
    if not principal.system:
        raise Forbidden(
            "/metrics covers every tenant: only keys of the system tenant may read it",
            hint="scrape with a system-tenant key, or set BASTION_METRICS_TOKEN and send it as the bearer",
        )


def create_app(bastion: Bastion) -> FastAPI:
    """The ASGI application over an opened Bastion (store migrated, master key loaded)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncGenerator[None]:
        yield

    app = FastAPI(
        title="Bastion",
        version="0.1.0",
        summary="Control plane of Bastion, an operating system for untrusted AI agents.",
        openapi_url="/api/v1/openapi.json",
        docs_url=None,  # install_docs serves the page with local assets
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.bastion = bastion
    registry = bastion.registry
    with contextlib.suppress(ValueError):  # already registered by an earlier app over this Bastion
        registry.register(RunStates(bastion))
    with contextlib.suppress(ValueError):
        registry.register(SandboxCounts(bastion))
    install_problem_handlers(app)
    install_problem_openapi(app)
    install_docs(app)
    app.include_router(_routes_admin.router)
    app.include_router(_routes_resources.router)
    app.include_router(_routes_runs.router)
    app.include_router(_routes_approvals.router)
    app.include_router(_routes_trust.router)
    app.include_router(_routes_llm.router)
    app.include_router(_routes_whatif.router)
    app.include_router(_routes_sandboxes.router)

    @app.get("/healthz", tags=["health"], summary="The process is alive")
    def healthz() -> dict[str, str]:  # pyright: ignore[reportUnusedFunction]
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="The database is reachable and migrated")
    def readyz(request: Request) -> Any:  # pyright: ignore[reportUnusedFunction]
        try:
            current, head = bastion.store.ping()
        except Exception as exc:  # any driver error means not ready
            log.warning("readiness check failed: %s", exc)
            return problem_response(
                Unavailable("the database is unreachable", hint="check BASTION_DATABASE_URL"), request
            )
        if current != head:
            return problem_response(
                Unavailable(
                    f"the database schema is at {current!r}, this server needs {head!r}",
                    hint="restart the server (it migrates on start) or run the migrations",
                ),
                request,
            )
        return {"status": "ready", "database": bastion.store.backend, "migration": current}

    @app.get(
        "/metrics",
        tags=["health"],
        summary="Prometheus metrics (the metrics token, or a key of the system tenant)",
        response_class=PlainTextResponse,
    )
    def metrics(  # pyright: ignore[reportUnusedFunction]
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> PlainTextResponse:
        _may_read_metrics(bastion, credentials)
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # Outermost last: the crash guard wraps everything; the input guard reads bodies BodyLimit bounded.
    app.add_middleware(InputGuard)
    app.add_middleware(BodyLimit, limit=bastion.settings.max_body_bytes)
    app.add_middleware(Metrics, registry=registry)
    app.add_middleware(CrashGuard)
    return app


__all__ = ["ProblemResponse", "create_app"]
