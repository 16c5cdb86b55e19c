"""How the CLI shows things: tables, YAML, JSON, errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from bastion.api import Clock, SystemClock
from bastion.errors import BastionError

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def age(stamp: str | None, clock: Clock | None = None) -> str:
    if not stamp:
        return "-"
    try:
        then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return "-"
    seconds = int(((clock or SystemClock()).now() - then.astimezone(UTC)).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _summary(resource: dict[str, Any]) -> str:
    spec: dict[str, Any] = resource.get("spec", {})
    match resource.get("kind"):
        case "Agent":
            return f"{spec.get('runtime')} {spec.get('tier', 'T0')}"
        case "Tool":
            return f"{spec.get('implementation', {}).get('type')} risk={spec.get('risk', 'low')}"
        case "ToolGrant":
            return f"tools={','.join(spec.get('tools', []))}"
        case "Secret":
            return f"keys={','.join(spec.get('stringData', {}))}"
        case "ModelPolicy":
            targets = spec.get("targets", [])
            return " > ".join(f"{t.get('provider')}/{t.get('model')}" for t in targets)
        case "MemoryScope":
            return str(spec.get("type"))
        case "Policy":
            return f"rules={len(spec.get('rules', []))}{' +rego' if spec.get('rego') else ''}"
        case _:
            return ""


def print_resources(items: list[dict[str, Any]], output: str, *, all_namespaces: bool) -> None:
    if output == "json":
        out.print_json(json.dumps(items if len(items) != 1 else items[0]))
        return
    if output == "yaml":
        import yaml

        docs = [yaml.safe_dump(i, sort_keys=False) for i in items]
        out.print("---\n".join(docs), end="", markup=False)
        return
    table = Table(box=None, pad_edge=False, show_edge=False)
    if all_namespaces:
        table.add_column("NAMESPACE")
    for col in ("NAME", "KIND", "SUMMARY", "GEN", "AGE"):
        table.add_column(col)
    for item in items:
        meta = item.get("metadata", {})
        row = [
            meta.get("name", ""),
            item.get("kind", ""),
            _summary(item),
            str(meta.get("generation", "")),
            age(meta.get("creationTimestamp")),
        ]
        table.add_row(*([meta.get("namespace", "")] if all_namespaces else []), *row)
    out.print(table)


def print_error(error: BastionError) -> None:
    err.print(f"[bold red]error:[/] {error.detail}", markup=True)
    for problem in error.problems:
        err.print(f"  [red]-[/] {problem.located()}", markup=True)
    if error.hint and not error.problems:
        err.print(f"  [dim]hint:[/] {error.hint}", markup=True)


SANDBOX_STYLE = {"Warm": "green", "Hot": "yellow", "Cold": "cyan", "Failed": "red", "Terminated": "dim"}


def print_sandboxes(items: list[dict[str, Any]], output: str) -> None:
    """The workers' pooled sandboxes, grouped by worker."""
    if output == "json":
        out.print_json(json.dumps(items))
        return
    if output == "yaml":
        import yaml

        out.print(yaml.safe_dump(items, sort_keys=False), end="", markup=False)
        return
    if not items:
        out.print("No sandboxes: no worker is running, or its pool is empty (BASTION_POOL_SIZE=0).")
        return
    table = Table("WORKER", "ID", "BACKEND", "IMAGE", "STATE", "RUN", "AGE", box=None)
    for item in items:
        state = str(item.get("state", ""))
        style = SANDBOX_STYLE.get(state, "white")
        reason = f" ({item['reason']})" if item.get("reason") else ""
        table.add_row(
            str(item.get("worker", "")),
            str(item.get("id", "")),
            str(item.get("backend", "")),
            str(item.get("image", "")),
            f"[{style}]{state}[/]{reason}",
            str(item.get("runId") or "-"),
            age(item.get("startedAt")),
        )
    out.print(table)
