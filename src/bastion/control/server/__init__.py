"""The HTTP API server."""

from ._app import create_app

__all__ = ["create_app"]
