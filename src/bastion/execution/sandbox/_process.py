"""The ``process`` backend: the agent in a child process under rlimits. For development.

It confines resource use only. The child runs as the calling user and can see the host's files and
network; RLIMIT_NPROC counts every process of that user and is not enforced for root at all. Use
``bwrap`` or ``gvisor`` for isolation. What it does guarantee: an interpreter without site-packages
(``-I -S``) that imports a private read-only copy of ``bastion.agent``, an environment holding only
``SandboxSpec.env`` and a few basics, and a process group that ``stop`` kills whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any, cast

from bastion.errors import LimitExceeded, RunError, SandboxError

from ._base import (
    CallError,
    Handler,
    LogSink,
    Notify,
    SandboxLimits,
    SandboxSpec,
    SandboxState,
    SandboxStatus,
)

_log = logging.getLogger(__name__)

# Mirrors of bastion.agent._runner's constants: the SDK cannot import the host's packages.
_LIMIT_EXCEEDED = -32010
_EXIT_MEMORY = 86
_REPORTED_LIMITS = frozenset({"memory", "file_size"})
"""The limits the runner reports itself; any other ``limit`` in its errors is not believed."""
_LOG_LINE_BYTES = 16 * 1024
_ENDED = (SandboxState.TERMINATED, SandboxState.FAILED)
_NOT_READY = {
    SandboxState.HOT: "the sandbox is serving another call",
    SandboxState.TERMINATED: "the sandbox was stopped and takes no more calls",
    SandboxState.FAILED: "the sandbox failed ({reason}) and takes no more calls",
}


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)

# Runs as the child's first code: limits first, then the SDK copy ahead of the stdlib so a workspace
# cannot shadow it, the workspace last so its modules cannot replace what the runner imports.
_BOOTSTRAP = """\
import json, resource, sys
sdk, packages, limits = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
for name, soft, hard in limits:
    resource.setrlimit(getattr(resource, name), (soft, hard))
del sys.argv[1:]
sys.path.insert(0, sdk)
if packages:
    sys.path.append(packages)
