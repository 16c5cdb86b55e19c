"""PII in tool results and model outputs: Presidio's pattern recognizers, no model download."""

from __future__ import annotations

from typing import Any

import pytest

from bastion.policy import compile_policy

from ._policy import blocking, policy

REDACT = compile_policy([policy("pii", pii="redact")], [])
DENY_CARDS = compile_policy([policy("pii", pii={"action": "deny", "entities": ["CREDIT_CARD"]})], [])


@pytest.mark.parametrize(
    ("text", "entity"),
    [
        ("write to jane.doe@example.org today", "EMAIL_ADDRESS"),
        ("call +1 415-555-0132 after nine", "PHONE_NUMBER"),
        ("card 4111 1111 1111 1111 exp 12/29", "CREDIT_CARD"),
        ("pay to GB82 WEST 1234 5698 7654 32 please", "IBAN_CODE"),
        ("my ssn is 536-22-8846", "US_SSN"),
        ("the server is 10.20.30.40", "IP_ADDRESS"),
        ("or 2001:db8::8a2e:370:7334", "IP_ADDRESS"),
        ("key sk-proj-AbCdEfGhIjKlMnOpQrStUv123456", "API_KEY"),
        ("token ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", "API_KEY"),
        ("aws AKIAIOSFODNN7EXAMPLE", "API_KEY"),
    ],
)
def test_each_entity_is_found_and_redacted(text: str, entity: str) -> None:
    decision = REDACT.inspect_output(text, where="tool_result")
    assert decision.effect == "redact", decision
    assert f"[PII:{entity}]" in decision.redacted
    assert decision.rule_ids == ("policy/pii/pii",)
    assert entity in decision.reasons[0]


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112",  # 16 digits that fail the Luhn check
        "order 1234567812345678 shipped",
        "IBAN GB00 WEST 1234 5698 7654 32",  # bad checksum
        "version 1.2.3.4.5 of the tool",
        "the word sk-short is not a key",
        "nothing personal here at all",
        "user at example dot com",
    ],
)
def test_look_alikes_are_not_pii(text: str) -> None:
    decision = REDACT.inspect_output(text, where="tool_result")
    assert decision.effect == "allow", decision.reasons


def test_deny_withholds_and_only_the_listed_entities_count() -> None:
    assert DENY_CARDS.inspect_output({"card": "4111-1111-1111-1111"}).effect == "deny"
    assert DENY_CARDS.inspect_output({"mail": "a.b@example.com"}).effect == "allow"


def test_nested_values_are_redacted_in_place() -> None:
    value: Any = {"rows": [{"email": "x.y@example.com", "n": 1}], "note": "ip 192.168.0.7 ok"}
    decision = REDACT.inspect_output(value, where="model_output")
    assert decision.redacted == {
        "rows": [{"email": "[PII:EMAIL_ADDRESS]", "n": 1}],
        "note": "ip [PII:IP_ADDRESS] ok",
    }


def test_the_strongest_policy_wins_and_both_rules_are_named() -> None:
    cp = compile_policy(
        [policy("a", pii="redact"), policy("b", pii={"action": "deny", "entities": ["EMAIL_ADDRESS"]})], []
    )
    decision = cp.inspect_output("mail me: q@example.com")
    assert decision.effect == "deny" and decision.rule_ids == ("policy/b/pii",)


def test_output_rules_apply_where_they_say() -> None:
    rule = blocking("confidential", action="redact")
    rule["spec"]["rules"][0]["appliesTo"] = ["tool_result"]
    rule["spec"]["rules"][0]["tools"] = ["kb.*"]
    cp = compile_policy([rule], [])
    hit = cp.inspect_output({"a": "CONFIDENTIAL\tplan"}, where="tool_result", tool="kb.search")
    assert hit.effect == "redact" and hit.redacted == {"a": "[REDACTED]"}
    assert cp.inspect_output("confidential", where="tool_result", tool="fs.read").effect == "allow"
    assert cp.inspect_output("confidential", where="model_output").effect == "allow"


def test_no_pii_setting_means_no_analyzer_call() -> None:
    clean = compile_policy([policy("p")], [])
    assert clean.inspect_output("jane@example.org").effect == "allow"


BROKEN_PHONENUMBERS = """
import sys, threading, time
sys.modules["phonenumbers.data.region_US"] = None  # a broken install: this module cannot be imported
from bastion.policy import compile_policy
from tests._policy import policy

checks = compile_policy([policy("pii", pii="redact")], [])
results = []

def check():
    began = time.monotonic()
    decision = checks.inspect_output("call +1 415-555-0132 after nine")
    results.append((decision.effect, decision.rule_ids, round(time.monotonic() - began, 2)))

for _ in range(2):
    check()  # the first fails inside phonenumbers; the second must not wait on what it left
threads = [threading.Thread(target=check) for _ in range(3)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(results)
"""


def test_a_broken_pii_install_denies_at_once_and_never_hangs(tmp_path: Any) -> None:
    """A ModuleNotFoundError inside ``phonenumbers`` during a check once left a lock of its own
    held, so every later check hung (to the test's timeout): each check must deny, quickly."""
    import subprocess
    import sys
    from pathlib import Path

    project = Path(__file__).resolve().parents[1]
    try:
        done = subprocess.run(
            [sys.executable, "-c", BROKEN_PHONENUMBERS],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError("a PII check hung after one failed inside phonenumbers") from None
    assert done.returncode == 0, done.stderr
    results: list[tuple[str, tuple[str, ...], float]] = eval(done.stdout)  # noqa: S307 - our own repr
    assert len(results) == 5
    assert all(effect == "deny" and rule_ids == ("policy/error",) for effect, rule_ids, _ in results), results
    # Only the first pays for loading Presidio; the others fail at once.
    assert all(seconds < 1.0 for _, _, seconds in results[1:]), results
