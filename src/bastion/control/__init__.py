"""The control plane: settings, store, API server and the composition of it all."""

from ._bastion import SYSTEM_TENANT, Bastion, Bootstrap
from .server import create_app
from .settings import ClientSettings, Settings

__all__ = ["SYSTEM_TENANT", "Bastion", "Bootstrap", "ClientSettings", "Settings", "create_app"]
