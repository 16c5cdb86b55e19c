"""``bastion``: the command line. It talks to the server only through ``bastion.client``.

Client commands start in a fraction of a second: this module and the command modules import no
server code, no database and no models (tests/test_cli_startup.py checks; the figures are in
bench/cli_startup.py). Heavy imports go inside the command that needs them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from bastion.api import KIND_PLURALS, kind_named
from bastion.errors import BastionError, UserError

from ._output import out, print_error, print_resources, print_sandboxes

if TYPE_CHECKING:
    from bastion.api import RawDocument
    from bastion.client import BastionClient


def sub_app(help: str) -> typer.Typer:
    """A command group. Help is plain text (rich markup would eat ``[RUN]`` and the like)."""
    return typer.Typer(help=help, no_args_is_help=True, rich_markup_mode=None)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        out.print(f"bastion {version('bastion')}", markup=False, highlight=False)
        raise typer.Exit


app = typer.Typer(
    name="bastion",
    help="Bastion: an operating system for untrusted AI agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Bastion: an operating system for untrusted AI agents."""


keys_app = sub_app("API keys of your tenant.")
tenants_app = sub_app("Tenants (system-tenant admins only).")
namespaces_app = sub_app("Namespaces of your tenant.")
app.add_typer(keys_app, name="keys")
app.add_typer(tenants_app, name="tenants")
app.add_typer(namespaces_app, name="namespaces")


UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="BASTION_URL",
        help="Server URL.",
        show_default="the URL `bastion up` saved on this machine, else http://127.0.0.1:8080",
    ),
]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="BASTION_API_KEY",
        help="API key.",
        show_default="the admin key `bastion up` saved on this machine",
    ),
]
NsOpt = Annotated[str, typer.Option("--namespace", "-n", help="Namespace.")]
FilesOpt = Annotated[
    list[Path], typer.Option("--filename", "-f", help="A manifest file or a directory of them; - for stdin.")
]
OutputOpt = Annotated[str, typer.Option("--output", "-o", help="table, yaml or json.")]
RunArg = Annotated[
    str,
    typer.Argument(metavar="RUN", help="A run id, or its start (4+ characters) when only one run has it."),
]
DataOpt = Annotated[str, typer.Option("--output", "-o", help="text, yaml or json.")]


def check_output(output: str, formats: tuple[str, ...] = ("table", "yaml", "json")) -> None:
    """A clear error for an ``--output`` format the command does not print."""
    if output not in formats:
        raise UserError(
            f"unknown output format {output!r}",
            field="--output",
            hint=f"use {', '.join(formats[:-1])} or {formats[-1]}",
        )


def print_data(data: Any, output: str) -> None:
    """``data`` as JSON or YAML (``-o json``, ``-o yaml``): every field, as the API returns it."""
    if output == "json":
        out.print_json(json.dumps(data))
        return
    import yaml

    out.print(yaml.safe_dump(data, sort_keys=False), end="", markup=False, highlight=False)


def client_for(url: str | None, api_key: str | None) -> BastionClient:
    """A client for the server the flags, the environment or `bastion up`'s credentials name."""
    from bastion.client import BastionClient, ClientSettings

    resolved_url, key = ClientSettings().resolve(url=url, api_key=api_key)
    if key is None:
        raise UserError(
            "no API key configured",
            field="api_key",
            hint="pass --api-key, set BASTION_API_KEY, or run `bastion up` once on this machine",
        )
    return BastionClient(resolved_url, key)


def run_command(action: Callable[[], int | None]) -> None:
    """Run a command body: a Bastion error becomes a clear message and exit code 1, and a body
    that returns a non-zero number exits with it."""
    try:
        code = action()
    except BastionError as exc:
        print_error(exc)
        raise typer.Exit(1) from None
    if code:
        raise typer.Exit(int(code))