sys.path.append("")  # the workspace: the cwd, looked up per import (the host may rename it)
from bastion.agent._runner import main
main()
"""


class ProcessBackend:
    """Starts sandboxes as child processes. ``close`` it (or use ``with``) to remove its SDK copy."""

    name = "process"

    def __init__(self, *, sdk_cache: Path | None = None) -> None:
        """Args:
        sdk_cache: a directory where read-only SDK copies are kept, one per SDK version, and shared
            by every backend and process that names it (a worker killed with SIGKILL leaves nothing
            behind). Without it, the backend makes a private copy and removes it on ``close``.
        """
        if sdk_cache is not None:
            self._sdk = _shared_sdk(sdk_cache)
            self._cleanup = weakref.finalize(self, lambda: None)
            return
        self._sdk = Path(tempfile.mkdtemp(prefix="bastion-sdk-"))
        self._cleanup = weakref.finalize(self, _remove_tree, self._sdk)
        _copy_sdk(self._sdk)

    def start(self, spec: SandboxSpec, *, on_log: LogSink) -> ProcessSandbox:
        """Start the agent's process, ready for ``call``.

        Raises:
            SandboxError: the backend is closed or the process could not be started.
        """
        if not self._cleanup.alive:
            raise SandboxError("the process backend is closed")
        workspace = spec.workspace.resolve()
        env = {
            "PATH": "/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "HOME": str(workspace),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            # RLIMIT_AS counts reserved address space, and glibc reserves 64 MiB per thread arena:
            # without this a threaded agent hits memory_mib without using the memory.
            "MALLOC_ARENA_MAX": "2",
            **spec.env,
        }
        image = spec.image
        interpreter = str(image.interpreter) if image is not None else sys.executable
        packages = str(image.site_packages) if image is not None and image.site_packages else ""
        argv = [interpreter, "-I", "-S", "-B", "-c", _BOOTSTRAP]
        argv += [str(self._sdk), packages, json.dumps(_rlimits(spec.limits))]
        to_child, from_child, errors = os.pipe(), os.pipe(), os.pipe()
        try:
            process = subprocess.Popen(  # noqa: S603 -- our interpreter with fixed arguments
                argv,
                stdin=to_child[0],
                stdout=from_child[1],
                stderr=errors[1],
                cwd=workspace,
                env=env,
                close_fds=True,
                start_new_session=True,
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            for fd in (to_child[1], from_child[0], errors[0]):
                os.close(fd)
            raise SandboxError(f"could not start the agent process in {workspace}: {exc}") from exc
        finally:
            for fd in (to_child[0], from_child[1], errors[1]):
                os.close(fd)
        return ProcessSandbox(process, to_child[1], from_child[0], errors[0], spec.limits, on_log)

    def close(self) -> None:
        """Remove the SDK copy; running sandboxes keep working, new ones cannot start."""
        self._cleanup()

    def __enter__(self) -> ProcessBackend:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class ProcessSandbox:
    """One agent process; see ``bastion.execution.sandbox.Sandbox`` for the contract."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        write_fd: int,
        read_fd: int,
        log_fd: int,
        limits: SandboxLimits,
        on_log: LogSink,
    ) -> None:
        self._process, self._limits = process, limits
        self._write_fd = write_fd
        self._reader = open(read_fd, "rb", buffering=64 * 1024)  # noqa: SIM115 -- closed by _finish
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._state = SandboxState.WARM
        self._failure: RunError | None = None
        self._reason: str | None = None
        self._in_call = False
        self._call_number = 0
        self._reaped = self._finished = False
        self._exit_code: int | None = None
        self._cpu_seconds = 0.0
        self._deadline = threading.Condition()
        self._due: tuple[int, float] | None = None
        self._log_reader = threading.Thread(target=self._read_log, args=(log_fd, on_log), daemon=True)
        self._watchdog = threading.Thread(target=self._watch, daemon=True)
        self._log_reader.start()
        self._watchdog.start()

    def call(
        self, method: str, params: dict[str, Any], *, handler: Handler, notify: Notify | None = None
    ) -> Any:
        """Send one request into the sandbox and serve its requests until it answers.

        Raises:
            LimitExceeded: a limit was hit (the sandbox is stopped); ``limit`` names it.
            SandboxError: the agent exited, crashed or broke the protocol (the sandbox is stopped).
            CallError: the sandbox answered with a JSON-RPC error.
        """
        with self._lock:
            if self._state is not SandboxState.WARM:
                raise SandboxError(_NOT_READY[self._state].format(reason=self._reason))
            self._state, self._in_call = SandboxState.HOT, True
            self._call_number += 1
            number = self._call_number
        with self._deadline:
            self._due = (number, time.monotonic() + self._limits.wall_seconds)
            self._deadline.notify()
        try:
            result, error = self._exchange(method, params, handler, notify)
        except BaseException as exc:
            # The handler's own exceptions (RunKilled included) end the sandbox and go up unchanged;
            # for the errors raised here the sandbox has ended already and the first cause stays.
            self._end(None, f"the call raised {type(exc).__name__}")
            raise
        finally:
            with self._deadline:
                self._due = None
            with self._lock:
                self._in_call = False
                if self._state is SandboxState.HOT:
                    self._state = SandboxState.WARM
                ended = self._state in _ENDED
            if ended:
                self._finish()
        if error is not None:
            raise error
        return result

    def stop(self) -> None:
        """Kill the process group and release everything; idempotent. During a call, the call's own
        thread releases the pipes when it returns."""
        self._end(None, None)
        with self._lock:
            in_call = self._in_call
        if not in_call:
            self._finish()

    def status(self) -> SandboxStatus:
        with self._lock:
            return SandboxStatus(
                state=self._state, pid=self._process.pid, exit_code=self._exit_code, reason=self._reason
            )

    def _exchange(
        self, method: str, params: dict[str, Any], handler: Handler, notify: Notify | None
    ) -> tuple[Any, CallError | None]:
        """Serve the agent's requests until it answers: (result, None) or (None, its error)."""
        call_id = next(self._ids)
        self._write({"jsonrpc": "2.0", "id": call_id, "method": method, "params": params})
        while True:
            message = self._read()
            name, args = message.get("method"), message.get("params", {})
            if name is not None:
                if not isinstance(name, str) or not isinstance(args, dict):
                    raise self._protocol_error(
                        f"a request needs a method name and a params object: {message!r:.200}"
                    )
                args = cast(dict[str, Any], args)
                if "id" not in message:
                    if notify is not None:
                        notify(name, args)
                    continue
                reply: dict[str, Any] = {"jsonrpc": "2.0", "id": message["id"]}
                try:
                    reply["result"] = handler(name, args)
                except CallError as refusal:
                    reply["error"] = {"code": refusal.code, "message": refusal.message, "data": refusal.data}
                self._write(reply)
            elif message.get("id") == call_id and "result" in message:
                return message["result"], None
            elif message.get("id") == call_id and isinstance(message.get("error"), dict):
                return None, self._error_answer(cast(dict[str, Any], message["error"]))
            else:
                raise self._protocol_error(
                    f"not a request, notification or answer to {call_id}: {message!r:.200}"
                )

    def _write(self, message: dict[str, Any]) -> None:
        view = memoryview(_ENCODER.encode(message).encode() + b"\n")
        try:
            while view:
                view = view[os.write(self._write_fd, view) :]
        except BrokenPipeError:
            raise self._exited() from None

    def _read(self) -> dict[str, Any]:
        limit = self._limits.message_bytes
        line = self._reader.readline(limit + 1)
        if not line.endswith(b"\n"):
            if len(line) > limit:
                raise self._end(LimitExceeded("message_size", f"the agent sent a message over {limit} bytes"))
            raise self._exited()
        try:
            message = _DECODER.decode(line.decode())
        except (ValueError, RecursionError):
            raise self._protocol_error(f"the agent wrote a line that is not JSON: {line[:80]!r}") from None
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":  # pyright: ignore[reportUnknownMemberType]
            raise self._protocol_error(
                f"the agent wrote a JSON value that is not JSON-RPC 2.0: {line[:80]!r}"
            )
        return cast(dict[str, Any], message)

    def _error_answer(self, error: dict[str, Any]) -> CallError:
        code, message, data = error.get("code"), str(error.get("message", "")), error.get("data")
        data = cast(dict[str, Any], data) if isinstance(data, dict) else {}
        if code == _LIMIT_EXCEEDED and data.get("limit") in _REPORTED_LIMITS:
            raise self._end(LimitExceeded(str(data["limit"]), f"the agent reported: {message}"))
        if not isinstance(code, int):
            raise self._protocol_error(f"an error answer without an integer code: {error!r:.200}")
        return CallError(code, message, data)

    def _protocol_error(self, detail: str) -> RunError:
        return self._end(SandboxError(f"protocol error: {detail}"))

    def _end(self, failure: RunError | None, reason: str | None = None) -> RunError:
        """Mark the sandbox ended (FAILED with ``failure``, else TERMINATED) and kill its process
        group; the first cause recorded wins. Returns the error the current call should raise."""
        with self._lock:
            if self._state not in _ENDED:
                self._state = SandboxState.TERMINATED if failure is None else SandboxState.FAILED
                self._failure, self._reason = failure, reason or (str(failure) if failure else None)
            self._kill_group()
            return self._failure or SandboxError("the sandbox was stopped during the call")

    def _exited(self) -> RunError:
        """The error for a channel that closed before the answer: why the agent ended."""
        self._reap()
        with self._lock:
            code, cpu, cap = self._exit_code, self._cpu_seconds, math.ceil(self._limits.cpu_seconds)
        if code == -signal.SIGXCPU or (code == -signal.SIGKILL and cpu >= cap):
            return self._end(LimitExceeded("cpu", f"the agent used {cpu:.1f} s of CPU, the limit is {cap} s"))
        if code == -signal.SIGXFSZ:
            return self._end(LimitExceeded("file_size", "a file grew past the size limit"))
        if code == _EXIT_MEMORY:
            return self._end(LimitExceeded("memory", "the agent ran out of memory"))
        if code is not None and code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
        else:
            how = f"exited with code {code}"
        return self._end(SandboxError(f"the agent {how} before returning a result"))

    def _kill_group(self) -> None:
        # Only while the leader is unreaped: until then its pid cannot name another process group.
        if not self._reaped:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGKILL)

    def _reap(self) -> None:
        """Kill what is left of the process group, then reap the leader.

        Killing first keeps the exit status true: a leader whose channel closed because it is
        exiting has its status fixed already, and SIGKILL no longer changes it."""
        with self._lock:
            if self._reaped:
                return
            self._kill_group()
            _, status, usage = os.wait4(self._process.pid, 0)
            self._reaped = True
            self._exit_code = self._process.returncode = os.waitstatus_to_exitcode(status)
            self._cpu_seconds = usage.ru_utime + usage.ru_stime

    def _finish(self) -> None:
        with self._lock:
            if self._finished:
                return
            self._finished = True
        self._reap()
        with self._deadline:
            self._deadline.notify()
        self._watchdog.join()
        # A process that left the group could hold stderr open forever; do not wait for it.
        self._log_reader.join(timeout=2.0)
        self._reader.close()
        os.close(self._write_fd)

    def _watch(self) -> None:
        """Kill the sandbox when a call outlives ``wall_seconds``; one thread serves every call."""
        with self._deadline:
            while not self._finished:
                if self._due is None:
                    self._deadline.wait()
                    continue
                number, at = self._due
                if time.monotonic() < at:
                    self._deadline.wait(at - time.monotonic())
                    continue
                self._due = None
                with self._lock:
                    current = self._in_call and self._call_number == number
                if current:
                    wall = self._limits.wall_seconds
                    self._end(LimitExceeded("wall_time", f"the call ran longer than {wall:g} s"))

    def _read_log(self, fd: int, on_log: LogSink) -> None:
        limit, total = self._limits.log_bytes, 0
        with open(fd, "rb", buffering=64 * 1024) as stream:
            # Bounded reads: an over-long line arrives in pieces rather than filling memory.
            while line := stream.readline(_LOG_LINE_BYTES):
                total += len(line)
                if total > limit:
                    # Keep draining so the agent never blocks on a full pipe before it is killed.
                    if total - len(line) <= limit:
                        self._end(LimitExceeded("output", f"the agent wrote more than {limit} bytes of log"))
                    continue
                try:
                    on_log(line.rstrip(b"\n").decode(errors="replace"))
                except Exception:
                    _log.exception("the sandbox's log sink failed; the line is dropped")


