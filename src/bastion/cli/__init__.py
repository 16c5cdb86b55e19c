"""The ``bastion`` command line."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._app import app, load_manifests

__all__ = ["COMMAND_MODULES", "app", "load_manifests", "main"]

COMMAND_MODULES: dict[str, str] = {
    **dict.fromkeys(("apply", "diff", "get", "describe", "delete", "explain", "up", "serve"), "_app"),
    **dict.fromkeys(("keys", "tenants", "namespaces"), "_admin"),
    **dict.fromkeys(("approvals", "approve", "deny"), "_approvals"),
    "demo": "_demo",
    "doctor": "_doctor",
    **dict.fromkeys(("record", "replay"), "_record"),
    **dict.fromkeys(("run", "runs", "logs", "cancel", "audit", "worker"), "_runs"),
    "trust": "_trust",
    "what-if": "_whatif",
}
"""Which module registers each command and command group (tests/test_cli_startup.py checks it)."""


def _commands() -> Any:
    """The typer app with every command registered."""
    for module in sorted(set(COMMAND_MODULES.values())):
        __import__(f"{__name__}.{module}")
    from ._app import app

    return app


def _only(name: str) -> Any:
    """The typer app with the one command (or group) ``name``: typer turns every registered
    command into a click command on each start, and a client command must start fast."""
    __import__(f"{__name__}.{COMMAND_MODULES[name]}")
    from ._app import app

    app.registered_commands = [
        c
        for c in app.registered_commands
        if (c.name or (c.callback.__name__.replace("_", "-") if c.callback else "")) == name
    ]
    app.registered_groups = [g for g in app.registered_groups if g.name == name]
    return app


def main() -> None:
    # httpx imports its own command line (rich.syntax, pygments: tens of milliseconds) whenever
    # click and rich are installed, as they are beside typer. Neither the CLI nor a worker runs
    # httpx's command line, so this process does not import it.
    sys.modules.setdefault("httpx._main", None)  # pyright: ignore[reportArgumentType]
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if sys.argv[1:] == ["--version"]:  # what the typer option prints, without loading typer
        from importlib.metadata import version

        print(f"bastion {version('bastion')}")
        return
    # A worker loads no CLI framework: it must be claiming runs within a second of starting.
    if command == "worker":
        from ._worker import main as worker_main

        worker_main(sys.argv[2:])
        return
    if command in COMMAND_MODULES:
        _only(command)()
        return
    _commands()()  # --help, --version, a mistyped command: every command, to list or suggest


def __getattr__(name: str) -> Any:
    if name == "app":
        return _commands()
    if name == "load_manifests":
        from ._app import load_manifests

        return load_manifests
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