def load_manifests(paths: list[Path]) -> list[RawDocument]:
    """Every document of every file; a directory contributes its .yaml, .yml and .json files in order."""
    from bastion.api import parse_yaml

    if not paths:
        raise UserError("no manifest given", field="--filename", hint="pass -f FILE or -f DIR")
    docs: list[RawDocument] = []
    for path in paths:
        if str(path) == "-":
            docs.extend(parse_yaml(sys.stdin.read(), "<stdin>"))
            continue
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix in {".yaml", ".yml", ".json"}
            )
            if not files:
                raise UserError(
                    f"{path} holds no .yaml, .yml or .json files",
                    field="--filename",
                    hint="point -f at manifests",
                )
        elif path.is_file():
            files = [path]
        else:
            raise UserError(f"{path} does not exist", field="--filename", hint="check the path")
        for file in files:
            try:
                text = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise UserError(
                    f"cannot read {file}: {exc}", field="--filename", hint="pass a readable UTF-8 file"
                ) from None
            docs.extend(_inline_sources(parse_yaml(text, str(file)), file.parent))
    if not docs:
        raise UserError(
            "the manifests hold no documents",
            field="--filename",
            hint="add a document with apiVersion and kind",
        )
    return docs


def _inline_sources(docs: list[RawDocument], base: Path) -> list[RawDocument]:
    """Read an Agent's ``spec.sourceFile`` (relative to its manifest) into ``spec.source``."""
    from bastion.api import RawDocument

    inlined: list[RawDocument] = []
    for doc in docs:
        body: Any = doc.body
        spec: Any = cast(dict[str, Any], body).get("spec") if isinstance(body, dict) else None
        if isinstance(spec, dict) and "sourceFile" in spec:
            spec = dict(cast(dict[str, Any], spec))
            relative = spec.pop("sourceFile")
            path = base / str(relative)
            try:
                spec["source"] = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise UserError(
                    f"{doc.source}: spec.sourceFile {relative!r} cannot be read: {exc}",
                    field="spec.sourceFile",
                    hint="give a path relative to the manifest file",
                ) from None
            body = {**cast(dict[str, Any], body), "spec": spec}
        inlined.append(RawDocument(body=body, source=doc.source))
    return inlined


def _kind_name(kind: str) -> str:
    name = kind_named(kind)
    if name is None:
        raise UserError(
            f"unknown kind {kind!r}",
            field="KIND",
            hint=f"use one of {', '.join(KIND_PLURALS)} (or their plurals)",
        )
    return name


ApplyNsOpt = Annotated[
    str | None,
    typer.Option(
        "--namespace",
        "-n",
        help="Put documents that name no namespace here; a document naming another is an error.",
        show_default="each document's own, else default",
    ),
]


def in_namespace(docs: list[RawDocument], namespace: str | None) -> list[RawDocument]:
    """The documents with ``metadata.namespace`` filled in from ``-n`` (kubectl's rule: a document
    that names another namespace is refused, never moved)."""
    from bastion.api import RawDocument

    if namespace is None:
        return docs
    placed: list[RawDocument] = []
    for doc in docs:
        body: Any = doc.body
        if not isinstance(body, dict):
            placed.append(doc)  # validation names the fault
            continue
        data = cast(dict[str, Any], body)
        meta: Any = data.get("metadata")
        if not isinstance(meta, dict):
            placed.append(doc)
            continue
        own: Any = cast(dict[str, Any], meta).get("namespace")
        if own not in (None, namespace):
            raise UserError(
                f"{doc.source or 'a document'}: {data.get('kind')} {cast(dict[str, Any], meta).get('name')!r} "
                f"names namespace {own!r}, not {namespace!r}",
                field="metadata.namespace",
                hint=f"drop -n, or remove metadata.namespace from the document to put it in {namespace!r}",
            )
        placed.append(
            RawDocument(
                body={**data, "metadata": {**cast(dict[str, Any], meta), "namespace": namespace}},
                source=doc.source,
            )
        )
    return placed


