"""The backend-independent half of a sandbox: the JSON-RPC channel over the child's pipes.

Every backend starts one host process whose stdin/stdout carry the channel and whose stderr is the
agent's log (for ``process`` the interpreter itself; for ``bwrap`` and ``gvisor`` the launcher that
runs it). ``ChannelSandbox`` serves calls over those pipes, keeps the wall-time watchdog, reads the
log under its byte limit, tells which limit ended the agent, and stops everything. What differs
between backends is a ``Confinement``: how the sandbox's processes are all killed, which limits are
checked periodically from the host (cgroup CPU time, a full workspace), how an exit is attributed
(an OOM kill in the cgroup), what is synced before a call, and what is released after the end.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from bastion.api import parse_json
from bastion.errors import LimitExceeded, RunError, SandboxError

from ._base import (
    CallError,
    Handler,
    LogSink,
    Notify,
    SandboxLimits,
    SandboxState,
    SandboxStatus,
)

_log = logging.getLogger(__name__)

# Mirrors of bastion.agent._runner's constants: the SDK cannot import the host's packages.
LIMIT_EXCEEDED = -32010
EXIT_MEMORY = 86
_REPORTED_LIMITS = frozenset({"memory", "file_size"})
"""The limits the runner reports itself; any other ``limit`` in its errors is not believed."""
_LOG_LINE_BYTES = 16 * 1024
_ENDED = (SandboxState.TERMINATED, SandboxState.FAILED)
_NOT_READY = {
    SandboxState.HOT: "the sandbox is serving another call",
    SandboxState.TERMINATED: "the sandbox was stopped and takes no more calls",
    SandboxState.FAILED: "the sandbox failed ({reason}) and takes no more calls",
}
_GATE = 'read -r _ && exec "$@"'
"""A launcher that waits for one line on the channel before it execs the real command, so the host
can put it into its cgroups before it forks anything."""


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class Confinement:
    """What a backend adds around the channel. This base adds nothing: the process group only."""

    poll_seconds: float | None = None
    """How often the watchdog calls ``check``; None: never."""

    def exit_code(self, raw: int) -> int:
        """The agent's exit status from the host process's (a launcher may encode signals)."""
        return raw

    @property
    def live_workspace(self) -> Path | None:
        """The host path the agent's workspace lives at while it runs, when not the caller's directory."""
        return None

    def check(self) -> LimitExceeded | None:
        """A limit the sandbox is past right now, seen from the host (called by the watchdog and
        after each call)."""
        return None

    def blame(self, exit_code: int | None) -> LimitExceeded | None:
        """The limit that explains an exit the host process reports (e.g. an OOM kill)."""
        return None

    def before_call(self) -> None:
        """Called before each call is sent (e.g. to copy the host's workspace in)."""

    def kill(self) -> None:
        """Kill every process of the sandbox, those outside the leader's process group included."""

    def release(self) -> None:
        """Release what the sandbox held, after its leader was reaped; must not raise."""


def spawn(
    argv: Sequence[str],
    *,
    cwd: Path | str,
    env: Mapping[str, str],
    pass_fds: Sequence[int] = (),
    user: int | None = None,
    group: int | None = None,
    gated: bool = False,
) -> tuple[subprocess.Popen[bytes], int, int, int]:
    """Start the sandbox's host process with the channel on stdin/stdout and the log on stderr:
    (process, channel write fd, channel read fd, log read fd). With ``user``/``group`` the child
    drops to them (no supplementary groups) before exec. ``gated``: the child waits for ``open_gate``.

    Raises:
        OSError, ValueError, subprocess.SubprocessError: it could not be started.
    """
    if gated:
        argv = ["/bin/sh", "-c", _GATE, "bastion-sandbox", *argv]
    to_child, from_child, errors = os.pipe(), os.pipe(), os.pipe()
    try:
        process = subprocess.Popen(  # noqa: S603 -- fixed programs and arguments built by the backend
            list(argv),
            stdin=to_child[0],
            stdout=from_child[1],
            stderr=errors[1],
            cwd=cwd,
            env=dict(env),
            close_fds=True,
            pass_fds=tuple(pass_fds),
            start_new_session=True,
            user=user,
            group=group,
            extra_groups=[] if user is not None else None,
        )
    except BaseException:
        for fd in (to_child[1], from_child[0], errors[0]):
            os.close(fd)
        raise
    finally:
        for fd in (to_child[0], from_child[1], errors[1]):
            os.close(fd)
    return process, to_child[1], from_child[0], errors[0]


def open_gate(write_fd: int) -> None:
    """Let a ``gated`` child go on to exec its command."""
    os.write(write_fd, b"\n")


class ChannelSandbox:
    """One sandbox seen through its host process; see ``bastion.execution.sandbox.Sandbox``."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        write_fd: int,
        read_fd: int,
        log_fd: int,
        limits: SandboxLimits,
        on_log: LogSink,
        confinement: Confinement | None = None,
    ) -> None:
        self._process, self._limits = process, limits
        self._confinement = confinement or Confinement()
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
            self._prepare()
            result, error = self._exchange(method, params, handler, notify)
            # A limit the agent hit but survived (it caught ENOSPC or EAGAIN) still ends the sandbox.
            if (limit := self._confinement.check()) is not None:
                raise self._end(limit)
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
        """Kill everything in the sandbox and release it; idempotent. During a call, the call's own
        thread releases the pipes when it returns."""
        self._end(None, None)
        with self._lock:
            in_call = self._in_call
        if not in_call:
            self._finish()

    @property
    def live_workspace(self) -> Path | None:
        """Where the host sees the agent's workspace while it runs: the size-capped tmpfs the
        sandbox works in, or None when that is the caller's directory itself. The gateway's
        workspace tools must work there, or the agent and its tools would see two different trees."""
        return self._confinement.live_workspace

    def status(self) -> SandboxStatus:
        with self._lock:
            return SandboxStatus(
                state=self._state, pid=self._process.pid, exit_code=self._exit_code, reason=self._reason
            )

    def _prepare(self) -> None:
        try:
            self._confinement.before_call()
        except OSError as exc:
            limit = self._confinement.check()
            raise self._end(limit or SandboxError(f"could not prepare the workspace: {exc}")) from None

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
        try:
            view = memoryview(_ENCODER.encode(message).encode() + b"\n")
        except ValueError as exc:  # NaN or an infinity: a failed run, not a crashed worker thread
            raise self._protocol_error(f"the host cannot send a value that is not JSON ({exc})") from None
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
            message = parse_json(line.decode())  # NaN, Infinity and 1e999 are not JSON either
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
        if code == LIMIT_EXCEEDED and data.get("limit") in _REPORTED_LIMITS:
            raise self._end(LimitExceeded(str(data["limit"]), f"the agent reported: {message}"))
        if not isinstance(code, int):
            raise self._protocol_error(f"an error answer without an integer code: {error!r:.200}")
        return CallError(code, message, data)

    def _protocol_error(self, detail: str) -> RunError:
        return self._end(SandboxError(f"protocol error: {detail}"))

    def _end(self, failure: RunError | None, reason: str | None = None) -> RunError:
        """Mark the sandbox ended (FAILED with ``failure``, else TERMINATED) and kill all of it; the
        first cause recorded wins. Returns the error the current call should raise."""
        with self._lock:
            if self._state not in _ENDED:
                self._state = SandboxState.TERMINATED if failure is None else SandboxState.FAILED
                self._failure, self._reason = failure, reason or (str(failure) if failure else None)
            self._kill_all()
            return self._failure or SandboxError("the sandbox was stopped during the call")

    def _exited(self) -> RunError:
        """The error for a channel that closed before the answer: why the agent ended."""
        self._reap()
        with self._lock:
            code, cpu, cap = self._exit_code, self._cpu_seconds, math.ceil(self._limits.cpu_seconds)
        blamed = self._confinement.blame(code) or self._confinement.check()
        if blamed is not None:
            return self._end(blamed)
        if code == -signal.SIGXCPU or (code == -signal.SIGKILL and cpu >= cap):
            return self._end(LimitExceeded("cpu", f"the agent used {cpu:.1f} s of CPU, the limit is {cap} s"))
        if code == -signal.SIGXFSZ:
            return self._end(LimitExceeded("file_size", "a file grew past the size limit"))
        if code == EXIT_MEMORY:
            return self._end(LimitExceeded("memory", "the agent ran out of memory"))
        if code is not None and code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
        else:
            how = f"exited with code {code}"
        return self._end(SandboxError(f"the agent {how} before returning a result"))

    def _kill_all(self) -> None:
        # The group only while the leader is unreaped: until then its pid cannot name another group.
        if not self._reaped:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGKILL)
        self._confinement.kill()

    def _reap(self) -> None:
        """Kill what is left of the sandbox, then reap the leader.

        Killing first keeps the exit status true: a leader whose channel closed because it is
        exiting has its status fixed already, and SIGKILL no longer changes it."""
        with self._lock:
            if self._reaped:
                return
            self._kill_all()
            _, status, usage = os.wait4(self._process.pid, 0)
            self._reaped = True
            self._process.returncode = os.waitstatus_to_exitcode(status)
            self._exit_code = self._confinement.exit_code(self._process.returncode)
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
        try:
            self._confinement.release()
        except Exception:
            _log.exception("releasing sandbox %s failed", self._process.pid)

    def _watch(self) -> None:
        """Kill the sandbox when a call outlives ``wall_seconds`` or ``check`` finds a limit passed;
        one thread per sandbox."""
        poll = self._confinement.poll_seconds
        next_check = time.monotonic() + poll if poll else math.inf
        with self._deadline:
            while not self._finished:
                now = time.monotonic()
                if now >= next_check:
                    assert poll is not None
                    next_check = now + poll
                    if (limit := self._confinement.check()) is not None:
                        self._end(limit)
                    continue
                if self._due is None:
                    self._deadline.wait(None if next_check == math.inf else next_check - now)
                    continue
                number, at = self._due
                if now < at:
                    self._deadline.wait(min(at, next_check) - now)
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


def rlimits(
    limits: SandboxLimits, *, address_space: bool = True, processes: bool = True
) -> list[tuple[str, int, int]]:
    """The rlimits the bootstrap sets on itself before the agent runs. ``processes=False`` where a
    pids cgroup counts them instead (RLIMIT_NPROC would hit first and hide which limit it was)."""
    cpu = max(1, math.ceil(limits.cpu_seconds))
    memory = limits.memory_mib * 1024 * 1024
    chosen = [
        # The hard limit one second later: SIGXCPU (catchable, attributable) arrives before SIGKILL.
        ("RLIMIT_CPU", cpu, cpu + 1),
        ("RLIMIT_NOFILE", limits.open_files, limits.open_files),
        ("RLIMIT_FSIZE", limits.file_bytes, limits.file_bytes),
        ("RLIMIT_CORE", 0, 0),
    ]
    if address_space:
        chosen.insert(1, ("RLIMIT_AS", memory, memory))
    if processes:
        chosen.append(("RLIMIT_NPROC", limits.processes, limits.processes))
    return chosen


# Runs as the child's first code: limits first, then the SDK copy ahead of the stdlib so a workspace
# cannot shadow it, the image's packages after it, and the workspace last so its modules cannot
# replace what the runner imports. The workspace entry is "." (or /proc/self/cwd) -- the cwd, not
# its path: a warm sandbox's workspace may be renamed on the host after start. Python turns "." into the cwd's path
# when it first makes a finder for it, so the finder made while starting up is dropped before the
# runner waits for its first call; the next one is made at the first import from the workspace.
BOOTSTRAP = """\
import json, resource, sys
sdk, packages, limits, workspace = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
for name, soft, hard in limits:
    resource.setrlimit(getattr(resource, name), (soft, hard))
del sys.argv[1:]
sys.path.insert(0, sdk)
if packages:
    sys.path.insert(1, packages)
sys.path.append(workspace)
from bastion.agent._runner import main
sys.path_importer_cache.pop(workspace, None)
main()
"""


def bootstrap_argv(
    interpreter: str, sdk: str, packages: str, limits: list[tuple[str, int, int]], *, workspace: str = "."
) -> list[str]:
    """``workspace``: the ``sys.path`` entry of the agent's modules, the cwd. ``/proc/self/cwd``
    where the agent's uid cannot traverse the directories above its workspace (Python lists the
    entry "." by its absolute path)."""
    return [interpreter, "-I", "-S", "-B", "-c", BOOTSTRAP, sdk, packages, json.dumps(limits), workspace]


def base_env(home: str, env: Mapping[str, str]) -> dict[str, str]:
    """The sandbox's whole environment: a few basics and ``SandboxSpec.env``."""
    return {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": home,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        # RLIMIT_AS counts reserved address space, and glibc reserves 64 MiB per thread arena:
        # without this a threaded agent hits memory_mib without using the memory.
        "MALLOC_ARENA_MAX": "2",
        **env,
    }
