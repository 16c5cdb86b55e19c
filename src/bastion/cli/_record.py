"""``bastion record export|verify|key``: the signed ExecutionRecord of a run."""

from __future__ import annotations

import base64
import binascii
import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from bastion.errors import UserError

from ._app import (
    DataOpt,
    KeyOpt,
    NsOpt,
    RunArg,
    UrlOpt,
    app,
    check_output,
    client_for,
    print_data,
    run_command,
    sub_app,
)
from ._output import out

if TYPE_CHECKING:
    from bastion.execution.sandbox import Image, ImageCache

record_app = sub_app("Export and verify ExecutionRecords (signed, verifiable offline).")
app.add_typer(record_app, name="record")


@record_app.command("export")
def export(
    run_id: RunArg,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the record (JSON) to this file.", show_default="stdout"),
    ] = None,
    namespace: NsOpt = "default",
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Print (or write) the run's ExecutionRecord: spec, input, every journal entry, blobs, result, signature."""

    def body() -> None:
        with client_for(url, api_key) as client:
            record = client.export_record(
                client.resolve_run(run_id, namespace=namespace), namespace=namespace
            )
        text = json.dumps(record, indent=2, ensure_ascii=False) + "\n"
        if output is None:
            sys.stdout.write(text)
        else:
            output.write_text(text, encoding="utf-8")
            out.print(
                f"record of run {run_id} written to {output} ({len(record['entries'])} entries)",
                highlight=False,
            )

    run_command(body)


@record_app.command("key")
def key(output: DataOpt = "text", url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """Print the tenant's record public key (pin it with `record verify --public-key`)."""

    def body() -> None:
        check_output(output, ("text", "yaml", "json"))
        with client_for(url, api_key) as client:
            found = client.record_key()
        if output != "text":
            print_data(found, output)
            return
        out.print(f"{found['alg']} key {found['keyId']}: {found['publicKey']}", highlight=False)

    run_command(body)


@record_app.command("verify")
def verify(
    path: Annotated[Path, typer.Argument(metavar="RECORD.json", help="An exported record; '-' for stdin.")],
    public_key: Annotated[
        str | None,
        typer.Option(
            "--public-key",
            help="The tenant's record key (base64, from `bastion record key`).",
            show_default="none: the verdict is UNPINNED",
        ),
    ] = None,
    output: DataOpt = "text",
) -> None:
    """Check a record offline, with no server: hash chain, blobs, head, signature.

    A record carries the public key it was signed with, so only a pinned key (--public-key) proves
    that the tenant signed it; without one the verdict says UNPINNED and the exit code is 3.
    """

    from bastion.observe.record import verify_record

    def body() -> int:
        check_output(output, ("text", "yaml", "json"))
        try:
            text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
            record: Any = json.loads(text)
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(
                f"cannot read {path}: {exc}",
                field="RECORD.json",
                hint="pass a file written by `bastion record export`",
            ) from None
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{path} is not JSON: {exc.msg} at line {exc.lineno}",
                field="RECORD.json",
                hint="pass a file written by `bastion record export`",
            ) from None
        pinned: bytes | None = None
        if public_key is not None:
            try:
                pinned = base64.b64decode(public_key, validate=True)
            except binascii.Error:
                raise UserError(
                    "--public-key is not base64",
                    field="--public-key",
                    hint="copy it from `bastion record key`",
                ) from None
        document: dict[str, Any] = cast(dict[str, Any], record) if isinstance(record, dict) else {}
        verdict = verify_record(document, public_key=pinned)
        if output != "text":
            print_data(
                {
                    "ok": verdict.ok,
                    "pinned": pinned is not None,
                    "entries": verdict.entries,
                    "head": verdict.head,
                    "keyId": verdict.key_id,
                    "brokenSeq": verdict.broken_seq,
                    "reason": verdict.reason,
                },
                output,
            )
            return (3 if pinned is None else 0) if verdict.ok else 1
        if verdict.ok and pinned is None:
            out.print(
                f"[yellow]UNPINNED[/]: {verdict.entries} entries, chain and signature consistent, but signed by key "
                f"{verdict.key_id}, which the record itself names; pass --public-key to prove it is the tenant's",
                highlight=False,
            )
            return 3
        if verdict.ok:
            out.print(
                f"[green]ok[/]: {verdict.entries} entries, head {verdict.head[:16]}, signed by key {verdict.key_id}",
                highlight=False,
            )
            return 0
        where = f" at seq {verdict.broken_seq}" if verdict.broken_seq is not None else ""
        out.print(f"[red]BROKEN[/]{where}: {verdict.reason}", highlight=False)
        return 1

    run_command(body)