@app.command()
def apply(files: FilesOpt, namespace: ApplyNsOpt = None, url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """Create or update resources from manifests, all or nothing."""

    def body() -> None:
        docs = in_namespace(load_manifests(files), namespace)
        with client_for(url, api_key) as client:
            for item in client.apply(docs):
                meta = item["resource"]["metadata"]
                out.print(
                    f"{item['resource']['kind'].lower()}/{meta['name']} {item['action']}"
                    + (f" (namespace {meta['namespace']})" if namespace is not None else ""),
                    markup=False,
                )

    run_command(body)


@app.command()
def diff(files: FilesOpt, namespace: ApplyNsOpt = None, url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """Show what `apply` would change, as JSON patches; exits 1 when something would change."""

    def body() -> int:
        docs = in_namespace(load_manifests(files), namespace)
        changed = False
        with client_for(url, api_key) as client:
            for plan in client.diff(docs):
                label = f"{plan['kind'].lower()}/{plan['name']} (namespace {plan['namespace']})"
                if plan["action"] == "unchanged":
                    out.print(f"{label}: unchanged", markup=False)
                    continue
                changed = True
                out.print(f"{label}: would {plan['action']}", markup=False)
                for op in plan["patch"]:
                    value = f" {json.dumps(op['value'])}" if "value" in op else ""
                    out.print(f"  {op['op']} {op['path']}{value}", markup=False)
        return 1 if changed else 0

    run_command(body)


@app.command()
def get(
    kind: Annotated[
        str,
        typer.Argument(
            help="Agent, Tool, ToolGrant, Secret, ModelPolicy, MemoryScope or Policy; or sandboxes."
        ),
    ],
    name: Annotated[str | None, typer.Argument(help="One resource; all when left out.")] = None,
    namespace: NsOpt = "default",
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="List in every namespace.")
    ] = False,
    selector: Annotated[
        str | None,
        typer.Option(
            "--selector", "-l", help="Label selector, e.g. 'app=web'.", show_default="none: all of them"
        ),
    ] = None,
    output: OutputOpt = "table",
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """List resources of a kind, or show one."""

    def body() -> None:
        check_output(output)
        if kind.lower() in {"sandbox", "sandboxes"}:
            with client_for(url, api_key) as client:
                print_sandboxes(client.list_sandboxes(), output)
            return
        kind_name = _kind_name(kind)
        with client_for(url, api_key) as client:
            if name is not None:
                items = [client.get(kind_name, name, namespace=namespace)]
            else:
                items = list(
                    client.list(kind_name, namespace=None if all_namespaces else namespace, selector=selector)
                )
        if not items and output == "table":
            where = "any namespace" if all_namespaces else f"namespace {namespace!r}"
            out.print(f"No {KIND_PLURALS[kind_name]} found in {where}.")
            return
        print_resources(items, output, all_namespaces=all_namespaces)

    run_command(body)


@app.command()
def describe(
    kind: str,
    name: str,
    namespace: NsOpt = "default",
    output: DataOpt = "text",
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Show one resource in full, with its status conditions."""

    def body() -> None:
        check_output(output, ("text", "yaml", "json"))
        with client_for(url, api_key) as client:
            item = client.get(_kind_name(kind), name, namespace=namespace)
        if output != "text":
            print_data(item, output)
            return
        import yaml

        meta: dict[str, Any] = item["metadata"]
        status: dict[str, Any] = item.get("status") or {}
        out.print(f"[bold]{item['kind']}[/] {meta['namespace']}/{meta['name']}")
        for label, value in (
            ("UID", meta.get("uid")),
            ("Generation", meta.get("generation")),
            ("Resource version", meta.get("resourceVersion")),
            ("Created", meta.get("creationTimestamp")),
            ("Labels", ", ".join(f"{k}={v}" for k, v in meta.get("labels", {}).items()) or "-"),
        ):
            out.print(f"  {label + ':':<18}{value}", markup=False)
        out.print("  Spec:")
        out.print(_indent(yaml.safe_dump(item["spec"], sort_keys=False), 4), markup=False, end="")
        out.print(f"  Observed generation: {status.get('observedGeneration', '-')}")
        conditions: list[dict[str, Any]] = status.get("conditions", [])
        for cond in conditions:
            out.print(
                f"  Condition {cond['type']}={cond['status']} ({cond.get('reason', '')}): {cond.get('message', '')}",
                markup=False,
            )

    run_command(body)


def _indent(text: str, n: int) -> str:
    return "".join(" " * n + line + "\n" for line in text.splitlines())


@app.command()
def delete(
    kind: Annotated[str | None, typer.Argument()] = None,
    name: Annotated[str | None, typer.Argument()] = None,
    files: Annotated[
        list[Path] | None,
        typer.Option("--filename", "-f", help="Delete what these manifests name.", show_default="none"),
    ] = None,
    namespace: NsOpt = "default",
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Delete a resource by kind and name, or every resource a manifest names."""

    def body() -> None:
        targets: list[tuple[str, str, str]] = []
        if files:
            for doc in load_manifests(files):
                body: Any = doc.body
                data: dict[str, Any] = cast(dict[str, Any], body) if isinstance(body, dict) else {}
                meta: dict[str, Any] = data.get("metadata") or {}
                targets.append(
                    (
                        _kind_name(str(data.get("kind"))),
                        meta.get("namespace", "default"),
                        str(meta.get("name")),
                    )
                )
        elif kind and name:
            targets.append((_kind_name(kind), namespace, name))
        else:
            raise UserError("say what to delete", field="KIND NAME", hint="pass KIND NAME, or -f FILE")
        with client_for(url, api_key) as client:
            for kind_name, ns, res_name in targets:
                client.delete(kind_name, res_name, namespace=ns)
                out.print(f"{kind_name.lower()}/{res_name} deleted")

    run_command(body)


@app.command()
def explain(
    path: Annotated[str, typer.Argument(help="KIND or KIND.field.path, e.g. Agent.spec.limits.")],
    output: Annotated[str, typer.Option("--output", "-o", help="text or json (the JSON Schema).")] = "text",
) -> None:
    """Describe a kind or one of its fields, from its JSON Schema (works offline)."""

    from bastion.api import packaged_schema, walk_schema

    def body() -> None:
        check_output(output, ("text", "json"))
        kind, *fields = path.split(".")
        kind_name = _kind_name(kind)
        root = packaged_schema(kind_name)
        node = walk_schema(root, fields) if fields else root
        if node is None:
            raise UserError(
                f"{kind_name} has no field {'.'.join(fields)!r}",
                field="PATH",
                hint=f"try `bastion explain {kind_name}`",
            )
        if output == "json":
            out.print_json(json.dumps(node))
            return
        out.print(
            f"[bold]{kind_name}[/]{'.' + '.'.join(fields) if fields else ''}  ({node.get('type', 'object')})"
        )
        if node.get("description"):
            out.print(f"  {node['description']}", markup=False)
        required = set(node.get("required", []))
        for field, sub in node.get("properties", {}).items():
            node_sub = walk_schema(root, [*fields, field]) or sub
            kind_of = node_sub.get("type") or (
                "one of " + ", ".join(map(str, node_sub["enum"])) if "enum" in node_sub else "object"
            )
            flag = " (required)" if field in required else ""
            desc = node_sub.get("description", "")
            out.print(f"  [cyan]{field}[/] <{kind_of}>{flag}  {desc}")

    run_command(body)


HostOption = Annotated[
    str | None,
    typer.Option(envvar="BASTION_HOST", help="Address to listen on.", show_default="127.0.0.1"),
]
PortOption = Annotated[
    int | None, typer.Option(envvar="BASTION_PORT", help="Port to listen on.", show_default="8080")
]
HomeOption = Annotated[
    Path | None,
    typer.Option(
        envvar="BASTION_HOME",
        help="Data directory: database, master key, CLI credentials.",
        show_default="$XDG_DATA_HOME/bastion, else ~/.local/share/bastion",
    ),
]
DatabaseOption = Annotated[
    str | None,
    typer.Option(
        envvar="BASTION_DATABASE_URL",
        help="sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DB.",
        show_default="SQLite in the data directory",
    ),
]


def _serve(with_worker: bool, **overrides: object) -> None:
    from ._up import serve as serve_api

    given = {k: v for k, v in overrides.items() if v is not None}
    run_command(lambda: serve_api(given, with_worker=with_worker))


@app.command()
def up(
    host: HostOption = None,
    port: PortOption = None,
    home: HomeOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Start Bastion on the embedded default (SQLite in the data directory)."""
    _serve(True, host=host, port=port, home=home, database_url=database_url)


@app.command()
def serve(
    host: HostOption = None,
    port: PortOption = None,
    home: HomeOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Serve the API only; runs are executed by `bastion worker` processes on the same database."""
    _serve(False, host=host, port=port, home=home, database_url=database_url)


def main() -> None:
    app()
