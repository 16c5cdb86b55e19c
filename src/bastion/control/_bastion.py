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
from bastion.execution.sandbox import (
    BackendReport,
    ImageCache,
    PoolKey,
    SandboxBackend,
    WarmPool,
    default_backend,
    open_backend,
    pool_dir_name,
    probe_backends,
    remove_stale_pool_dirs,
    reports_for_default,
)
from bastion.execution.tools import builtin_tools
from bastion.observe import Telemetry
from bastion.observe.journal import Journal
from bastion.policy._evaluator import Evaluator
from bastion.secrets import LocalKeyProvider, Sealer, load_or_create_master_key, parse_master_key

from ._completions import CompletionService
from ._records import RecordService
from ._resources import ResourceService, StoreResourceReader
from ._sandboxes import SandboxRegistry
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
        self.evaluator = Evaluator(seconds=settings.evaluation_seconds)
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
        self.images = ImageCache(
            settings.resolved_image_dir,
            timeout_seconds=settings.image_build_timeout_seconds,
            wheelhouse=settings.image_wheelhouse,
        )
        self._reports: list[BackendReport] | None = None
        self._default: str | None = None
        self._pools: list[WarmPool] = []
        self._registries: list[SandboxRegistry] = []
        self._lock = threading.Lock()

    def backend_reports(self) -> list[BackendReport]:
        """Which sandbox backends work on this machine (probed once)."""
        with self._lock:
            if self._reports is None:
                self._reports = probe_backends(state_dir=self.settings.sandbox_state_dir)
            return self._reports

    @property
    def default_backend(self) -> str:
        """The backend of agents that name none: ``BASTION_SANDBOX``, with ``auto`` resolved."""
        if self.settings.sandbox != "auto":
            return self.settings.sandbox
        with self._lock:
            if self._default is None:
                # bwrap decides the default; gVisor is probed only as root when bwrap does not work
                # (never `process` as root: default_backend raises, the run fails with the fix).
                reports = self._reports or reports_for_default(state_dir=self.settings.sandbox_state_dir)
                self._default = default_backend(reports)
            return self._default

    def open_backend(self, name: str) -> SandboxBackend:
        """Open a sandbox backend by name (raises SandboxError with the reason and the fix)."""
        return open_backend(name, state_dir=self.settings.sandbox_state_dir)

    def worker(self, *, owner: str | None = None) -> Worker:
        """A worker over this Bastion's store, with its own warm pool on the configured backend."""
        settings = self.settings
        token = self.ids.token(4)
        owner = owner or f"{socket.gethostname()}:{os.getpid()}:{token}"
        # Chosen when first needed, off the path to the first claim: ``auto`` probes every backend.
        config = WorkerConfig(
            owner=owner,
            workspace_root=settings.resolved_workspace_dir,
            lease_seconds=settings.lease_seconds,
            poll_seconds=settings.poll_seconds,
            concurrency=settings.worker_concurrency,
            default_backend=lambda: self.default_backend,
        )
        pools_dir = settings.resolved_workspace_dir / ".pool"
        remove_stale_pool_dirs(pools_dir)
        registry = SandboxRegistry(self.store, owner, self.clock)
        pool = WarmPool(
            open_backend=self.open_backend,
            workspace_dir=pools_dir / pool_dir_name(os.getpid(), token),
            clock=self.clock,
            ids=self.ids,
            size=settings.pool_size,
            memory_budget_mib=settings.pool_memory_mib,
            default_keys=lambda: [PoolKey(backend=self.default_backend, limits=config.sandbox_defaults)],
            idle_seconds=settings.pool_idle_seconds,
            on_change=registry.report,
        )
        with self._lock:
            self._pools.append(pool)
            self._registries.append(registry)
        return Worker(self.runs, self.gateway, pool, config, images=self.images, telemetry=self.telemetry)

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
        self.evaluator.close()
        self.models.router.close()
        for pool in self._pools:
            pool.close()
        for registry in self._registries:
            registry.close()
        self.telemetry.shutdown()
        self.store.close()
