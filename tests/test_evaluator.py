"""The evaluator: jobs in killable child processes, each under a time budget."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest

from bastion.errors import InvalidManifest, Unavailable
from bastion.policy._evaluator import Evaluator


def pid() -> int:
    return os.getpid()


def spin(seconds: float) -> int:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return os.getpid()


def refuse() -> None:
    raise InvalidManifest("bad rule", field="spec.rules[0]", hint="fix it")


def leave_a_thread() -> int:
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
    return os.getpid()


@pytest.fixture
def evaluator() -> Iterator[Evaluator]:
    opened = Evaluator(seconds=3.0, size=1)
    yield opened
    opened.close()


def test_a_job_runs_in_a_warm_child_and_errors_come_back_as_problems(evaluator: Evaluator) -> None:
    first = evaluator.run("a job", pid)
    assert first != os.getpid()
    assert evaluator.run("a job", pid) == first  # kept warm
    with pytest.raises(InvalidManifest) as refused:
        evaluator.run("a job", refuse)
    assert refused.value.field == "spec.rules[0]" and refused.value.hint == "fix it"


def test_a_job_past_its_budget_is_killed_and_the_next_gets_a_fresh_child(evaluator: Evaluator) -> None:
    before = evaluator.run("a job", pid)
    started = time.monotonic()
    with pytest.raises(Unavailable) as exhausted:
        evaluator.run("a slow job", spin, 60.0)
    assert time.monotonic() - started < 10
    assert exhausted.value.status == 503 and exhausted.value.field == "budget"
    after = evaluator.run("a job", pid)
    assert after != before


def test_a_child_left_with_a_running_thread_is_retired(evaluator: Evaluator) -> None:
    first = evaluator.run("a job", leave_a_thread)
    assert evaluator.run("a job", pid) != first
