"""CLI consistency: short run ids (tenant-scoped), -o json|yaml on the commands that print data,
runs -A, apply -n, logs -f's exit code, and help that shows every default and BASTION_* variable."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from sqlalchemy import update
from typer.testing import CliRunner

from bastion.api import RandomIds
from bastion.cli import app
from bastion.errors import UserError
from bastion.execution.runs import RunStore
from bastion.execution.runs._tables import runs as runs_table

from ._agents import code_agent
from ._docs import raw
from .conftest import Tenant

runner = CliRunner()


def cli(tenant: Tenant, *args: str) -> tuple[int, str]:
    result = runner.invoke(
        app, list(args), env={"BASTION_URL": tenant.server.url, "BASTION_API_KEY": tenant.admin_key}
    )
    return result.exit_code, result.output


class ChosenIds(RandomIds):
    """Run ids the test picks, so that two tenants' runs can share a prefix."""

    def __init__(self, ids: list[str]) -> None:
        self._ids = list(ids)

    def uid(self) -> str:
        return self._ids.pop(0)


def finished_runs(tenant: Tenant, ids: list[str], *, namespace: str = "default") -> None:
    """Runs with these ids in the tenant, created finished (no worker picks them up)."""
    bastion = tenant.server.bastion
    store = RunStore(bastion.runs.db, ids=ChosenIds(ids))
    with bastion.store.write() as conn:
        tenant_id = bastion.store.tenant_by_name(conn, tenant.name).id
        for _ in ids:
            run = store.create(
                conn, tenant_id=tenant_id, namespace=namespace, agent="prefixed", agent_spec={}, input=None
            )
            conn.execute(
                update(runs_table).where(runs_table.c.id == run.id).values(state="Cancelled", reason="test")
            )


def test_a_run_id_prefix_resolves_only_among_the_callers_runs(tenant: Tenant, other_tenant: Tenant) -> None:
    p = secrets.token_hex(4)
    mine = [f"{p}-aaaa-4000-8000-000000000001", f"{p}-aaab-4000-8000-000000000002"]
    theirs = f"{p}-bbbb-4000-8000-000000000003"
    elsewhere = f"{p}-cccc-4000-8000-000000000004"
    finished_runs(tenant, mine)
    finished_runs(tenant, [elsewhere], namespace="staging")
    finished_runs(other_tenant, [theirs])

    # unique among mine: resolved
    code, out = cli(tenant, "logs", f"{p}-aaaa")
    assert code == 0, out
    code, out = cli(tenant, "audit", "verify", f"{p}-aaab")
    assert mine[1] in out, out
    # the other tenant's run (and the other namespace's) is not found, and not named
    for prefix in (f"{p}-bbbb", f"{p}-bb", f"{p}-cccc"):
        code, out = cli(tenant, "logs", prefix)
        assert code == 1 and "no run in namespace 'default'" in out, out
        assert theirs not in out and elsewhere not in out
    # ambiguous: lists my candidates only
    code, out = cli(tenant, "logs", p)
    assert code == 1 and "ambiguous" in out, out
    assert mine[0] in out and mine[1] in out
    assert theirs not in out and elsewhere not in out
    # the same prefix is the other tenant's one run, for them
    code, out = cli(other_tenant, "audit", "verify", p)
    assert code in (0, 1) and theirs in out and mine[0] not in out, out
    # -n: the other namespace's run, by its prefix
    code, out = cli(tenant, "audit", "verify", p, "-n", "staging")
    assert elsewhere in out and mine[0] not in out, out


def test_a_prefix_is_validated_by_the_server_never_put_into_sql(tenant: Tenant) -> None:
    with tenant.client() as client:
        for bad in ("ab%", "abcd%", "____", "ab'--", "abc", "zzzz", "a" * 37):
            with pytest.raises(UserError):
                client.list_runs(id_prefix=bad)
        assert client.list_runs(id_prefix="ffff" + "0" * 4) == []
    code, out = cli(tenant, "logs", "ab%_")
    assert code == 1 and "Traceback" not in out and "idPrefix" in out, out


