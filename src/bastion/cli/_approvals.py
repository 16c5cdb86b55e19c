"""``bastion approvals``, ``approve`` and ``deny``: the calls waiting for a human decision."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from ._app import KeyOpt, OutputOpt, UrlOpt, app, check_output, client_for, print_data, run_command
from ._output import age, out

ApprovalArg = Annotated[
    str, typer.Argument(metavar="APPROVAL", help="The approval's id (`bastion approvals`).")
]
ReasonOpt = Annotated[
    str | None, typer.Option("--reason", "-r", help="Why; journaled with the decision.", show_default="none")
]
STATE_STYLE = {"pending": "yellow", "approved": "green", "denied": "red", "expired": "red"}


@app.command()
def approvals(
    state: Annotated[str, typer.Option(help="pending, approved, denied, expired or all.")] = "pending",
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="Only this namespace.", show_default="all")
    ] = None,
    output: OutputOpt = "table",
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """List the calls waiting for approval (oldest first), or past decisions with --state."""

    def body() -> None:
        check_output(output)
        with client_for(url, api_key) as client:
            found = client.list_approvals(state=state, namespace=namespace)
        if output != "table":
            print_data(found, output)
            return
        if not found:
            out.print(f"No {state if state != 'all' else ''} approvals.".replace("  ", " "))
            return
        table = Table(box=None)
        # The id is what `bastion approve` takes: never cut it short.
        table.add_column("ID", no_wrap=True, min_width=36)
        for name in ("NAMESPACE", "RUN", "SEQ", "AGENT", "TOOL", "ARGS", "STATE", "AGE"):
            table.add_column(name, overflow="ellipsis", no_wrap=name != "ARGS")
        for item in found:
            style = STATE_STYLE.get(item["state"], "cyan")
            table.add_row(
                item["id"],
                item["namespace"],
                item["run"][:8],
                str(item["seq"]),
                item["agent"],
                item["tool"],
                json.dumps(item["args"], ensure_ascii=False)[:60],
                f"[{style}]{item['state']}[/]",
                age(item["createdAt"]),
            )
        out.print(table)

    run_command(body)


def _decide(
    approval_id: str, approve: bool, reason: str | None, url: str | None, api_key: str | None
) -> None:
    def body() -> None:
        with client_for(url, api_key) as client:
            decided = client.decide_approval(approval_id, approve=approve, reason=reason)
        style = STATE_STYLE.get(decided["state"], "cyan")
        out.print(
            f"approval {decided['id']} [{style}]{decided['state']}[/] by {decided['decidedBy']}: "
            f"run {decided['run']} resumes",
            highlight=False,
        )

    run_command(body)


@app.command()
def approve(
    approval_id: ApprovalArg, reason: ReasonOpt = None, url: UrlOpt = None, api_key: KeyOpt = None
) -> None:
    """Approve a waiting call: its run resumes and the call is made."""
    _decide(approval_id, True, reason, url, api_key)


@app.command()
def deny(
    approval_id: ApprovalArg, reason: ReasonOpt = None, url: UrlOpt = None, api_key: KeyOpt = None
) -> None:
    """Deny a waiting call: its run resumes and the agent sees the denial."""
    _decide(approval_id, False, reason, url, api_key)
