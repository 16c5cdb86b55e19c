"""Shared fixtures: real stores (SQLite and PostgreSQL), real servers on ephemeral ports.

A backend that is not reachable skips its tests with a reason on a developer's machine and
fails them where ``CI=true``.
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from bastion.client import BastionClient
from bastion.control import Bastion, Settings, create_app
from bastion.control.settings import in_ci
from bastion.control.store import Store
from bastion.testing import serve_in_thread

POSTGRES_ADMIN_URL = os.environ.get(
    "BASTION_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
BACKENDS = ["sqlite", "postgres"]


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason} (CI=true: every backend must be present)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the developer's own Bastion data directory and credentials out of the tests."""
    os.environ["BASTION_HOME"] = str(tmp_path_factory.mktemp("bastion-home"))
    for name in ("BASTION_URL", "BASTION_API_KEY", "BASTION_DATABASE_URL", "BASTION_MASTER_KEY"):
        os.environ.pop(name, None)


class PostgresDatabases:
    """Creates throwaway databases on the test server and drops them afterwards."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = make_url(admin_url)
        self.created: list[str] = []

    def _connect(self) -> psycopg.Connection:
        url = self.admin_url
        return psycopg.connect(
            host=url.host,
            port=url.port or 5432,
            user=url.username,
            password=url.password,
            dbname=url.database,
            autocommit=True,
        )

    def check(self) -> str | None:
        try:
            with self._connect() as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            return f"PostgreSQL at {self.admin_url.render_as_string(hide_password=True)} is unreachable: {exc}".strip()
        return None

    def create(self) -> str:
        name = f"bastion_test_{secrets.token_hex(6)}"
        with self._connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return self.admin_url.set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        with self._connect() as conn:
            for name in self.created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresDatabases]:
    databases = PostgresDatabases(POSTGRES_ADMIN_URL)
    problem = databases.check()
    if problem:
        _unavailable(problem)
    yield databases
    databases.drop_all()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database per test, on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'bastion.db'}"
    databases: PostgresDatabases = request.getfixturevalue("postgres")
    return databases.create()


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    opened = Store.open(database_url)
    yield opened
    opened.close()


@pytest.fixture
def make_bastion(tmp_path: Path, database_url: str) -> Iterator[Callable[..., Bastion]]:
    """Build Bastions over the fresh database of this test (same master key each time)."""
    opened: list[Bastion] = []

    def build(**overrides: object) -> Bastion:
        settings = Settings(home=tmp_path / "home", database_url=database_url, **overrides)  # pyright: ignore[reportArgumentType]
        bastion = Bastion(settings)
        opened.append(bastion)
        return bastion

    yield build
    for bastion in opened:
        bastion.close()


@dataclass(frozen=True)
class Server:
    """A live Bastion server and the system tenant's admin key."""

    url: str
    admin_key: str
    bastion: Bastion
    backend: str

    def client(self, key: str | None = None) -> BastionClient:
        return BastionClient(self.url, key if key is not None else self.admin_key)


_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}-{secrets.token_hex(3)}"


@pytest.fixture(scope="session", params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real uvicorn server per backend for the whole session; tests keep apart by tenant."""
    home = tmp_path_factory.mktemp(f"server-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{home / 'bastion.db'}"
    else:
        databases: PostgresDatabases = request.getfixturevalue("postgres")
        url = databases.create()
    settings = Settings(
        home=home,
        database_url=url,
        max_body_bytes=256 * 1024,
        lease_seconds=2.0,
        poll_seconds=0.05,
        worker_concurrency=4,
    )
    bastion = Bastion(settings)
    first = bastion.bootstrap()
    assert first is not None
    thread, stop = bastion.start_worker()
    try:
        with serve_in_thread(create_app(bastion)) as base_url:
            yield Server(url=base_url, admin_key=first.admin_key, bastion=bastion, backend=request.param)
    finally:
        stop.set()
        thread.join(timeout=30)
        bastion.close()


@dataclass(frozen=True)
class Tenant:
    name: str
    admin_key: str
    server: Server

    def client(self, role: str = "admin") -> BastionClient:
        if role == "admin":
            return self.server.client(self.admin_key)
        with self.server.client(self.admin_key) as admin:
            token = admin.create_key(unique(role), role)["token"]
        return self.server.client(token)

    def key(self, role: str) -> str:
        with self.server.client(self.admin_key) as admin:
            return admin.create_key(unique(role), role)["token"]


@pytest.fixture
def tenant(server: Server) -> Tenant:
    """A fresh tenant on the session's server, with its first admin key."""
    name = unique("t")
    with server.client() as system:
        created = system.create_tenant(name)
    return Tenant(name=name, admin_key=created["adminKey"]["token"], server=server)


@pytest.fixture
def other_tenant(server: Server) -> Tenant:
    name = unique("other")
    with server.client() as system:
        created = system.create_tenant(name)
    return Tenant(name=name, admin_key=created["adminKey"]["token"], server=server)