def _rlimits(limits: SandboxLimits) -> list[tuple[str, int, int]]:
    cpu = max(1, math.ceil(limits.cpu_seconds))
    memory = limits.memory_mib * 1024 * 1024
    return [
        # The hard limit one second later: SIGXCPU (catchable, attributable) arrives before SIGKILL.
        ("RLIMIT_CPU", cpu, cpu + 1),
        ("RLIMIT_AS", memory, memory),
        ("RLIMIT_NOFILE", limits.open_files, limits.open_files),
        ("RLIMIT_NPROC", limits.processes, limits.processes),
        ("RLIMIT_FSIZE", limits.file_bytes, limits.file_bytes),
        ("RLIMIT_CORE", 0, 0),
    ]


def _copy_sdk(root: Path) -> None:
    """Copy ``bastion/__init__.py`` and ``bastion/agent/*.py`` under ``root``, read-only."""
    source = Path(__file__).resolve().parents[2]
    target = root / "bastion"
    (target / "agent").mkdir(parents=True)
    shutil.copyfile(source / "__init__.py", target / "__init__.py")
    for module in (source / "agent").glob("*.py"):
        shutil.copyfile(module, target / "agent" / module.name)
    for path in [*target.rglob("*.py")]:
        path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    for path in (target / "agent", target, root):
        path.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)


def _sdk_sources() -> list[Path]:
    source = Path(__file__).resolve().parents[2]
    return [source / "__init__.py", *sorted((source / "agent").glob("*.py"))]


def _shared_sdk(cache: Path) -> Path:
    """The cache's copy of this SDK version, made once (built aside, then renamed into place)."""
    version = hashlib.sha256(b"".join(p.read_bytes() for p in _sdk_sources())).hexdigest()[:16]
    target = cache / version
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache))
    _copy_sdk(staging)
    try:
        staging.rename(target)
    except OSError:  # another process put the same version in place first
        _remove_tree(staging)
    return target


def _remove_tree(root: Path) -> None:
    # Directories are read-only; make them writable again so the files in them can be removed.
    for path in (root, *[p for p in root.rglob("*") if p.is_dir()]):
        path.chmod(stat.S_IRWXU)
    shutil.rmtree(root, ignore_errors=True)


__all__ = ["ProcessBackend", "ProcessSandbox"]
