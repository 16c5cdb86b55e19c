"""``bastion up``: the API server and one worker, in one process, on the embedded default;
``bastion serve``: the API server alone, beside ``bastion worker`` processes (production)."""

from __future__ import annotations

import logging
import signal
import socket
from typing import Any

import uvicorn
from pydantic import ValidationError

from bastion.control import Bastion, Settings, create_app
from bastion.control.settings import write_credentials
from bastion.errors import UserError

from ._doctor import PROCESS_WARNING
from ._output import err, out


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UserError(
                f"cannot listen on {host}:{port}: {exc.strerror}",
                field="--port",
                hint="stop whatever uses that port (another `bastion up`?) or pass --port",
            ) from None


def serve(overrides: dict[str, Any], *, with_worker: bool = True) -> None:
    """Serve the API until SIGINT or SIGTERM, then stop the worker (and its sandboxes) and return.

    ``with_worker``: also run one worker in this process (``bastion up``)."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise UserError(
            f"setting {field!r}: {first['msg']}", field=field, hint="fix the flag or BASTION_* variable"
        ) from None
    _check_port_free(settings.host, settings.port)
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
    worker: Any = None
    stop: Any = None
    if with_worker:
        backend = bastion.default_backend
        worker, stop = bastion.start_worker()
        out.print(
            f"Worker: in-process, {settings.worker_concurrency} runs at a time; workspaces in {settings.resolved_workspace_dir}"
        )
        out.print(
            f"Sandbox: {backend} by default, {settings.pool_size} warm per image (`bastion doctor` checks)"
        )
        if backend == "process":
            err.print(PROCESS_WARNING)
    else:
        out.print("No worker in this process: runs wait for `bastion worker` processes on this database.")
    # uvicorn stops on SIGTERM, then raises the signal again under the handler it found: with
    # the default one the process would die there, before the worker and its sandboxes stop.
    previous = signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
    try:
        uvicorn.run(
            create_app(bastion), host=settings.host, port=settings.port, log_level="warning", access_log=False
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
        if stop is not None:
            stop.set()
            worker.join(timeout=30)
        bastion.close()
        err.print("Bastion stopped.")
