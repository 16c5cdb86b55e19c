"""The ``bastion`` command line."""

from . import _admin as _admin  # registers the keys, tenants and namespaces commands
from ._app import app, load_manifests, main

__all__ = ["app", "load_manifests", "main"]
