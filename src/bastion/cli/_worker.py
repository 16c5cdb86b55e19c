"""``bastion worker``: claim runs from the database and execute them, until SIGTERM or Ctrl-C.

A worker must be claiming runs within a second of starting: a dead worker's replacement is
otherwise the slowest part of a takeover. So this path imports no CLI framework (no typer, no
rich, no API server): ``bastion.cli.main`` sends ``worker`` here before it loads the rest.
"""

from __future__ import annotations

import argparse
import faulthandler
import signal
import sys
import threading


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bastion worker",
        description="Run a worker: claim runs from the database (BASTION_DATABASE_URL) and execute them.",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="Serve this worker's Prometheus metrics on 127.0.0.1:PORT.",
    )
    return parser


def main(argv: list[str]) -> None:
    options = _parser().parse_args(argv)
    port: int | None = options.metrics_port
    if port is not None and not 1 <= port <= 65535:
        print(
            f"error: --metrics-port {port} is not a port\n  hint: pass a number from 1 to 65535",
            file=sys.stderr,
        )
        raise SystemExit(2)
    run_worker(port)


def run_worker(metrics_port: int | None) -> None:
    """Run one worker in this process until SIGTERM or SIGINT; exits 1 with a message on bad settings."""
    from bastion.errors import BastionError

    stop = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # `kill -USR1 PID` prints every thread's stack to stderr: what a stuck worker is waiting for.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        _work(stop, metrics_port)
    except BastionError as exc:  # as print_error says it, without loading rich
        lines = [f"error: {exc.detail}", *(f"  - {p.located()}" for p in exc.problems)]
        if exc.hint and not exc.problems:
            lines.append(f"  hint: {exc.hint}")
        print("\n".join(lines), file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def _work(stop: threading.Event, metrics_port: int | None) -> None:
    from pydantic import ValidationError

    from bastion.control import Bastion, Settings
    from bastion.errors import UserError

    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise UserError(
            f"setting {field!r}: {first['msg']}", field=field, hint=f"fix BASTION_{field.upper()}"
        ) from None
    bastion = Bastion(settings)
    try:
        if metrics_port is not None:
            from prometheus_client import start_http_server

            # The gateway's counters and histograms live in the process that serves the calls.
            start_http_server(metrics_port, addr="127.0.0.1", registry=bastion.registry)
            print(f"metrics on http://127.0.0.1:{metrics_port}/metrics", flush=True)

        def ready() -> None:
            # Said once the worker can claim runs, not before its pool and backends are set up.
            print(f"worker started on {bastion.store.backend}; stop with Ctrl-C", flush=True)

        bastion.worker().run_until(stop, on_ready=ready)
    finally:
        bastion.close()
