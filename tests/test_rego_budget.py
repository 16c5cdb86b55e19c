"""Rego has a time budget: an input that makes a module slow is a deny, never a hang or an allow."""

from __future__ import annotations

import time

import pytest

from bastion.policy import _rego, compile_policy

from ._policy import call, grant, policy

GRANTS = [grant("g", ["kb.search", "fs.read"])]

# The agent chooses n: small is instant, large takes rego-cpp many seconds.
SLOW_FOR_LARGE_N = """
package bastion
import rego.v1
default allow := false
allow if { not never }
never if {
  some a, b
  numbers.range(1, input.args.n)[a]
  numbers.range(1, input.args.n)[b]
  a * b == -1
}
"""
FAST = """
package bastion
import rego.v1
default allow := false
allow if { input.tool.name == "kb.search" }
"""


def test_a_slow_evaluation_is_denied_at_its_budget_and_so_are_calls_waiting_on_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_rego, "BUDGET_SECONDS", 0.5)
    slow = compile_policy([policy("slow", rego=SLOW_FOR_LARGE_N)], GRANTS, strict=True)
    assert slow.decide(call({"n": 3})).allowed
    started = time.monotonic()
    stuck = slow.decide(call({"n": 700}))
    assert time.monotonic() - started < 3
    assert stuck.effect == "deny" and "budget" in " ".join(stuck.reasons)
    # The abandoned evaluation still holds the module: the next call waits its budget, then is denied.
    started = time.monotonic()
    waiting = slow.decide(call({"n": 3}))
    assert time.monotonic() - started < 3
    assert waiting.effect == "deny" and "busy" in " ".join(waiting.reasons)
    # Another policy's module is not held up.
    fast = compile_policy([policy("fast", rego=FAST)], GRANTS, strict=True)
    started = time.monotonic()
    assert fast.decide(call({"n": 700})).allowed
    assert time.monotonic() - started < 0.5
