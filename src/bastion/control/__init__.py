"""The control plane: settings, store, API server and the composition of it all."""

import typing
from typing import Any

from ._bastion import SYSTEM_TENANT, Bastion, Bootstrap
from .settings import ClientSettings, Settings

if typing.TYPE_CHECKING:
    from .server import create_app

__all__ = ["SYSTEM_TENANT", "Bastion", "Bootstrap", "ClientSettings", "Settings", "create_app"]


def __getattr__(name: str) -> Any:
    # The API server (FastAPI and every route) is imported when first asked for: a worker
    # process never serves the API, and must be claiming runs within a second of starting.
    if name == "create_app":
        from .server import create_app

        globals()["create_app"] = create_app  # once imported, an ordinary attribute
        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