def test_output_formats_runs_all_namespaces_and_logs_follow_exit_code(tenant: Tenant) -> None:
    with tenant.client() as client:
        client.create_namespace("blue")
        client.apply(raw(code_agent("crasher", "def main(input):\n    raise RuntimeError('nope')\n")))
        run_id = client.create_run("crasher", None)["id"]

    code, out = cli(tenant, "logs", run_id[:8], "-f")
    assert code == 1, out
    assert "Failed" in out and "RuntimeError: nope" in out

    code, out = cli(tenant, "runs", "-o", "json")
    assert code == 0 and json.loads(out)[0]["id"] == run_id
    code, out = cli(tenant, "runs", "-o", "yaml")
    assert code == 0 and yaml.safe_load(out)[0]["id"] == run_id
    code, out = cli(tenant, "runs", "-A")
    assert code == 0 and "NAMESPACE" in out and "default" in out, out
    code, out = cli(tenant, "runs", "-o", "xml")
    assert code == 1 and "unknown output format 'xml'" in out

    code, out = cli(tenant, "logs", run_id[:8], "-o", "json")
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert code == 0 and events and all("type" in e for e in events)
    assert events[-1]["data"]["state"] == "Failed"
    code, out = cli(tenant, "logs", run_id[:8], "-o", "yaml")
    assert code == 0 and next(d["type"] for d in yaml.safe_load_all(out) if d) == "state"

    code, out = cli(tenant, "describe", "agent", "crasher", "-o", "json")
    assert code == 0 and json.loads(out)["metadata"]["name"] == "crasher"
    code, out = cli(tenant, "describe", "agent", "crasher", "-o", "yaml")
    assert code == 0 and yaml.safe_load(out)["kind"] == "Agent"
    code, out = cli(tenant, "trust", "show", "crasher", "-o", "json")
    assert json.loads(out)["agent"] == "crasher", out
    code, out = cli(tenant, "approvals", "--state", "all", "-o", "json")
    assert code == 0 and json.loads(out) == []
    code, out = cli(tenant, "record", "key", "-o", "yaml")
    assert code == 0 and "publicKey" in yaml.safe_load(out)


def test_apply_n_puts_unplaced_documents_in_the_namespace(tenant: Tenant, tmp_path: Path) -> None:
    with tenant.client() as client:
        client.create_namespace("green")
    doc: dict[str, Any] = code_agent("placed", "def main(input):\n    return 1\n")
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    code, out = cli(tenant, "apply", "-f", str(path), "-n", "green")
    assert code == 0 and "agent/placed created (namespace green)" in out, out
    with tenant.client() as client:
        assert client.get("Agent", "placed", namespace="green")["metadata"]["namespace"] == "green"
        assert list(client.list("Agent", namespace="default")) == []
    doc["metadata"]["namespace"] = "default"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    code, out = cli(tenant, "apply", "-f", str(path), "-n", "green")
    assert code == 1 and "names namespace 'default', not 'green'" in out, out


def _options(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    """(command path, option) for every option of every command (typer's vendored click types)."""
    found: list[tuple[str, Any]] = []
    for name, command in group.commands.items():
        path = (*prefix, name)
        if hasattr(command, "commands"):
            found.extend(_options(command, path))
            continue
        for param in command.params:
            if param.param_type_name == "option" and param.name != "help":
                found.append((" ".join(path), param))
    return found


SETTINGS_OPTIONS = {
    "url": "BASTION_URL",
    "api_key": "BASTION_API_KEY",
    "host": "BASTION_HOST",
    "port": "BASTION_PORT",
    "home": "BASTION_HOME",
    "database_url": "BASTION_DATABASE_URL",
}


def test_help_shows_every_default_and_every_bastion_variable() -> None:
    options = _options(typer.main.get_command(app))
    assert len(options) > 60
    missing: list[str] = []
    for command, option in options:
        result = runner.invoke(app, [*command.split(), "--help"], terminal_width=400)
        assert result.exit_code == 0, result.output
        flag = max(option.opts, key=len)
        line = next((ln for ln in result.output.splitlines() if flag in ln.replace(",", " ").split()[:3]), "")
        assert line, f"{command} {flag} is not in its help"
        if not option.is_flag and option.required is False and "default: " not in line:
            missing.append(f"{command} {flag}: no default in {line!r}")
        variable = SETTINGS_OPTIONS.get(option.name or "") if command != "demo" else None
        if variable and f"env var: {variable}" not in line:
            missing.append(f"{command} {flag}: no {variable} in {line!r}")
        if "[" in (option.help or "") and option.help not in line:
            missing.append(f"{command} {flag}: help text lost its brackets")
    assert missing == [], "\n".join(missing)


def test_help_keeps_brackets_and_version_prints_the_version() -> None:
    result = runner.invoke(app, ["up", "--help"], terminal_width=200)
    assert "[env var: BASTION_PORT; default: (8080)]" in result.output, result.output
    assert "Port ." not in result.output
    result = runner.invoke(app, ["audit", "verify", "--help"], terminal_width=200)
    assert "[RUN]" in result.output, result.output
    from importlib.metadata import version

    for args in (["--version"], ["--version", "get"]):
        done = subprocess.run(
            [sys.executable, "-m", "bastion", *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0 and done.stdout.strip() == f"bastion {version('bastion')}", done


def test_make_up_honours_bastion_port() -> None:
    root = Path(__file__).resolve().parent.parent
    for extra, env_port, expected in (([], "9123", "bastion up"), (["PORT=9124"], "9123", "--port 9124")):
        done = subprocess.run(
            ["make", "-n", "up", *extra],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={"PATH": "/usr/bin:/bin", "BASTION_PORT": env_port},
        )
        last = done.stdout.strip().splitlines()[-1]
        assert last.rstrip().endswith(expected), done.stdout
        if not extra:
            assert "--port" not in last, last  # bastion up then reads BASTION_PORT itself
