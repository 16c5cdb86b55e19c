"""Composition and operations: master key handling, readiness, settings errors, exports."""

from __future__ import annotations

import socket
import stat
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from sqlalchemy import text
from typer.testing import CliRunner

import bastion.api
import bastion.client
import bastion.control
import bastion.errors
import bastion.secrets
import bastion.testing
from bastion.cli import app
from bastion.control import Bastion, Settings, create_app
from bastion.errors import ServerError, UserError
from bastion.secrets import LocalKeyProvider, Sealer, load_or_create_master_key
from bastion.testing import serve_in_thread

from ._docs import raw, secret


def test_master_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "home" / "master.key"
    first = load_or_create_master_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_master_key(path) == first
    assert len(first) == 32


def test_a_master_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    load_or_create_master_key(path)
    path.chmod(0o644)
    with pytest.raises(UserError, match="chmod 600"):
        load_or_create_master_key(path)


def test_a_malformed_master_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="64 hex digits"):
        Bastion(Settings(home=tmp_path, master_key="not-hex"))  # pyright: ignore[reportArgumentType]


def test_a_master_key_from_configuration_is_used(
    make_bastion: Callable[..., Bastion], tmp_path: Path
) -> None:
    configured = make_bastion(master_key="ab" * 32)
    assert not (tmp_path / "home" / "master.key").exists()
    with configured.store.write() as conn:
        tenant = configured.store.create_tenant(conn, "k")
        _, token = configured.store.create_key(conn, tenant, "a", "admin")
    who = configured.store.authenticate(token)
    assert who is not None
    with configured.store.write() as conn:
        configured.resources.apply(conn, who, bastion.api.validate_documents(raw(secret("s", v="x"))))
    with configured.store.read() as conn:
        row = configured.resources.get(conn, who, "Secret", "default", "s")
    assert configured.resources.open_secret(row) == {"v": "x"}
    other = make_bastion(master_key="cd" * 32)
    with pytest.raises(ServerError, match="another master key"):
        other.resources.open_secret(row)


def test_sealed_values_fail_closed_when_altered() -> None:
    sealer = Sealer(LocalKeyProvider(b"k" * 32))
    sealed = sealer.seal(b"value", b"row-1")
    assert sealer.open(sealed, b"row-1") == b"value"
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    for bad, aad in ((tampered, b"row-1"), (sealed, b"row-2"), (sealed[:20], b"row-1")):
        with pytest.raises(ServerError):
            sealer.open(bad, aad)


def test_readyz_reports_a_database_behind_the_code(make_bastion: Callable[..., Bastion]) -> None:
    stale = make_bastion()
    with serve_in_thread(create_app(stale)) as url:
        assert httpx.get(f"{url}/readyz").status_code == 200
        with stale.store.write() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0000'"))
        response = httpx.get(f"{url}/readyz")
        assert response.status_code == 503
        assert response.json()["type"] == "urn:bastion:problem:unavailable"
        assert "'0000'" in response.json()["detail"]


def test_up_on_a_busy_port_says_so(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(app, ["up", "--port", str(port), "--home", str(tmp_path)])
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.output


def test_up_with_a_bad_database_url_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["up", "--port", "0", "--home", str(tmp_path), "--database-url", "mysql://x"]
    )
    assert result.exit_code == 1
    assert "not supported" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "module", [bastion.api, bastion.client, bastion.control, bastion.errors, bastion.secrets, bastion.testing]
)
def test_public_names_are_exactly_all(module: ModuleType) -> None:
    for name in module.__all__:  # every exported name resolves (lazily imported ones included)
        getattr(module, name)
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, ModuleType)
        and name != "annotations"
        and getattr(value, "__module__", module.__name__).startswith("bastion")
    }
    assert sorted(module.__all__) == sorted(public)
