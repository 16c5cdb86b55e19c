"""Every setting Bastion reads, from flags or ``BASTION_*`` environment variables.

This module and the client's own settings (``bastion.client._settings``: ``BASTION_URL``,
``BASTION_API_KEY``, ``BASTION_HOME``, read without pydantic so that a CLI command starts fast)
are the only ones that read the environment (ruff's TID251 bans ``os.environ`` elsewhere).
The data directory holds the SQLite database, the master key and the local CLI credentials.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from bastion.client import DEFAULT_PORT, ClientSettings, default_home, read_credentials, write_credentials

__all__ = [
    "DEFAULT_PORT",
    "ClientSettings",
    "Settings",
    "default_home",
    "env",
    "in_ci",
    "read_credentials",
    "write_credentials",
]


def in_ci() -> bool:
    """True where ``CI=true``: a missing test backend is then a failure, not a skip."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def env(name: str) -> str | None:
    """One ``BASTION_*`` variable, for the few callers (tests, benchmarks) that take one directly."""
    return os.environ.get(name)


SHARED_ROOT = Path("/var/lib/bastion")
"""As root, sandbox and image directories live here (see ``Settings.sandbox_dir``)."""


class Settings(BaseSettings):
    """Server settings."""

    model_config = SettingsConfigDict(env_prefix="BASTION_", extra="ignore", frozen=True)

    home: Path = Field(default_factory=default_home)
    """The data directory: database, master key, CLI credentials."""
    database_url: str | None = None
    """``sqlite:///PATH`` or ``postgresql+psycopg://USER@HOST:PORT/DB``; default SQLite in ``home``."""
    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    master_key: SecretStr | None = None
    """64 hex digits; overrides the master key file."""
    master_key_file: Path | None = None
    """Default ``home/master.key``, created with mode 0600 on first start."""
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    """Request bodies larger than this are refused with 413."""
    max_page_size: int = Field(default=500, gt=0)
    evaluation_seconds: float = Field(default=10.0, gt=0, le=600)
    """Time budget of one expensive evaluation in the API (a what-if), run in a killable child
    process; past it the request gets a 503."""
    workspace_dir: Path | None = None
    """Where run workspaces live; default ``home/workspaces``. A run's last attempt's is kept."""
    worker_concurrency: int = Field(default=4, ge=1, le=256)
    """Runs one worker executes at once."""
    lease_seconds: float = Field(default=5.0, gt=0.2, le=3600)
    """A worker's lease on a run; another worker takes the run over this long after it dies."""
    poll_seconds: float = Field(default=0.2, gt=0, le=60)
    """How often an idle worker looks for runs to claim."""
    otlp_endpoint: str | None = None
    """An OTLP/HTTP collector (e.g. ``http://127.0.0.1:4318``): spans are batched and sent to
    ``{otlp_endpoint}/v1/traces``. Unset, no span leaves the process (and none is recorded)."""
    trace_console: bool = False
    """Print every finished span to stdout (development)."""
    sandbox: Literal["auto", "process", "bwrap", "gvisor"] = "auto"
    """The sandbox backend of agents whose spec names none. ``auto``: ``bwrap`` where it works on
    this machine, else ``process`` (no isolation; ``bastion up`` warns loudly). An agent whose
    backend cannot be set up fails its run; it never runs on another backend."""
    pool_size: int = Field(default=2, ge=0, le=64)
    """Warm sandboxes kept ready per (backend, image, limits) in use; 0 starts each run's cold."""
    pool_memory_mib: int = Field(default=256, ge=0)
    """The most memory a worker's warm sandboxes may take together (by an estimate per backend)."""
    pool_idle_seconds: float = Field(default=600.0, gt=0)
    """A (backend, image, limits) no run asked for in this long is no longer kept warm."""
    sandbox_dir: Path | None = None
    """Where sandbox backends keep their files (SDK copies, root filesystems, workspaces' mounts).
    Default: ``home/sandbox``, or as root ``/var/lib/bastion/<hash of home>/sandbox`` because
    bwrap's unprivileged uids must traverse every parent (o+x)."""
    image_dir: Path | None = None
    """Where agent images are built and cached; default beside ``sandbox_dir`` (``…/images``).
    Its parents must be traversable by the sandboxes' unprivileged uids too."""
    image_build_timeout_seconds: float = Field(default=900.0, gt=0)
    """An image build (pip) running longer is stopped and its run fails."""
    metrics_token: SecretStr | None = None
    """A token a Prometheus scraper sends as ``Authorization: Bearer <token>`` to read the API
    server's ``/metrics``. Without one, ``/metrics`` answers keys of the system tenant only: its
    figures cover every tenant (model usage and spend by tenant and agent)."""
    image_wheelhouse: Path | None = None
    """Build agent images from the wheels in this directory only (``pip --no-index``), never from
    a package index: for workers without network. Image digests then cover those wheels too."""

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'bastion.db'}"

    @property
    def resolved_workspace_dir(self) -> Path:
        return self.workspace_dir or self.home / "workspaces"

    @property
    def resolved_image_dir(self) -> Path:
        return self.image_dir or self._shared_root() / "images"

    @property
    def sandbox_state_dir(self) -> Path:
        """Where sandbox backends keep their files (SDK copies, root filesystems)."""
        return self.sandbox_dir or self._shared_root() / "sandbox"

    def _shared_root(self) -> Path:
        """The parent of the sandbox and image directories. As root, under ``/var/lib/bastion``,
        one per data directory: bwrap drops to unprivileged uids that must traverse every parent
        of what they mount, and a data directory under ``/root`` (0700) cannot be traversed. Else
        the data directory itself (the sandboxes then run as the calling user)."""
        if os.geteuid() != 0:
            return self.home
        digest = hashlib.sha256(str(self.home.expanduser().resolve()).encode()).hexdigest()[:12]
        return SHARED_ROOT / digest

    @property
    def resolved_master_key_file(self) -> Path:
        return self.master_key_file or self.home / "master.key"

    @property
    def credentials_file(self) -> Path:
        return self.home / "credentials.json"
