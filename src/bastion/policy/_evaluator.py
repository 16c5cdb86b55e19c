"""Expensive evaluations (what-if) in child processes, each with a time budget.

A what-if runs operator-supplied policy (patterns, Rego) over recorded agent values. Run in the
API process, a pathological one would hold the GIL for as long as it takes, and every other
request, ``/healthz`` included, would wait behind it; a thread cannot be stopped either. So the
evaluation runs in a child process the server can kill: the caller's thread waits on a pipe for at
most ``seconds`` and then kills the child, and the request gets a 503 problem+json with a hint.

Children are spawned (not forked: the server has threads and open database connections) and
kept warm between jobs (a fresh one's start-up is not counted against the budget); at most ``size`` jobs run at once, further callers wait for a free
child within their own budget. A job is a module-level function and picklable arguments; a
``BastionError`` it raises comes back as the same problem (type, field, hint).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from bastion.errors import BastionError, ServerError, Unavailable, error_for_problem

log = logging.getLogger("bastion.evaluator")
STARTUP_SECONDS = 120.0
"""How long a fresh child may take to import Bastion (outside the job's budget)."""


def _serve(conn: Connection) -> None:
    """The child's loop: run each job it is sent and send back ("ok", result) or ("error", problem)."""
    conn.send(("ready", None))  # once imports are done: starting a child is not the job's time
    while True:
        try:
            job: tuple[Callable[..., Any], tuple[Any, ...]] | None = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        function, args = job
        try:
            answer: tuple[str, Any] = ("ok", function(*args))
        except BastionError as error:
            answer = ("error", error.to_problem())
        except Exception as exc:  # reported to the parent, which logs it and answers 500
            answer = ("crash", f"{type(exc).__name__}: {exc}"[:500])
        # A thread left running (a Rego evaluation abandoned at its own budget) would go on
        # burning CPU in a warm child: such a child is retired, and its threads die with it.
        retire = threading.active_count() > 1
        conn.send((*answer, retire))
        if retire:
            return


class _Child:
    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child_end = context.Pipe()
        self.process: BaseProcess = context.Process(
            target=_serve, args=(child_end,), name="bastion-evaluator", daemon=True
        )
        self.process.start()
        child_end.close()
        if not self.conn.poll(STARTUP_SECONDS) or self.conn.recv() != ("ready", None):
            self.kill()
            raise Unavailable(
                f"the evaluator process did not start within {STARTUP_SECONDS:g} s",
                hint="the server is overloaded; retry later",
            )

    def kill(self) -> None:
        self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


class Evaluator:
    """A small pool of killable child processes for budgeted evaluations."""

    def __init__(self, *, seconds: float, size: int = 2) -> None:
        self.seconds = seconds
        self._idle: list[_Child] = []
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._closed = False

    def run(self, what: str, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` in a child, or a 503 if it (with the wait for a child) takes longer
        than the budget. Blocks the calling thread: call it from a worker thread, never the loop."""
        if not self._slots.acquire(timeout=self.seconds):
            raise self._exhausted(what, busy=True)
        try:
            child = self._take()
            deadline = time.monotonic() + self.seconds
            try:
                child.conn.send((function, args))
                if not child.conn.poll(max(0.0, deadline - time.monotonic())):
                    child.kill()
                    log.warning("%s ran out of its %.1f s budget; its process was killed", what, self.seconds)
                    raise self._exhausted(what, busy=False)
                status, value, retire = child.conn.recv()
            except (EOFError, OSError, BrokenPipeError) as exc:
                child.kill()
                raise ServerError(f"{what} failed: its process ended ({exc or type(exc).__name__})") from None
            if retire:
                child.kill()
            else:
                self._give_back(child)
        finally:
            self._slots.release()
        if status == "ok":
            return value
        if status == "error":
            raise error_for_problem(value, int(value.get("status", 500)))
        log.error("%s failed in its process: %s", what, value)
        raise ServerError(f"{what} failed; the error was logged")

    def _exhausted(self, what: str, *, busy: bool) -> Unavailable:
        waited = "waited for a free evaluator" if busy else "took"
        return Unavailable(
            f"{what} {waited} longer than its budget of {self.seconds:g} s and was stopped",
            field="budget",
            hint="simplify the patterns or Rego of the proposed policy, judge a shorter run, or retry "
            "when the server is less busy (the budget is BASTION_EVALUATION_SECONDS)",
        )

    def _take(self) -> _Child:
        with self._lock:
            while self._idle:
                child = self._idle.pop()
                if child.process.is_alive():
                    return child
                child.kill()
        return _Child()

    def _give_back(self, child: _Child) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(child)
                return
        child.kill()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for child in idle:
            with contextlib.suppress(OSError):
                child.conn.send(None)
            child.process.join(timeout=2)
            if child.process.is_alive():
                child.kill()
