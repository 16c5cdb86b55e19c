"""Composition: one object that owns the store, the sealer and the services, built from Settings."""

from __future__ import annotations

from dataclasses import dataclass

from bastion.api import Clock, IdSource, RandomIds, SystemClock
from bastion.secrets import LocalKeyProvider, Sealer, load_or_create_master_key, parse_master_key

from ._resources import ResourceService
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
        self.store = Store.open(settings.resolved_database_url, clock=clock, ids=ids)
        self.sealer = Sealer(LocalKeyProvider(master), ids)
        self.resources = ResourceService(self.store, self.sealer)

    def bootstrap(self) -> Bootstrap | None:
        """Create the system tenant and its first admin key, once; None if they exist."""
        with self.store.write() as conn:
            if self.store.has_system_tenant(conn):
                return None
            tenant = self.store.create_tenant(conn, SYSTEM_TENANT, system=True)
            _, token = self.store.create_key(conn, tenant, "first-admin", "admin")
        return Bootstrap(tenant=tenant.name, admin_key=token)

    def close(self) -> None:
        self.store.close()
