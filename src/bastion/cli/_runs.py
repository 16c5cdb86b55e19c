"""``bastion run``, ``runs``, ``logs``, ``cancel``, ``audit verify`` and ``worker``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from bastion.errors import UserError

from ._app import (
    KeyOpt,
    NsOpt,
    OutputOpt,
    RunArg,
    UrlOpt,
    app,
    check_output,
    client_for,
    print_data,
    run_command,
    sub_app,
)
from ._output import age, out

audit_app = sub_app("Verify the tamper-evident journal.")
app.add_typer(audit_app, name="audit")

if TYPE_CHECKING:
    from bastion.client import BastionClient

STATE_STYLE = {"Succeeded": "green", "Failed": "red", "Cancelled": "yellow", "Revoked": "red"}


def show_event(event: dict[str, Any]) -> None:
    data: dict[str, Any] = event["data"]
    at = event["at"][11:23]
    match event["type"]:
        case "state":
            style = STATE_STYLE.get(data["state"], "cyan")
            extra = f" - {data['reason']}" if data.get("reason") else ""
            takeover = " (took over from a dead worker)" if data.get("takeover") else ""
            out.print(
                f"{at} [{style}]{data['state']}[/] attempt {data.get('attempt', 0)}{takeover}{extra}",
                highlight=False,
            )
        case "call":
            what = data.get("tool") or data["kind"]
            decision = data["decision"]
            style = "green" if decision == "allow" else "red"
            ms = data.get("durationUs", 0) / 1000
            line = f"{at} #{data['seq']:<3} {data['kind']:<6} {what:<18} [{style}]{decision}[/] {ms:.1f} ms"
            if data.get("error"):
                line += f" - {data['error']}"
            out.print(line, highlight=False)
            for reason in data.get("reasons", []):
                out.print(f"               {reason}", markup=False)
        case "log":
            out.print(f"{at} | {data['line']}", markup=False)
        case "approval":
            if data.get("state") == "pending":
                out.print(
                    f"{at} #{data.get('seq', '?'):<3} approval {data['id']} needed for {data.get('tool')}: "
                    f"`bastion approve {data['id']}` or `bastion deny {data['id']}`",
                    markup=False,
                )
            else:
                by = f" by {data['by']}" if data.get("by") else ""
                why = f": {data['reason']}" if data.get("reason") else ""
                out.print(f"{at} approval {data['id']} {data['state']}{by}{why}", markup=False)
        case "image":
            style = {"failed": "red", "done": "green", "cached": "green"}.get(data.get("phase", ""), "cyan")
            if data.get("phase") == "output":
                out.print(f"{at}   pip | {data.get('message', '')}", markup=False)
            else:
                out.print(
                    f"{at} [{style}]image {data.get('phase')}[/] {data.get('message', '')}", highlight=False
                )
        case "sandbox":
            how = "warm" if data.get("warm") else "cold start"
            out.print(
                f"{at} sandbox {data.get('id')} ({data.get('backend')}, image {data.get('image')}, {how})",
                markup=False,
            )
            if data.get("warning"):
                out.print(f"{at} [bold red]WARNING:[/] {data['warning']}", highlight=False)
        case _:
            out.print(f"{at} {event['type']} {json.dumps(data)}", markup=False)


def _parse_input(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"--input is not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
            field="--input",
            hint='quote it for the shell, e.g. --input \'{"city": "Oslo"}\'',
        ) from None


def _finish(client: BastionClient, run_id: str, namespace: str) -> int:
    run = client.get_run(run_id, namespace=namespace)
    state = run["state"]
    if state == "Succeeded":
        out.print("[bold green]result:[/]")
        out.print_json(json.dumps(run["result"]))
        return 0
    out.print(f"[bold red]{state}:[/] {run.get('reason') or ''}", highlight=False)
    return 1


@app.command()
def run(
    agent: str,
    input: Annotated[
        str | None, typer.Option("--input", "-i", help="The run's input, as JSON.", show_default="null")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Show progress live and wait for the end.")
    ] = False,
    namespace: NsOpt = "default",
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Start a run of an agent; with --follow, show each state, call, decision and log line live."""

    def body() -> int:
        value = _parse_input(input)
        with client_for(url, api_key) as client:
            created = client.create_run(agent, value, namespace=namespace)
            out.print(f"run {created['id']} created", highlight=False)
            if not follow:
                return 0
            for event in client.events(created["id"], namespace=namespace):
                show_event(event)
            return _finish(client, created["id"], namespace)

    run_command(body)


