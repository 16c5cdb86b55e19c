"""Where a client finds the server and its key: the arguments (flags), then ``BASTION_URL`` and
``BASTION_API_KEY``, then the credentials ``bastion up`` wrote into the data directory.

Kept apart from ``bastion.control.settings`` (which re-exports it) so that a client command
reads its configuration without importing pydantic: it must start in a fraction of a second.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

DEFAULT_PORT = 8080


def default_home() -> Path:
    """``$BASTION_HOME``, else ``$XDG_DATA_HOME/bastion``, else ``~/.local/share/bastion``."""
    if home := os.environ.get("BASTION_HOME"):
        return Path(home)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "bastion"


@dataclass(frozen=True)
class ClientSettings:
    """The client's settings from the environment (empty variables count as unset)."""

    url: str | None = field(default_factory=lambda: os.environ.get("BASTION_URL") or None)
    api_key: str | None = field(default_factory=lambda: os.environ.get("BASTION_API_KEY") or None, repr=False)
    home: Path = field(default_factory=default_home)

    def resolve(self, *, url: str | None = None, api_key: str | None = None) -> tuple[str, str | None]:
        """The server URL and key: the arguments (flags) first, then the environment, then the file."""
        stored = read_credentials(self.home / "credentials.json")
        return (
            url or self.url or stored.get("url") or f"http://127.0.0.1:{DEFAULT_PORT}",
            api_key or self.api_key or stored.get("apiKey"),
        )


def read_credentials(path: Path) -> dict[str, Any]:
    try:
        data: Any = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return cast(dict[str, Any], data) if isinstance(data, dict) else {}


def write_credentials(path: Path, url: str, api_key: str) -> None:
    """Save the CLI's credentials with mode 0600 (written to a temporary file, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"url": url, "apiKey": api_key}, handle)
    tmp.replace(path)
