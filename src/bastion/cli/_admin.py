"""``bastion keys``, ``bastion tenants`` and ``bastion namespaces``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ._app import KeyOpt, UrlOpt, client_for, keys_app, namespaces_app, run_command, tenants_app
from ._output import age, out

Role = Annotated[str, typer.Option("--role", help="viewer, developer, operator or admin.")]


def _show_token(token: str) -> None:
    out.print("Token (shown only this once; store it now):")
    out.print(f"\n    {token}\n", markup=False)


@keys_app.command("create")
def keys_create(
    name: str,
    role: Role = "developer",
    tenant: Annotated[
        str | None, typer.Option(help="Another tenant (system admins only).", show_default="yours")
    ] = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Create an API key."""

    def body() -> None:
        with client_for(url, api_key) as client:
            key = client.create_key(name, role, tenant=tenant)
        out.print(f"key {key['id']} ({key['role']}) created in tenant {key['tenant']}")
        _show_token(key["token"])

    run_command(body)


@keys_app.command("list")
def keys_list(url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """List your tenant's keys (never their secrets)."""

    def body() -> None:
        with client_for(url, api_key) as client:
            keys = client.list_keys()
        table = Table("ID", "NAME", "ROLE", "AGE", "STATE", box=None)
        for key in keys:
            table.add_row(
                key["id"],
                key["name"],
                key["role"],
                age(key["createdAt"]),
                "revoked" if key["revokedAt"] else "active",
            )
        out.print(table)

    run_command(body)


@keys_app.command("revoke")
def keys_revoke(key_id: str, url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """Revoke a key; it stops working at once."""

    def body() -> None:
        with client_for(url, api_key) as client:
            client.revoke_key(key_id)
        out.print(f"key {key_id} revoked")

    run_command(body)


@tenants_app.command("create")
def tenants_create(name: str, url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """Create a tenant and its first admin key."""

    def body() -> None:
        with client_for(url, api_key) as client:
            tenant = client.create_tenant(name)
        out.print(f"tenant {tenant['name']} created; its first admin key is {tenant['adminKey']['id']}")
        _show_token(tenant["adminKey"]["token"])

    run_command(body)


@tenants_app.command("list")
def tenants_list(url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """List tenants."""

    def body() -> None:
        with client_for(url, api_key) as client:
            tenants = client.list_tenants()
        table = Table("NAME", "SYSTEM", "AGE", box=None)
        for tenant in tenants:
            table.add_row(tenant["name"], "yes" if tenant["system"] else "", age(tenant["createdAt"]))
        out.print(table)

    run_command(body)


@namespaces_app.command("create")
def namespaces_create(name: str, url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """Create a namespace."""

    def body() -> None:
        with client_for(url, api_key) as client:
            client.create_namespace(name)
        out.print(f"namespace {name} created")

    run_command(body)


@namespaces_app.command("list")
def namespaces_list(url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """List namespaces with their resource counts."""

    def body() -> None:
        with client_for(url, api_key) as client:
            spaces = client.list_namespaces()
        table = Table("NAME", "RESOURCES", "AGE", box=None)
        for ns in spaces:
            table.add_row(ns["name"], str(ns["resources"]), age(ns["createdAt"]))
        out.print(table)

    run_command(body)


@namespaces_app.command("delete")
def namespaces_delete(name: str, url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """Delete an empty namespace."""

    def body() -> None:
        with client_for(url, api_key) as client:
            client.delete_namespace(name)
        out.print(f"namespace {name} deleted")

    run_command(body)
