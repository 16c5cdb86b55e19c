"""Choosing a backend: open one by name (fail closed), probe which work here, pick the default."""

from __future__ import annotations

import os
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


def default_backend(reports: list[BackendReport], *, root: bool | None = None) -> str:
    """``bwrap`` when its report says it works. Otherwise, not as root, ``process`` (development
    isolation only); as root (``root`` defaults to this process's euid), ``gvisor`` when its report
    says it works, and never ``process``: a worker running as root does not fall back to running
    agents without isolation, whatever it finds. ``process`` as root must be chosen by name.

    Raises:
        SandboxError: as root, neither bwrap nor gVisor works (the detail says how to fix it).
    """
    works = {report.name for report in reports if report.works}
    if "bwrap" in works:
        return "bwrap"
    if not (os.geteuid() == 0 if root is None else root):
        return "process"
    if "gvisor" in works:
        return "gvisor"
    why = "; ".join(f"{r.name}: {r.detail}" for r in reports if r.name != "process" and not r.works)
    raise SandboxError(
        f"as root, the sandbox backend `auto` is bwrap or gvisor, never process, and neither works here"
        f"{f' ({why})' if why else ''}; to fix: {_FIXES['bwrap']}, or set BASTION_SANDBOX=process to run "
        "agents without isolation knowingly (each under its own unprivileged uid)",
        hint="make bwrap work here, or set BASTION_SANDBOX=process knowingly",
    )


def reports_for_default(*, state_dir: Path) -> list[BackendReport]:
    """The probes ``default_backend`` needs, cheapest first: bwrap's, and gVisor's only as root
    when bwrap does not work (probing gVisor costs seconds)."""
    reports = [probe_backend("bwrap", state_dir=state_dir)]
    if not reports[0].works and os.geteuid() == 0:
        reports.append(probe_backend("gvisor", state_dir=state_dir))
    return reports


def _refuse(method: str, params: dict[str, Any]) -> Any:
    raise SandboxError(f"the probe made an unexpected request {method}")


_FIXES = {
    "bwrap": "install bubblewrap (apt-get install bubblewrap) and allow unprivileged user namespaces "
    "(sysctl kernel.unprivileged_userns_clone=1 where that knob exists)",
    "gvisor": "install gVisor (apt-get install runsc) and run the worker as root",
}
