"""``bastion trust show|promote|demote|revoke|restore AGENT``: an agent's tier and its journal."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from ._app import (
    DataOpt,
    KeyOpt,
    NsOpt,
    UrlOpt,
    app,
    check_output,
    client_for,
    print_data,
    run_command,
    sub_app,
)
from ._output import out

trust_app = sub_app("Trust tiers: show, promote, demote, revoke, restore.")
app.add_typer(trust_app, name="trust")

AgentArg = Annotated[str, typer.Argument(metavar="AGENT")]
ReasonOpt = Annotated[str, typer.Option("--reason", "-r", help="Why (required); journaled with the change.")]
TierOpt = Annotated[str | None, typer.Option("--to", help="The tier to move to.", show_default="one step")]


def _show(view: dict[str, Any]) -> None:
    state = "[red]revoked[/] - " + str(view["reason"]) if view["revoked"] else "[green]active[/]"
    out.print(
        f"agent {view['agent']} ({view['namespace']}): tier [bold]{view['tier']}[/] "
        f"(declared {view['declaredTier']}), {state}",
        highlight=False,
    )
    if not view["verified"]:
        out.print(f"[red]the trust journal is broken at seq {view['brokenSeq']}[/]")
    if not view["events"]:
        return
    table = Table("SEQ", "WHEN", "ACTION", "TIER", "BY", "REASON", box=None)
    for event in view["events"]:
        tiers = f"{event['fromTier']} → {event['toTier']}" if event["toTier"] else event["fromTier"]
        table.add_row(
            str(event["seq"]), event["at"][:19], event["action"], tiers, event["actor"], event["reason"]
        )
    out.print(table)


@trust_app.command("show")
def show(
    agent: AgentArg,
    namespace: NsOpt = "default",
    output: DataOpt = "text",
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Show an agent's tier, whether it is revoked, and every change with who made it and why."""

    def body() -> int:
        check_output(output, ("text", "yaml", "json"))
        with client_for(url, api_key) as client:
            view = client.trust(agent, namespace=namespace)
        if output != "text":
            print_data(view, output)
        else:
            _show(view)
        return 0 if view["verified"] else 1

    run_command(body)


def _change(
    action: str, agent: str, reason: str, tier: str | None, namespace: str, url: str | None, key: str | None
) -> None:
    def body() -> None:
        with client_for(url, key) as client:
            view = client.change_trust(agent, action, reason=reason, tier=tier, namespace=namespace)
        _show(view)

    run_command(body)


@trust_app.command("promote")
def promote(
    agent: AgentArg,
    reason: ReasonOpt,
    to: TierOpt = None,
    namespace: NsOpt = "default",
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Raise an agent's tier (one step, or --to a tier)."""
    _change("promote", agent, reason, to, namespace, url, api_key)


@trust_app.command("demote")
def demote(
    agent: AgentArg,
    reason: ReasonOpt,
    to: TierOpt = None,
    namespace: NsOpt = "default",
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Lower an agent's tier (one step, or --to a tier)."""
    _change("demote", agent, reason, to, namespace, url, api_key)


@trust_app.command("revoke")
def revoke(
    agent: AgentArg,
    reason: ReasonOpt,
    namespace: NsOpt = "default",
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Revoke an agent: it starts no runs, and its unfinished runs end as Revoked."""
    _change("revoke", agent, reason, None, namespace, url, api_key)


@trust_app.command("restore")
def restore(
    agent: AgentArg,
    reason: ReasonOpt,
    namespace: NsOpt = "default",
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Lift an agent's revocation; its tier stays what it was."""
    _change("restore", agent, reason, None, namespace, url, api_key)
