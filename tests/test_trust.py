"""Trust tiers by operators (issue 6, item 4): promote, demote, revoke, restore; the earned tier is
what policy sees; a revoked agent starts no runs and its unfinished runs end as Revoked; every
change is journaled, hash-chained, and an edited change is detected."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import text

from bastion.errors import Conflict, Forbidden, NotFound, UserError

from ._agents import builtin_tool, code_agent, grant_for, wait_finished
from ._docs import raw
from .conftest import Tenant

USES_TOOL = """
from bastion import agent

def main(input):
    try:
        agent.tools.call("fs.list")
        return "allowed"
    except agent.ToolDenied as denied:
        return denied.reasons
"""

SLEEPS = "import time\n\ndef main(input):\n    time.sleep(60)\n"


def _restricted_tool() -> dict[str, object]:
    tool = builtin_tool("fs.list")
    tool["spec"]["minTier"] = "T2"  # type: ignore[index]
    return tool


def test_an_earned_tier_is_what_policy_sees(tenant: Tenant) -> None:
    with tenant.client() as client:
        client.apply(
            raw(
                code_agent("climber", USES_TOOL, tools=["fs.list"]),
                _restricted_tool(),
                grant_for("climber", "fs.list"),
            )
        )
        before = wait_finished(client, client.create_run("climber")["id"])
        assert any("needs tier T2" in r for r in before["result"]), before

        view = client.change_trust("climber", "promote", reason="reviewed by the security team", tier="T2")
        assert (view["declaredTier"], view["tier"], view["revoked"]) == ("T0", "T2", False)
        after = wait_finished(client, client.create_run("climber")["id"])
        assert after["result"] == "allowed"

        client.change_trust("climber", "demote", reason="back to basics")
        assert client.trust("climber")["tier"] == "T1"
        denied = wait_finished(client, client.create_run("climber")["id"])
        assert any("needs tier T2" in r for r in denied["result"])

        events = client.trust("climber")["events"]
        assert [(e["seq"], e["action"], e["fromTier"], e["toTier"]) for e in events] == [
            (1, "promote", "T0", "T2"),
            (2, "demote", "T2", "T1"),
        ]
        assert (
            events[0]["actor"].startswith("key ") and events[0]["reason"] == "reviewed by the security team"
        )


def test_a_revoked_agent_starts_nothing_and_its_runs_end_revoked(tenant: Tenant) -> None:
    with tenant.client() as client:
        client.apply(raw(code_agent("rogue", SLEEPS, limits={"wallSeconds": 120})))
        running = client.create_run("rogue")
        for event in client.events(running["id"]):
            if event["type"] == "state" and event["data"]["state"] == "Running":
                break
        client.change_trust("rogue", "revoke", reason="exfiltration attempt")
        done = wait_finished(client, running["id"], timeout=20)
        assert done["state"] == "Revoked" and "exfiltration attempt" in done["reason"]

        with pytest.raises(Conflict, match="revoked") as refused:
            client.create_run("rogue")
        assert "bastion trust restore" in (refused.value.hint or "")
        with pytest.raises(Conflict, match="revoked already"):
            client.change_trust("rogue", "revoke", reason="again")

        client.change_trust("rogue", "restore", reason="fixed")
        client.apply(raw(code_agent("rogue", "def main(input):\n    return 'back'\n")))
        assert wait_finished(client, client.create_run("rogue")["id"])["result"] == "back"
        assert [e["action"] for e in client.trust("rogue")["events"]] == ["revoke", "restore"]


def test_trust_changes_are_checked(tenant: Tenant, other_tenant: Tenant) -> None:
    with tenant.client() as client:
        client.apply(raw(code_agent("steady", "def main(input):\n    return 1\n")))
        with pytest.raises(UserError, match="cannot be demoted"):
            client.change_trust("steady", "demote", reason="below T0")
        client.change_trust("steady", "promote", reason="top", tier="T4")
        with pytest.raises(UserError, match="cannot be promoted"):
            client.change_trust("steady", "promote", reason="past T4")
        with pytest.raises(Conflict, match="not revoked"):
            client.change_trust("steady", "restore", reason="nothing to restore")
        with pytest.raises(NotFound):
            client.change_trust("ghost", "promote", reason="no such agent")
    with tenant.client("developer") as developer, pytest.raises(Forbidden):
        developer.change_trust("steady", "revoke", reason="not my call")
    with other_tenant.client() as outsider:
        with pytest.raises(NotFound):
            outsider.trust("steady")
        with pytest.raises(NotFound):
            outsider.change_trust("steady", "revoke", reason="cross-tenant")


def test_an_edited_trust_change_is_detected(tenant: Tenant) -> None:
    with tenant.client() as client:
        client.apply(raw(code_agent("audited", "def main(input):\n    return 1\n")))
        client.change_trust("audited", "promote", reason="one")
        client.change_trust("audited", "promote", reason="two")
        client.change_trust("audited", "demote", reason="three")
        assert client.trust("audited")["verified"]
        engine = tenant.server.bastion.store.engine
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE trust_events SET reason = 'nothing to see' WHERE agent = 'audited' AND seq = 2")
            )
        view = client.trust("audited")
        assert (view["verified"], view["brokenSeq"]) == (False, 2)
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM trust_events WHERE agent = 'audited' AND seq = 3"))
            conn.execute(text("UPDATE trust_events SET reason = 'two' WHERE agent = 'audited' AND seq = 2"))
        assert client.trust("audited")["brokenSeq"] == 3


def test_the_cli_changes_and_shows_trust(tenant: Tenant) -> None:
    env = {
        **os.environ,
        "BASTION_URL": tenant.server.url,
        "BASTION_API_KEY": tenant.key("operator"),
        "COLUMNS": "200",
    }
    with tenant.client() as client:
        client.apply(raw(code_agent("cli-agent", "def main(input):\n    return 1\n")))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bastion", "trust", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    promoted = cli("promote", "cli-agent", "--reason", "earned it")
    assert promoted.returncode == 0 and "tier T1" in promoted.stdout, promoted.stderr
    revoked = cli("revoke", "cli-agent", "-r", "suspicious")
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    shown = cli("show", "cli-agent")
    assert shown.returncode == 0 and "earned it" in shown.stdout and "suspicious" in shown.stdout
    missing = cli("promote", "cli-agent")
    assert missing.returncode != 0 and "--reason" in missing.stderr
    beyond = cli("promote", "cli-agent", "--to", "T9", "--reason", "x")
    assert beyond.returncode != 0 and "Traceback" not in beyond.stderr
