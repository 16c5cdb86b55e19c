"""The Python client of Bastion's API; the CLI is built on it."""

from ._client import BastionClient, plural_of

__all__ = ["BastionClient", "plural_of"]
