"""Choosing a backend: open one by name (fail closed), probe which work here, pick the default."""

from __future__ import annotations

import shutil
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from bastion.errors import LimitExceeded, SandboxError

from ._base import BackendReport, SandboxBackend, SandboxLimits, SandboxSpec

BACKENDS = ("process", "bwrap", "gvisor")
_PROBE = textwrap.dedent("""\
    import os
    def main(_):
        return {"uid": os.getuid(), "pid": os.getpid()}
""")


def open_backend(name: str, *, state_dir: Path) -> SandboxBackend:
    """The backend ``name``, keeping its files under ``state_dir``. Never another one.

    Raises:
        SandboxError: the name is unknown or that backend cannot work here; ``detail`` says why
            and how to fix it (also in ``hint``).
    """
    from ._bwrap import BwrapBackend
    from ._gvisor import GvisorBackend
    from ._process import ProcessBackend

    if name == "process":
        return ProcessBackend(sdk_cache=state_dir / "sdk")
    if name == "bwrap":
        return BwrapBackend(state_dir=state_dir)
    if name == "gvisor":
        return GvisorBackend(state_dir=state_dir)
    raise SandboxError(
        f"unknown sandbox backend {name!r}; to fix: choose one of {', '.join(BACKENDS)}",
        hint=f"choose one of {', '.join(BACKENDS)}",
    )


def probe_backends(*, state_dir: Path) -> list[BackendReport]:
    """One report per backend in ``BACKENDS``, each from starting a tiny sandbox and calling it."""
    return [probe_backend(name, state_dir=state_dir) for name in BACKENDS]


def probe_backend(name: str, *, state_dir: Path) -> BackendReport:
    try:
        backend = open_backend(name, state_dir=state_dir)
    except SandboxError as exc:
        return BackendReport(name=name, works=False, detail=exc.detail, fix=exc.hint or _FIXES.get(name))
    workspace = Path(tempfile.mkdtemp(prefix="bastion-probe-"))
    logs: list[str] = []
    try:
        (workspace / "probe.py").write_text(_PROBE)
        began = time.monotonic()
        spec = SandboxSpec(workspace=workspace, limits=SandboxLimits(wall_seconds=30, cpu_seconds=10))
        sandbox = backend.start(spec, on_log=logs.append)
        try:
            seen: Any = sandbox.call("run", {"entrypoint": "probe:main", "input": None}, handler=_refuse)
        finally:
            sandbox.stop()
        took = (time.monotonic() - began) * 1000
        detail = f"started and answered in {took:.0f} ms as uid {seen['uid']}"
        return BackendReport(name=name, works=True, detail=detail)
    except (SandboxError, LimitExceeded) as exc:
        tail = f"; its log: {' | '.join(logs[-3:])}" if logs else ""
        return BackendReport(name=name, works=False, detail=f"{exc.detail}{tail}", fix=_FIXES.get(name))
    finally:
        backend.close()
        shutil.rmtree(workspace, ignore_errors=True)


def default_backend(reports: list[BackendReport]) -> str:
    """``bwrap`` when its report says it works, else ``process`` (development isolation only)."""
    works = {report.name for report in reports if report.works}
    return "bwrap" if "bwrap" in works else "process"


def _refuse(method: str, params: dict[str, Any]) -> Any:
    raise SandboxError(f"the probe made an unexpected request {method}")


_FIXES = {
    "bwrap": "install bubblewrap (apt-get install bubblewrap) and allow unprivileged user namespaces "
    "(sysctl kernel.unprivileged_userns_clone=1 where that knob exists)",
    "gvisor": "install gVisor (apt-get install runsc) and run the worker as root",
}
