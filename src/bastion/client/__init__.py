"""The Python client of Bastion's API; the CLI is built on it."""

from ._client import BastionClient, plural_of
from ._settings import DEFAULT_PORT, ClientSettings, default_home, read_credentials, write_credentials

__all__ = [
    "DEFAULT_PORT",
    "BastionClient",
    "ClientSettings",
    "default_home",
    "plural_of",
    "read_credentials",
    "write_credentials",
]
