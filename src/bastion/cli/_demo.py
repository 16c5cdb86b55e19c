"""``bastion demo``: Bastion on the embedded default, a governed code agent, end to end."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast
from urllib.parse import urlsplit

import typer

from bastion.errors import SandboxError, UserError

from ._app import app, load_manifests, run_command
from ._output import out

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from bastion.api import RawDocument
    from bastion.client import BastionClient
    from bastion.control import Settings
    from bastion.execution.sandbox import ImageCache

DEMO_API_PORT = 8765
WHEELHOUSE = Path(sys.prefix) / "wheelhouse"
"""The wheels of the demo's agent images, which ``make demo`` fetches at install time
(``scripts/demo_wheelhouse.py``): with them the demo builds its image without any package index."""


@app.command()
def demo(
    manifests: Annotated[Path, typer.Option(help="The demo's manifests.")] = Path("examples/demo"),
    home: Annotated[
        Path | None,
        typer.Option(
            help="Data directory for the demo, kept (default: a temporary one, removed at the end)."
        ),
    ] = None,
    city: Annotated[str, typer.Option(help="The city the agent reports on.")] = "Oslo",
) -> None:
    """Run the demo: a code agent calls a keyed API, is refused a tool, writes a report; then audit."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from bastion.client import BastionClient
    from bastion.control import Bastion, Settings, create_app
    from bastion.testing import serve_in_thread, weather_api

    def body() -> int:
        docs = load_manifests([manifests])
        token, port = _demo_token(docs), _demo_port(docs)
        data = home or Path(tempfile.mkdtemp(prefix="bastion-demo-"))
        settings = _demo_settings(Settings(home=data, lease_seconds=2.0, poll_seconds=0.05))
        _say_where_images_come_from(settings)
        try:
            bastion = Bastion(settings)
        except BaseException:
            if home is None:
                _remove_demo_data(settings)
            raise
        try:
            first = bastion.bootstrap()
            key = first.admin_key if first else _fresh_admin_key(bastion)
            with weather_api(token, port=port), serve_in_thread(create_app(bastion)) as url:
                spans = InMemorySpanExporter()
                bastion.telemetry.add_exporter(spans)
                thread, stop = bastion.start_worker()
                try:
                    code = _run_demo(
                        BastionClient(url, key),
                        docs,
                        city,
                        bastion.settings.resolved_workspace_dir,
                        data,
                        bastion.images,
                    )
                    code = code or _show_trace(spans)
                    if home is None:
                        out.print(
                            f"\n[dim]The demo's data ({data}) is removed now; `bastion demo --home DIR` "
                            "keeps it, and `BASTION_HOME=DIR bastion up` then serves it.[/]"
                        )
                    else:
                        out.print(
                            f"\n[dim]The demo's data is in {data}; `BASTION_HOME={data} bastion up` serves it.[/]"
                        )
                    return code
                finally:
                    stop.set()
                    thread.join(timeout=30)
        except OSError as exc:
            raise UserError(
                f"the demo could not start: {exc.strerror or exc}",
                hint=f"is port {port} (the demo weather API) in use?",
            ) from None
        finally:
            bastion.close()
            if home is None:
                _remove_demo_data(bastion.settings)
            if settings.image_dir == _demo_image_dir():
                _prune_demo_images(bastion.images, docs)

    run_command(body)


def _demo_settings(settings: Settings) -> Settings:
    """The demo's images live in one cache shared by every demo (content-keyed: a second demo
    reuses the first's image), built from ``make demo``'s wheelhouse when there is one.
    ``BASTION_IMAGE_DIR`` and ``BASTION_IMAGE_WHEELHOUSE`` still choose otherwise."""
    update: dict[str, Path] = {}
    if settings.image_dir is None:
        update["image_dir"] = _demo_image_dir()
    if settings.image_wheelhouse is None and WHEELHOUSE.is_dir():
        update["image_wheelhouse"] = WHEELHOUSE
    return settings.model_copy(update=update)


