"""The sandbox's main program: serve the host's ``run`` requests over the channel.

For ``run`` with params ``{"entrypoint": "module:function", "input": ..., "env": {...}}`` it sets
the environment variables ``env`` gives (a warm sandbox started before its run was known), imports
the module from the workspace, calls ``function(input)`` and answers with the result. Errors become JSON-RPC
errors the host can tell apart:

* ``AGENT_ERROR`` (-32000): the agent raised; ``data`` has ``type="agent_error"``, ``exception`` and
  a ``traceback`` of the workspace's frames only, or ``type="invalid_result"`` for a result that
  is not JSON.
* ``LIMIT_EXCEEDED`` (-32010): the agent ran out of memory (``MemoryError``) or wrote a file past
  its size limit (``EFBIG``); ``data`` has ``type="limit_exceeded"`` and ``limit``.

``ping`` answers ``{"ready": true}``: the host's warm pool asks it once after a start, so that a
sandbox counted warm has its interpreter up and this loop serving.

The host may send ``run`` any number of times (modules imported by one run stay imported for the
next, with their state); the runner exits when the host closes the channel.
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from ._api import begin_run, end_run
from ._channel import Channel, current, encode, install
from ._shim import prestart, start_from_environment

AGENT_ERROR = -32000
LIMIT_EXCEEDED = -32010
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
EXIT_MEMORY = 86
"""The exit code when even reporting a MemoryError failed; the host reads it as the memory limit."""
TRACEBACK_FRAMES = 20


class _Failure(Exception):
    """A run that ends in a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: dict[str, Any]) -> None:
        super().__init__(message)
        self.error: dict[str, Any] = {"code": code, "message": message, "data": data}


def main() -> None:
    """Serve the host until it closes the channel."""
    channel = Channel.from_stdio()
    install(channel)
    # Ignored, a write past RLIMIT_FSIZE fails with EFBIG instead of killing the process silently,
    # so it can be reported as the file_size limit (subprocesses inherit the ignored signal too).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    # The OpenAI/Anthropic endpoint on loopback, when the host gave this run a token (see _shim).
    start_from_environment(channel)
    try:
        while (message := channel.receive()) is not None:
            if "id" in message:
                # Read per run: a warm sandbox's workspace is renamed when a run takes it.
                channel.write(_answer(message, os.getcwd()))
    except MemoryError:
        os._exit(EXIT_MEMORY)


def _answer(message: dict[str, Any], workspace: str) -> bytes:
    reply: dict[str, Any] = {"jsonrpc": "2.0", "id": message["id"]}
    method, params = message.get("method"), message.get("params")
    if method == "ping":
        _warm_up()
        prestart(current())
        return encode({**reply, "result": {"ready": True}})
    if method != "run":
        reply["error"] = {"code": METHOD_NOT_FOUND, "message": f"the sandbox has no method {method!r}"}
        return encode(reply)
    try:
        value = _run(params if isinstance(params, dict) else {}, workspace)  # pyright: ignore[reportUnknownArgumentType]
    except _Failure as failure:
        return encode({**reply, "error": failure.error})
    try:
        return encode({**reply, "result": value})
    except (TypeError, ValueError, RecursionError) as exc:
        text = f"the agent's result is not JSON-serializable: {exc}"
        return encode(
            {**reply, "error": {"code": AGENT_ERROR, "message": text, "data": {"type": "invalid_result"}}}
        )


def _warm_up() -> None:
    """Look for a module that does not exist: the import system lists every ``sys.path`` directory
    once and caches it, so the agent's first import does not pay for that (in gVisor, much)."""
    importlib.util.find_spec("_bastion_warm_up_no_such_module")
    # Not the workspace's finder, though: it holds the workspace's path, which the host may rename.
    for entry in ("", ".", os.getcwd()):
        sys.path_importer_cache.pop(entry, None)


def _run(params: dict[str, Any], workspace: str) -> Any:
    entrypoint = params.get("entrypoint")
    module_name, _, function_name = str(entrypoint).partition(":")
    if not isinstance(entrypoint, str) or not module_name or not function_name:
        raise _Failure(INVALID_PARAMS, f"entrypoint must be 'module:function', got {entrypoint!r}", {})
    env = params.get("env")
    if isinstance(env, dict):
        # The sandbox's own environment, which the host gave for this run.
        os.environ.update({str(k): str(v) for k, v in env.items()})  # noqa: TID251  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType]
        # A warm sandbox learns its run's token only now: start the model endpoint if it is new.
        start_from_environment(current())
    begin_run()
    returned: Any = None
    limit: str | None = None
    try:
        target: Any = _import(module_name, workspace)
        for attribute in function_name.split("."):
            target = getattr(target, attribute)
        returned = target(params.get("input"))
    except MemoryError:
        # Report after the handler has dropped the exception: its traceback keeps the agent's
        # frames, and with them the memory the report needs, alive.
        limit = "memory"
    except Exception as exc:
        if _file_too_large(exc):
            limit = "file_size"
        else:
            raise _agent_error(exc, workspace) from None
    finally:
        value = end_run(returned)
    if limit is not None:
        data = {"type": "limit_exceeded", "limit": limit}
        text = "out of memory" if limit == "memory" else "a file grew past the size limit"
        raise _Failure(LIMIT_EXCEEDED, text, data)
    return value


def _import(name: str, workspace: str) -> Any:
    """The entrypoint's module. A top-level module that is a file of the workspace is read and
    executed directly: the import system would first stat every ``sys.path`` directory and look
    for a bytecode cache, each a round trip to gVisor's file server (milliseconds per run).
    Anything else -- a package, a dotted name, a module already imported -- is a plain import."""
    if "." in name or name in sys.modules or not name.isidentifier():
        return importlib.import_module(name)
    path = os.path.join(workspace, name + ".py")
    try:
        with open(path, "rb") as source_file:
            source = source_file.read()
    except OSError:  # not there, or a directory: the import system finds it or says why not
        return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None  # a ".py" location always has a loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        exec(compile(source, path, "exec", dont_inherit=True), module.__dict__)  # noqa: S102 -- the agent's own code, in its sandbox
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _file_too_large(exc: BaseException | None) -> bool:
    # The EFBIG may arrive wrapped: follow the chain the agent's own handlers made.
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _agent_error(exc: Exception, workspace: str) -> _Failure:
    try:
        root = Path(workspace).resolve()
    except (OSError, RuntimeError):
        root = Path(workspace)
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__) if _inside(frame.filename, root)]
    lines = traceback.format_list(frames[-TRACEBACK_FRAMES:]) + traceback.format_exception_only(exc)
    name = type(exc).__name__
    data = {"type": "agent_error", "exception": name, "traceback": "".join(lines).rstrip("\n")}
    return _Failure(AGENT_ERROR, f"{name}: {exc}" if str(exc) else name, data)


def _inside(filename: str, workspace: Path) -> bool:
    try:
        return Path(filename).resolve().is_relative_to(workspace)
    except (OSError, ValueError):
        return False
