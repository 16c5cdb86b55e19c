"""``bastion what-if RUN --policy FILE``: which of a run's decisions another policy would change."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ._app import KeyOpt, NsOpt, RunArg, UrlOpt, app, client_for, load_manifests, run_command
from ._output import out


@app.command("what-if")
def what_if(
    run_id: RunArg,
    policy: Annotated[
        list[Path],
        typer.Option(
            "--policy", "-p", help="Policy/ToolGrant manifests (files or directories) to judge the run with."
        ),
    ],
    namespace: NsOpt = "default",
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Re-judge every recorded call of a finished run under other Policies and ToolGrants (they
    replace the namespace's of the same name); print the decisions that would change. Nothing runs."""

    def body() -> None:
        docs = load_manifests(policy)
        with client_for(url, api_key) as client:
            verdict = client.what_if(
                client.resolve_run(run_id, namespace=namespace), docs, namespace=namespace
            )
        changes = verdict["changes"]
        out.print(
            f"run {verdict['run']} ({verdict['agent']}): {verdict['calls']} tool calls re-judged under "
            f"policy {verdict['policyVersion'][:19]}: {len(changes) or 'no'} decision{'s' if len(changes) != 1 else ''} "
            "would change",
            highlight=False,
        )
        if not changes:
            return
        table = Table("SEQ", "TOOL", "WHAT", "WAS", "WOULD BE", "RULES", "WHY", box=None)
        for change in changes:
            style = "red" if change["new"] == "deny" else "yellow"
            table.add_row(
                str(change["seq"]),
                change["tool"],
                change["what"],
                change["old"],
                f"[{style}]{change['new']}[/]",
                ", ".join(change["ruleIds"]),
                change["sentence"].split("(", 1)[-1].rstrip(")"),
            )
        out.print(table)

    run_command(body)
