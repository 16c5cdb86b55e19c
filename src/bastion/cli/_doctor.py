"""``bastion doctor``: which sandbox backends work on this machine, and how to fix the others."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from bastion.errors import SandboxError, UserError

from ._app import app, run_command
from ._output import out

PROCESS_WARNING = (
    "[bold red]WARNING:[/] the sandbox backend is 'process': agents run [bold]without isolation[/] "
    "(they see the host's files and network; as root each runs under its own unprivileged uid, "
    "otherwise as this user). Development only: install bubblewrap "
    "(apt-get install bubblewrap) or gVisor (apt-get install runsc), or set BASTION_SANDBOX."
)


if TYPE_CHECKING:
    from bastion.control import Settings


def settings_or_error() -> Settings:
    from pydantic import ValidationError

    from bastion.control import Settings

    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise UserError(
            f"setting {field!r}: {first['msg']}", field=field, hint=f"fix BASTION_{field.upper()}"
        ) from None


@app.command()
def doctor() -> None:
    """Check this machine: which sandbox backends work (and how to fix the others), the default
    backend, and the agent image bases. Exits 1 if the configured default backend cannot work."""

    from bastion.execution.sandbox import BASES, default_backend, probe_backends

    def body() -> int:
        settings = settings_or_error()
        reports = probe_backends(state_dir=settings.sandbox_state_dir)
        table = Table("BACKEND", "WORKS", "DETAIL", "FIX", box=None)
        for report in reports:
            works = "[green]yes[/]" if report.works else "[red]no[/]"
            table.add_row(report.name, works, report.detail, report.fix or "")
        out.print(table)
        try:
            auto = default_backend(reports)
        except SandboxError as exc:
            if settings.sandbox == "auto":
                out.print(f"[bold red]No default backend:[/] {exc.detail}")
                return 1
            auto = "none"
        chosen = auto if settings.sandbox == "auto" else settings.sandbox
        how = (
            "auto: bwrap where it works, else gvisor as root, process only when not root"
            if settings.sandbox == "auto"
            else "BASTION_SANDBOX"
        )
        out.print(f"\nDefault backend: [bold]{chosen}[/] ({how})")
        for base, interpreter in BASES.items():
            found = (
                "[green]found[/]"
                if interpreter.exists()
                else f"[red]missing[/] (apt-get install {interpreter.name})"
            )
            out.print(f"Image base {base}: {interpreter} {found}")
        if chosen == "process":
            out.print(PROCESS_WARNING)
        report = next((r for r in reports if r.name == chosen), None)
        if report is None or not report.works:
            fix = f" To fix: {report.fix}" if report is not None and report.fix else ""
            out.print(f"[bold red]The default backend {chosen!r} does not work on this machine.[/]{fix}")
            return 1
        return 0

    run_command(body)
