"""``bastion demo``: Bastion on the embedded default, a governed code agent, end to end."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any, cast

import typer

from bastion.api import RawDocument
from bastion.client import BastionClient
from bastion.errors import UserError

from ._app import app, load_manifests, run_command
from ._output import out
from ._runs import show_event

DEMO_API_PORT = 8765


@app.command()
def demo(
    manifests: Annotated[Path, typer.Option(help="The demo's manifests.")] = Path("examples/demo"),
    home: Annotated[
        Path | None, typer.Option(help="Data directory for the demo [default: a new temporary one].")
    ] = None,
    city: Annotated[str, typer.Option(help="The city the agent reports on.")] = "Oslo",
) -> None:
    """Run the demo: a code agent calls a keyed API, is refused a tool, writes a report; then audit."""
    from bastion.control import Bastion, Settings, create_app
    from bastion.testing import serve_in_thread, weather_api

    def body() -> int:
        docs = load_manifests([manifests])
        token = _demo_token(docs)
        data = home or Path(tempfile.mkdtemp(prefix="bastion-demo-"))
        bastion = Bastion(Settings(home=data, lease_seconds=2.0, poll_seconds=0.05))
        try:
            first = bastion.bootstrap()
            key = first.admin_key if first else _fresh_admin_key(bastion)
            with weather_api(token, port=DEMO_API_PORT), serve_in_thread(create_app(bastion)) as url:
                thread, stop = bastion.start_worker()
                try:
                    return _run_demo(
                        BastionClient(url, key), docs, city, bastion.settings.resolved_workspace_dir, data
                    )
                finally:
                    stop.set()
                    thread.join(timeout=30)
        except OSError as exc:
            raise UserError(
                f"the demo could not start: {exc.strerror or exc}",
                hint=f"is port {DEMO_API_PORT} (the demo weather API) in use?",
            ) from None
        finally:
            bastion.close()

    code = run_command(body)
    if code:
        raise typer.Exit(code)


def _demo_token(docs: list[RawDocument]) -> str:
    for doc in docs:
        raw: Any = doc.body
        body: dict[str, Any] = cast(dict[str, Any], raw) if isinstance(raw, dict) else {}
        if body.get("kind") == "Secret" and body.get("metadata", {}).get("name") == "weather-api-key":
            return str(body["spec"]["stringData"]["token"])
    raise UserError(
        "the demo manifests hold no Secret 'weather-api-key'",
        field="--manifests",
        hint="point --manifests at examples/demo",
    )


def _fresh_admin_key(bastion: Any) -> str:
    with bastion.store.write() as conn:
        tenant = bastion.store.tenant_by_name(conn, "system")
        _, token = bastion.store.create_key(conn, tenant, f"demo-{bastion.ids.token(3).lower()}", "admin")
    return token


def _run_demo(client: BastionClient, docs: list[Any], city: str, workspaces: Path, data: Path) -> int:
    with client:
        out.rule("[bold]1. apply the demo's manifests")
        for item in client.apply(docs):
            meta = item["resource"]["metadata"]
            out.print(f"{item['resource']['kind'].lower()}/{meta['name']} {item['action']}")
        out.rule("[bold]2. run the agent, following every call through the gateway")
        run = client.create_run("weather-reporter", {"city": city})
        for event in client.events(run["id"]):
            show_event(event)
        final = client.get_run(run["id"])
        out.rule("[bold]3. the result")
        if final["state"] != "Succeeded":
            out.print(f"[red]{final['state']}[/]: {final.get('reason')}")
            return 1
        out.print_json(data=final["result"])
        report = workspaces / run["id"] / f"attempt-{final['attempt']}" / "report.md"
        if report.exists():
            out.print(f"\n[dim]{report}[/]")
            out.print(report.read_text(), markup=False)
        denied = [e for e in client.journal(run["id"]) if e["decision"] == "deny"]
        out.rule("[bold]4. what was denied")
        for entry in denied:
            out.print(
                f"seq {entry['seq']}: {entry['request']['params'].get('name')} - {entry['reasons'][0]['text']}",
                markup=False,
            )
        out.rule("[bold]5. audit verify")
        verdict = client.verify_run(run["id"])
        style = "green" if verdict["ok"] else "red"
        out.print(
            f"[{style}]{'ok' if verdict['ok'] else 'BROKEN'}[/]: {verdict['entries']} journal entries, hash chain intact"
            if verdict["ok"]
            else f"[red]BROKEN at seq {verdict['brokenSeq']}[/]: {verdict['reason']}"
        )
        out.print(f"\n[dim]The demo's data is in {data}; `BASTION_HOME={data} bastion up` serves it.[/]")
        return 0 if verdict["ok"] and denied else 1
