"""The ``bastion`` command line."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._app import app, load_manifests

__all__ = ["app", "load_manifests", "main"]


def _commands() -> Any:
    """The typer app with every command registered."""
    from . import _admin as _admin  # registers the keys, tenants and namespaces commands
    from . import _approvals as _approvals  # registers approvals, approve and deny
    from . import _demo as _demo  # registers demo
    from . import _doctor as _doctor  # registers doctor
    from . import _record as _record  # registers record export|verify|key
    from . import _runs as _runs  # registers run, runs, logs, cancel, audit and worker
    from . import _trust as _trust  # registers trust show|promote|demote|revoke|restore
    from . import _whatif as _whatif  # registers what-if
    from ._app import app

    return app


def main() -> None:
    # A worker loads no CLI framework: it must be claiming runs within a second of starting.
    if sys.argv[1:2] == ["worker"]:
        from ._worker import main as worker_main

        worker_main(sys.argv[2:])
        return
    _commands()()


def __getattr__(name: str) -> Any:
    if name == "app":
        return _commands()
    if name == "load_manifests":
        from ._app import load_manifests

        return load_manifests
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
