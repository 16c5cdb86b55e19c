"""The CLI's client commands import only the client: no server, no database, no models.

Each check runs a real command in a fresh interpreter and looks at ``sys.modules`` when it ends,
so an import added anywhere on the path (a command module, ``bastion.api``, ``bastion.client``)
shows up. The figures (wall time against ``python -c pass``) are in bench/cli_startup.py.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from bastion.api import KIND_PLURALS, _schema, kind_schema, packaged_schema
from bastion.cli import COMMAND_MODULES, app
from bastion.client import _client as client_module

HEAVY = (
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "psycopg",
    "presidio_analyzer",
    "regopy",
    "opentelemetry",
    "jsonschema",
    "pydantic_settings",
    "prometheus_client",
    "bastion.control",
    "bastion.execution",
    "bastion.observe",
    "bastion.policy",
    "bastion.secrets",
    "bastion.api._kinds",  # the pydantic models
    "bastion.api._patterns",
    "httpx._main",  # httpx's own command line: rich.syntax and pygments
)
"""Modules a client command must not import (typer itself imports pydantic; that is typer's)."""

PROBE = """
import json, sys
sys.argv = ["bastion", *json.loads(sys.argv[1])]
from bastion.cli import main
try:
    main()
except SystemExit:
    pass
print("\\n" + json.dumps(sorted(m for m, v in sys.modules.items() if v is not None)))
"""

NO_SERVER = ["--url", "http://127.0.0.1:9", "--api-key", "k"]


def loaded_by(*args: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(list(args))],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--version"],
        ["explain", "Agent.spec.limits"],
        ["get", "agents", *NO_SERVER],
        ["get", "agents", "-o", "yaml", *NO_SERVER],
        ["describe", "agent", "a", *NO_SERVER],
        ["runs", *NO_SERVER],
        ["logs", "abc", *NO_SERVER],
        ["approvals", *NO_SERVER],
        ["trust", "show", "a", *NO_SERVER],
        ["record", "key", *NO_SERVER],
    ],
    ids=lambda args: " ".join(a for a in args if a not in NO_SERVER),
)
def test_client_commands_import_no_server_code(args: list[str]) -> None:
    modules = loaded_by(*args)
    assert "bastion.cli" in modules, "the probe did not run the CLI"
    assert heavy_in(modules) == []


def test_a_server_command_does_import_the_server() -> None:
    """The check above can fail: the probe sees what a command really imports."""
    modules = loaded_by("doctor")
    assert "bastion.control" in modules
    assert "bastion.execution.sandbox" in modules


def test_command_modules_names_every_command_where_it_is_registered() -> None:
    """``bastion.cli.COMMAND_MODULES`` lets a command load only its own module; it must name
    every command and group of the full app, with the module that registers it."""
    registered: dict[str, str] = {}
    for command in app.registered_commands:
        assert command.callback is not None
        name = command.name or command.callback.__name__.replace("_", "-")
        registered[name] = command.callback.__module__.rsplit(".", 1)[-1]
    for group in app.registered_groups:
        instance: typer.Typer | None = group.typer_instance
        assert instance is not None and group.name is not None
        callback = instance.registered_commands[0].callback
        assert callback is not None
        registered[group.name] = callback.__module__.rsplit(".", 1)[-1]
    assert registered == COMMAND_MODULES


def test_packaged_schemas_are_the_models_schemas() -> None:
    """``bastion explain`` reads kinds.schema.json instead of importing the models; after a change
    to the models, regenerate it with ``python -m bastion.api._schema``."""
    document = json.loads(_schema.PACKAGED.read_text(encoding="utf-8"))
    assert document["modelsDigest"] == _schema._models_digest(), "run python -m bastion.api._schema"
    for kind in KIND_PLURALS:
        assert document["kinds"][kind] == kind_schema(kind), f"{kind}: run python -m bastion.api._schema"
        assert packaged_schema(kind) == kind_schema(kind)


def test_a_packaged_file_from_other_models_is_not_used(tmp_path: Path) -> None:
    document = json.loads(_schema.PACKAGED.read_text(encoding="utf-8"))
    current = tmp_path / "current.json"
    current.write_text(json.dumps(document), encoding="utf-8")
    assert _schema._packaged(current) is not None
    document["modelsDigest"] = "0" * 64
    document["kinds"]["Agent"]["title"] = "stale"
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps(document), encoding="utf-8")
    assert _schema._packaged(stale) is None


def test_plain_http_skips_the_ca_bundle_and_https_still_verifies() -> None:
    """Loading the CA bundle costs a client command a tenth of a second; over plain HTTP it is
    not loaded, and the context used instead trusts nothing, so TLS could never pass unverified."""
    plain = client_module._tls_context("http://127.0.0.1:8080")
    assert isinstance(plain, ssl.SSLContext)
    assert plain.verify_mode == ssl.CERT_REQUIRED and plain.check_hostname
    assert plain.get_ca_certs() == []
    for url in ("https://bastion.example", "HTTPS://bastion.example:8443"):
        assert client_module._tls_context(url) is True  # httpx's default: verify with the CA bundle


def test_model_providers_make_their_http_client_on_first_use() -> None:
    """A worker builds every provider at start; their connection pools (each loading the CA bundle
    and httpcore, a tenth of a second or more) wait for the first model call."""
    probe = (
        "import sys\n"
        "from bastion.execution.llm import default_providers\n"
        "providers = default_providers()\n"
        "print('httpcore' in sys.modules)\n"
        "clients = [providers[name].client for name in ('openai', 'anthropic')]\n"
        "print('httpcore' in sys.modules, clients[0] is providers['openai'].client)\n"
        "for name in ('openai', 'anthropic'):\n"
        "    providers[name].close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.split() == ["False", "True", "True"], done.stdout + done.stderr