def _prune_demo_images(images: ImageCache, docs: list[RawDocument]) -> None:
    """Remove the demo cache's images that these manifests no longer use (those of an older lock's
    wheelhouse): the cache keeps what the next demo reuses, and nothing more."""
    keep: set[str] = set()
    for doc in docs:
        raw: Any = doc.body
        body: dict[str, Any] = cast(dict[str, Any], raw) if isinstance(raw, dict) else {}
        if body.get("kind") != "Agent":
            continue
        spec: dict[str, Any] = body.get("spec") or {}
        requirements: list[Any] = spec.get("requirements") or []
        if isinstance(spec.get("image"), str):
            try:
                keep.add(images.digest(spec["image"], [str(r) for r in requirements]))
            except SandboxError:  # the wheelhouse cannot be read: keep everything
                return
    if images.root.is_dir():
        for child in images.root.iterdir():
            if not child.name.startswith(".") and child.name not in keep:
                images.remove(child.name)


def _demo_image_dir() -> Path:
    """As root, under ``/var/lib/bastion`` (the sandboxes' unprivileged uids must traverse every
    parent of an image); else beside the wheelhouse, in the environment Bastion is installed in."""
    from bastion.control.settings import SHARED_ROOT

    return SHARED_ROOT / "demo-images" if os.geteuid() == 0 else Path(sys.prefix) / "demo-images"


def _say_where_images_come_from(settings: Settings) -> None:
    if settings.image_wheelhouse is not None:
        out.print(
            f"[dim]Agent images: built from the wheels in {settings.image_wheelhouse} only (no package "
            f"index), cached in {settings.resolved_image_dir}.[/]"
        )
    else:
        out.print(
            f"[dim]Agent images: no wheelhouse at {WHEELHOUSE}, so sdk-packer's image is installed from "
            f"pip's package index (`make demo` fetches its wheels at install time instead); cached in "
            f"{settings.resolved_image_dir}.[/]"
        )


def _remove_demo_data(settings: Settings) -> None:
    """Remove a temporary demo's data directory and the sandbox files Bastion kept for it
    (as root under ``/var/lib/bastion/<hash of its home>``), but never a directory the user named."""
    doomed = [settings.home]
    state = settings.sandbox_state_dir
    if settings.sandbox_dir is None and not state.is_relative_to(settings.home):
        doomed.append(state.parent)
    for path in doomed:
        _remove_tree(path)


def _remove_tree(root: Path) -> None:
    """``rm -rf``, also through the read-only directories sandboxes leave behind."""
    if not root.is_dir() or root.is_symlink():
        return
    for parent, dirs, _files in os.walk(root):
        for name in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(parent, name), 0o700, follow_symlinks=False)
    shutil.rmtree(root, ignore_errors=True)


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


def _demo_port(docs: list[RawDocument]) -> int:
    """The weather API's port: the one the manifests' ``weather.get`` Tool calls."""
    for doc in docs:
        raw: Any = doc.body
        body: dict[str, Any] = cast(dict[str, Any], raw) if isinstance(raw, dict) else {}
        if body.get("kind") == "Tool" and body.get("metadata", {}).get("name") == "weather.get":
            url = str(body.get("spec", {}).get("implementation", {}).get("url", ""))
            with contextlib.suppress(ValueError):
                return urlsplit(url).port or DEMO_API_PORT
    return DEMO_API_PORT


def _fresh_admin_key(bastion: Any) -> str:
    with bastion.store.write() as conn:
        tenant = bastion.store.tenant_by_name(conn, "system")
        _, token = bastion.store.create_key(conn, tenant, f"demo-{bastion.ids.token(3).lower()}", "admin")
    return token


def _run_demo(
    client: BastionClient, docs: list[Any], city: str, workspaces: Path, data: Path, images: ImageCache
) -> int:
    from bastion.execution.sandbox import read_agent_file

    from ._runs import show_event

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
        # The agent wrote this file: read it without following any link it may have planted.
        attempt = workspaces / run["id"] / f"attempt-{final['attempt']}"
        report = read_agent_file(attempt, "report.md")
        if report is not None:
            out.print(f"\n[dim]{attempt / 'report.md'}[/]")
            out.print(report.decode("utf-8", errors="replace"), markup=False)
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
        if not (verdict["ok"] and denied):
            return 1
        return _record_and_replay(client, run["id"], data, images) or _model_agents(
            client, city, data, images
        )