@app.command()
def replay(
    target: Annotated[
        str, typer.Argument(metavar="RUN|RECORD.json", help="A run id, or an exported record file.")
    ],
    until: Annotated[
        int | None, typer.Option("--until", min=1, help="Stop after this seq.", show_default="the end")
    ] = None,
    fork_at: Annotated[
        int | None,
        typer.Option(
            "--fork-at",
            min=0,
            help="Start a new live run that replays to this seq and continues; follow it.",
            show_default="none: replay offline",
        ),
    ] = None,
    namespace: NsOpt = "default",
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Re-execute the agent offline against its record; every request must match byte for byte."""
    from bastion.control import Settings
    from bastion.execution.runs import Replayer
    from bastion.execution.sandbox import ProcessBackend
    from bastion.execution.tools import builtin_tools

    def body() -> int:
        if fork_at is not None:
            return _fork(target, fork_at, namespace, url, api_key)
        path = Path(target)
        if path.suffix == ".json" or path.exists():
            try:
                document: Any = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise UserError(
                    f"cannot read the record {target}: {exc}",
                    field="RUN|RECORD.json",
                    hint="pass a file from `bastion record export`",
                ) from None
        else:
            with client_for(url, api_key) as client:
                run_id = client.resolve_run(target, namespace=namespace)
                document = client.export_record(run_id, namespace=namespace)
        record: dict[str, Any] = cast(dict[str, Any], document) if isinstance(document, dict) else {}
        if "entries" not in record or "agent" not in record:
            raise UserError(
                f"{target} is not an ExecutionRecord",
                field="RUN|RECORD.json",
                hint="pass a file from `bastion record export`",
            )
        image = replay_image(record, Settings().resolved_image_dir)
        with tempfile.TemporaryDirectory(prefix="bastion-replay-") as scratch, ProcessBackend() as backend:
            report = Replayer(record, backend, builtin_tools(), image=image).run(
                Path(scratch),
                until=until,
                on_step=lambda seq, what: out.print(
                    f"#{seq:<4} {what:<20} [green]matches[/]", highlight=False
                ),
            )
        if report.divergence is not None:
            out.print(f"[red]diverged at seq {report.divergence}[/]: {report.reason}", highlight=False)
            if report.diff:
                out.print(report.diff, markup=False)
            return 1
        if report.stopped_at is not None:
            out.print(
                f"[green]ok[/]: replayed to seq {report.stopped_at}, every request matched", highlight=False
            )
            return 0
        if report.result_matches is False:
            out.print(f"[red]the replay ended otherwise[/]: {report.reason}", highlight=False)
            out.print(report.diff, markup=False)
            return 1
        ending = "the result" if report.error is None else f"the failure ({report.error})"
        out.print(
            f"[green]ok[/]: {len(report.verified)} calls replayed, every request and {ending} matched",
            highlight=False,
        )
        return 0

    run_command(body)


def _fork(run_id: str, seq: int, namespace: str, url: str | None, api_key: str | None) -> int:
    from ._runs import show_event

    with client_for(url, api_key) as client:
        run_id = client.resolve_run(run_id, namespace=namespace)
        child = client.fork_run(run_id, seq, namespace=namespace)
        out.print(f"run {child['id']} forked from {run_id} at seq {seq}; following it", highlight=False)
        for event in client.events(child["id"], namespace=namespace):
            show_event(event)
        final = client.get_run(child["id"], namespace=namespace)
    if final["state"] == "Succeeded":
        out.print_json(data=final["result"])
        return 0
    out.print(f"[red]{final['state']}[/]: {final.get('reason') or ''}", highlight=False)
    return 1


def replay_image(record: dict[str, Any], images: Path | ImageCache) -> Image | None:
    """The image a recorded agent ran in, from the local image cache (built there if missing):
    replaying code that imports its requirements needs them."""
    from bastion.errors import SandboxError
    from bastion.execution.sandbox import ImageCache

    cache = images if isinstance(images, ImageCache) else ImageCache(images)
    spec: dict[str, Any] = record["agent"].get("spec", {})
    base = spec.get("image")
    if not isinstance(base, str):
        return None
    requirements = [str(r) for r in spec.get("requirements", [])]
    try:
        return cache.resolve(
            base, requirements, progress=lambda step: out.print(f"[dim]image {step.phase}: {step.message}[/]")
        )
    except SandboxError as exc:
        raise UserError(
            f"cannot rebuild the agent's image {base!r}: {exc.detail}",
            field="spec.image",
            hint="replay where the image's requirements can be installed",
        ) from None