@app.command()
def runs(
    namespace: NsOpt = "default",
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="List in every namespace.")
    ] = False,
    agent: Annotated[str | None, typer.Option(help="Only this agent's runs.", show_default="all")] = None,
    state: Annotated[str | None, typer.Option(help="Only runs in this state.", show_default="all")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="At most this many runs.")] = 50,
    output: OutputOpt = "table",
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """List runs, newest first. Any command taking a RUN accepts the start of its id (4 or more
    characters, as this table shows them) when one run of the namespace starts so."""

    def body() -> None:
        check_output(output)
        with client_for(url, api_key) as client:
            found = client.list_runs(
                namespace=None if all_namespaces else namespace, agent=agent, state=state, limit=limit
            )
        if output != "table":
            print_data(found, output)
            return
        if not found:
            out.print("No runs found.")
            return
        table = Table(box=None)
        for column in ("NAMESPACE",) * all_namespaces + ("ID", "AGENT", "STATE", "ATTEMPT", "AGE", "REASON"):
            table.add_column(column, no_wrap=column != "REASON")
        for item in found:
            style = STATE_STYLE.get(item["state"], "cyan")
            table.add_row(
                *([item["namespace"]] if all_namespaces else []),
                item["id"],
                item["agent"],
                f"[{style}]{item['state']}[/]",
                str(item["attempt"]),
                age(item["createdAt"]),
                (item.get("reason") or "")[:60],
            )
        out.print(table)

    run_command(body)


@app.command()
def logs(
    run_id: RunArg,
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="Keep following until the run ends; exit 1 unless it succeeded."),
    ] = False,
    namespace: NsOpt = "default",
    output: Annotated[
        str,
        typer.Option(
            "--output", "-o", help="text, json (one event per line) or yaml (one document per event)."
        ),
    ] = "text",
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Show a run's events: states, calls and the agent's log lines."""

    def body() -> int:
        check_output(output, ("text", "yaml", "json"))
        with client_for(url, api_key) as client:
            full_id = client.resolve_run(run_id, namespace=namespace)
            for event in client.events(full_id, namespace=namespace, follow=follow):
                if output == "json":
                    out.print(json.dumps(event), markup=False, highlight=False, soft_wrap=True)
                elif output == "yaml":
                    out.print("---", markup=False)
                    print_data(event, "yaml")
                else:
                    show_event(event)
            if not follow:
                return 0
            if output != "text":
                return 0 if client.get_run(full_id, namespace=namespace)["state"] == "Succeeded" else 1
            return _finish(client, full_id, namespace)

    run_command(body)


@app.command()
def cancel(
    run_id: RunArg,
    namespace: NsOpt = "default",
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Cancel a run (its sandbox is stopped within a lease renewal)."""

    def body() -> None:
        with client_for(url, api_key) as client:
            run = client.cancel_run(client.resolve_run(run_id, namespace=namespace), namespace=namespace)
        out.print(
            f"run {run['id']}: {run['state']}{' (cancellation requested)' if run['state'] != 'Cancelled' else ''}"
        )

    run_command(body)


@audit_app.command("verify")
def audit_verify(
    run_id: Annotated[
        str | None,
        typer.Argument(
            metavar="RUN", help="One run (its id, or the start of it); all of the tenant's when left out."
        ),
    ] = None,
    namespace: NsOpt = "default",
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Recompute the hash chain of a run's journal (or every run's); name the first broken seq."""

    def body() -> int:
        with client_for(url, api_key) as client:
            verdicts = (
                [client.verify_run(client.resolve_run(run_id, namespace=namespace), namespace=namespace)]
                if run_id
                else client.verify_all()["items"]
            )
        bad = 0
        for v in verdicts:
            if v["ok"]:
                out.print(
                    f"[green]ok[/]      run {v['run']} ({v['agent']}): {v['entries']} entries, head {v['head'][:16]}",
                    highlight=False,
                )
            else:
                bad += 1
                out.print(
                    f"[red]BROKEN[/]  run {v['run']} ({v['agent']}): at seq {v['brokenSeq']}: {v['reason']}",
                    highlight=False,
                )
        out.print(
            f"{len(verdicts) - bad} of {len(verdicts)} journals verified" + (f", {bad} broken" if bad else "")
        )
        return 1 if bad else 0

    run_command(body)


@app.command()
def worker(
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=1,
            max=65535,
            help="Serve this worker's Prometheus metrics on 127.0.0.1:PORT.",
            show_default="none: no metrics server",
        ),
    ] = None,
) -> None:
    """Run a worker: claim runs from the database (BASTION_DATABASE_URL) and execute them."""
    # `bastion worker` normally never gets here: bastion.cli.main runs it without typer.
    from ._worker import run_worker

    run_worker(metrics_port)
