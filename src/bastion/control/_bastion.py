"""Composition: one object that owns the store, the sealer and the services, built from Settings."""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from bastion.api import Clock, IdSource, RandomIds, SystemClock
from bastion.execution.gateway import Gateway, GatewayMetrics
from bastion.execution.llm import BudgetLedger, Models
from bastion.execution.runs import RunStore, TrustStore, Worker, WorkerConfig
from bastion.execution.sandbox import ProcessBackend
from bastion.execution.tools import builtin_tools
from bastion.observe import Telemetry
from bastion.observe.journal import Journal
from bastion.secrets import LocalKeyProvider, Sealer, load_or_create_master_key, parse_master_key

from ._completions import CompletionService
from ._records import RecordService
from ._resources import ResourceService, StoreResourceReader
from .settings import Settings
from .store import Store

SYSTEM_TENANT = "system"


@dataclass(frozen=True, kw_only=True)
class Bootstrap:
    """What the first start created; ``admin_key`` is shown once and never stored in clear."""

    tenant: str
    admin_key: str


class Bastion:
    def __init__(
        self, settings: Settings, *, clock: Clock | None = None, ids: IdSource | None = None
    ) -> None:
        self.settings = settings
        clock = clock or SystemClock()
        ids = ids or RandomIds()
        settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        if settings.master_key is not None:
            master = parse_master_key(settings.master_key.get_secret_value(), origin="BASTION_MASTER_KEY")
        else:
            master = load_or_create_master_key(settings.resolved_master_key_file, ids)
        self.clock, self.ids = clock, ids
        self.store = Store.open(settings.resolved_database_url, clock=clock, ids=ids)
        self.sealer = Sealer(LocalKeyProvider(master), ids)
        self.resources = ResourceService(self.store, self.sealer)
        self.registry = CollectorRegistry()
        self.runs = RunStore(self.store, clock=clock, ids=ids)
        self.trust = TrustStore()
        self.journal = Journal(self.store, clock)
        self.telemetry = Telemetry(otlp_endpoint=settings.otlp_endpoint, console=settings.trace_console)
        self.models = Models.build(BudgetLedger(self.store, clock), self.registry)
        self.gateway = Gateway(
            self.store,
            self.journal,
            StoreResourceReader(self.store, self.resources),
            tools=builtin_tools(),
            clock=clock,
            ids=ids,
            metrics=GatewayMetrics(self.registry),
            telemetry=self.telemetry,
            models=self.models,
        )
        self.records = RecordService(
            self.store, self.sealer, self.journal, StoreResourceReader(self.store, self.resources)
        )
        self.completions = CompletionService(
            self.store, self.runs, self.gateway, clock, ids, settings.resolved_workspace_dir
        )
        self._backend: ProcessBackend | None = None

    def worker(self, *, owner: str | None = None) -> Worker:
        """A worker over this Bastion's store, with the configured sandbox backend."""
        if self._backend is None:
            self._backend = ProcessBackend(sdk_cache=self.settings.home / "sdk")
        config = WorkerConfig(
            owner=owner or f"{socket.gethostname()}:{os.getpid()}:{self.ids.token(4)}",
            workspace_root=self.settings.resolved_workspace_dir,
            lease_seconds=self.settings.lease_seconds,
            poll_seconds=self.settings.poll_seconds,
            concurrency=self.settings.worker_concurrency,
        )
        return Worker(self.runs, self.gateway, self._backend, config, telemetry=self.telemetry)

    def start_worker(self) -> tuple[threading.Thread, threading.Event]:
        """Run one worker in a background thread (what ``bastion up`` does); set the event to stop it."""
        stop = threading.Event()
        worker = self.worker()
        thread = threading.Thread(target=worker.run_until, args=(stop,), name="bastion-worker", daemon=True)
        thread.start()
        return thread, stop

    def bootstrap(self) -> Bootstrap | None:
        """Create the system tenant and its first admin key, once; None if they exist."""
        with self.store.write() as conn:
            if self.store.has_system_tenant(conn):
                return None
            tenant = self.store.create_tenant(conn, SYSTEM_TENANT, system=True)
            _, token = self.store.create_key(conn, tenant, "first-admin", "admin")
        return Bootstrap(tenant=tenant.name, admin_key=token)

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
        self.models.router.close()
        self.telemetry.shutdown()
        self.store.close()
