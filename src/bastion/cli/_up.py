"""``bastion up``: the server and (in later releases) a worker, on the embedded default."""

from __future__ import annotations

import logging
from typing import Any

import uvicorn

from bastion.control import Bastion, Settings, create_app
from bastion.control.settings import write_credentials

from ._output import err, out


def serve(overrides: dict[str, Any]) -> None:
    settings = Settings(**overrides)
    bastion = Bastion(settings)
    url = f"http://{settings.host}:{settings.port}"
    first = bastion.bootstrap()
    if first is not None:
        write_credentials(settings.credentials_file, url, first.admin_key)
        out.print(
            "[bold green]Bastion is set up.[/] The first admin key of the system tenant (shown only this once):"
        )
        out.print(f"\n    {first.admin_key}\n", markup=False)
        out.print(f"It is saved for this machine's CLI in {settings.credentials_file} (mode 0600).")
    out.print(f"Data directory: {settings.home}    database: {bastion.store.backend}")
    out.print(f"API: {url}/api/v1    OpenAPI: {url}/api/v1/openapi.json    stop with Ctrl-C")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        uvicorn.run(
            create_app(bastion), host=settings.host, port=settings.port, log_level="warning", access_log=False
        )
    finally:
        bastion.close()
        err.print("Bastion stopped.")
