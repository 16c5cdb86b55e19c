"""Which sandbox backends this machine can run, and opening one by name.

A stand-in with the interface the bwrap and gVisor backends plug into: this build has only
``process``. Opening a backend never falls back to another one: an agent that asks for isolation
this machine cannot give does not run at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bastion.errors import SandboxError

from ._base import SandboxBackend
from ._process import ProcessBackend

BACKENDS = ("process", "bwrap", "gvisor")
"""Every backend name an Agent's ``spec.sandbox`` or ``BASTION_SANDBOX`` may give."""


@dataclass(frozen=True, kw_only=True)
class BackendReport:
    """Whether one backend works on this machine, and if not, why and how to fix it."""

    name: str
    works: bool
    detail: str
    """What was checked and found (a version, or the failure)."""
    fix: str | None = None
    """For a backend that does not work: what to do about it."""


def open_backend(name: str, *, state_dir: Path) -> SandboxBackend:
    """Open backend ``name``, keeping its files (SDK copy, root filesystems) under ``state_dir``.

    Raises:
        SandboxError: the backend cannot be set up here; ``detail`` says why, ``hint`` the fix.
    """
    if name == "process":
        return ProcessBackend(sdk_cache=state_dir / "sdk")
    if name in BACKENDS:
        raise SandboxError(
            f"the {name!r} sandbox backend is not available in this build",
            field="sandbox",
            hint="use spec.sandbox 'process' (development only) or a Bastion build with the backend",
        )
    raise SandboxError(
        f"unknown sandbox backend {name!r}",
        field="sandbox",
        hint=f"use one of {', '.join(BACKENDS)}",
    )


def probe_backends(*, state_dir: Path) -> list[BackendReport]:
    """Try every backend on this machine; one report each, in ``BACKENDS`` order."""
    reports: list[BackendReport] = []
    for name in BACKENDS:
        try:
            open_backend(name, state_dir=state_dir).close()
        except SandboxError as exc:
            reports.append(BackendReport(name=name, works=False, detail=exc.detail, fix=exc.hint))
            continue
        detail = "works (rlimits only: no isolation, development only)" if name == "process" else "works"
        reports.append(BackendReport(name=name, works=True, detail=detail))
    return reports


def default_backend(reports: list[BackendReport]) -> str:
    """The platform default: ``bwrap`` where it works, else ``process``."""
    return "bwrap" if any(r.name == "bwrap" and r.works for r in reports) else "process"


__all__ = ["BACKENDS", "BackendReport", "default_backend", "open_backend", "probe_backends"]