def _follow(client: BastionClient, agent: str, input: Any) -> dict[str, Any] | None:
    from ._runs import show_event

    run = client.create_run(agent, input)
    for event in client.events(run["id"]):
        show_event(event)
    final = client.get_run(run["id"])
    if final["state"] != "Succeeded":
        out.print(f"[red]{final['state']}[/]: {final.get('reason')}")
        return None
    out.print_json(data=final["result"])
    return final


def _model_agents(client: BastionClient, city: str, data: Path, images: ImageCache) -> int:
    """A declarative agent (Bastion's own loop) and unmodified OpenAI SDK code, both on the
    scripted provider: governed, budgeted, journaled, and replayed offline like the first."""
    out.rule("[bold]8. a declarative agent: model -> tools -> model, every call through the gateway")
    briefer = _follow(client, "weather-briefer", {"question": "Oslo or Lisbon this weekend?"})
    if briefer is None:
        return 1
    out.rule("[bold]9. unmodified OpenAI SDK code in the sandbox (its image is built once, then cached)")
    packer = _follow(client, "sdk-packer", {"city": city})
    if packer is None:
        return 1
    for final in (briefer, packer):
        kinds = [e["kind"] for e in client.journal(final["id"])]
        out.print(f"{final['agent']}: journal {' '.join(kinds)}", highlight=False)
        if _record_and_replay(client, final["id"], data, images, quiet=True):
            return 1
    return 0


def _record_and_replay(
    client: BastionClient, run_id: str, data: Path, images: ImageCache, *, quiet: bool = False
) -> int:
    from bastion.execution.runs import Replayer
    from bastion.execution.sandbox import ProcessBackend
    from bastion.execution.tools import builtin_tools
    from bastion.observe.record import verify_record

    from ._record import replay_image

    if not quiet:
        out.rule("[bold]6. export the signed ExecutionRecord and verify it offline")
    record = client.export_record(run_id)
    path = data / f"record-{run_id[:8]}.json"
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    pinned = base64.b64decode(client.record_key()["publicKey"])
    checked = verify_record(json.loads(path.read_text(encoding="utf-8")), public_key=pinned)
    if not checked.ok:
        out.print(f"[red]BROKEN[/]: {checked.reason}")
        return 1
    out.print(
        f"{path}: [green]ok[/], {checked.entries} entries, signed by the tenant's key {checked.key_id}",
        highlight=False,
    )
    if not quiet:
        out.rule("[bold]7. replay it offline: the agent again, every answer from the record")
    image = replay_image(record, images)
    with tempfile.TemporaryDirectory(prefix="bastion-demo-replay-") as scratch, ProcessBackend() as backend:
        report = Replayer(record, backend, builtin_tools(), image=image).run(Path(scratch))
    if not report.ok:
        out.print(f"[red]diverged at seq {report.divergence}[/]: {report.reason}")
        return 1
    out.print(
        f"[green]clean[/]: {len(report.verified)} requests matched the record byte for byte, and the result too"
    )
    return 0


def _show_trace(spans: InMemorySpanExporter) -> int:
    out.rule("[bold]10. the trace (OpenTelemetry spans; BASTION_OTLP_ENDPOINT sends them to a collector)")
    finished = sorted(spans.get_finished_spans(), key=lambda s: s.start_time or 0)
    runs = [s for s in finished if s.name.startswith("invoke_agent")]
    for root in runs[:1]:
        context = root.get_span_context()
        root_id = context.span_id if context is not None else None
        out.print(
            f"{root.name}  {((root.end_time or 0) - (root.start_time or 0)) / 1e6:.1f} ms", highlight=False
        )
        for child in finished:
            if child.parent is not None and child.parent.span_id == root_id:
                attrs = child.attributes or {}
                took = ((child.end_time or 0) - (child.start_time or 0)) / 1e6
                out.print(
                    f"  └ {child.name:<24} {attrs.get('bastion.decision', '')!s:<6} {took:.1f} ms",
                    highlight=False,
                )
    return 0 if runs else 1
