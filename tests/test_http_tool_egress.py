"""HTTP tools are judged by the egress rules, like ``http.fetch``.

An HTTP Tool's URL is written by whoever may write Tools, a developer included: an operator who
limits egress (a grant's ``egress``, a Policy rule's ``egressAllow``) limits where a developer
can point a Tool. A grant without ``egress`` does not restrict HTTP tools (the Tool it names
decides the host); a Policy ``egressAllow`` rule that covers the tool does, for every grant.
"""

from __future__ import annotations

from typing import Any

from bastion.api import RawDocument
from bastion.policy import CallContext, Subject, ToolInfo, compile_policy

from ._agents import code_agent, grant_for, http_tool, in_namespace, wait_finished
from ._docs import raw
from ._hostile_server import Hostile, hostile_server
from ._policy import NOW, grant, policy
from .conftest import Tenant, unique

AGENT = """
from bastion import agent

def main(input):
    try:
        return {"status": agent.tools.call("weather", city=input["data"])["status"]}
    except agent.ToolDenied as exc:
        return {"denied": exc.reasons}
"""
SUBJECT = Subject(name="forecaster", tools=("weather",))


def _call(url: str) -> CallContext:
    return CallContext(subject=SUBJECT, tool=ToolInfo(name="weather", url=url), args={"city": "x"}, now=NOW)


# --- the decision ------------------------------------------------------------------------------


def test_a_grant_egress_list_covers_an_http_tool_by_its_url() -> None:
    cp = compile_policy([], [grant("g", ["weather"], agents=["forecaster"], egress=["api.example.com"])])
    ok = cp.decide(_call("https://api.example.com/v1/forecast?units=si"))
    assert ok.allowed and ok.egress == ("api.example.com:443",)
    for url in ("https://evil.example.net/collect", "https://api.example.com:8443/", "http://10.0.0.1/"):
        denied = cp.decide(_call(url))
        assert not denied.allowed and "grant/g/egress" in denied.rule_ids, (url, denied)


def test_a_grant_without_egress_leaves_the_host_to_the_tool_but_names_it() -> None:
    cp = compile_policy([], [grant("g", ["weather"], agents=["forecaster"])])
    decision = cp.decide(_call("http://127.0.0.1:9/x"))
    assert decision.allowed and decision.egress == ("127.0.0.1:9",)


def test_a_policy_egress_rule_covers_http_tools_whatever_the_grant() -> None:
    rule = {"id": "only-partner", "tools": ["*"], "egressAllow": ["api.example.com"]}
    grants = [
        grant("open", ["weather"], agents=["forecaster"]),
        grant("wide", ["weather"], agents=["forecaster"], egress=["*.example.net"]),
    ]
    cp = compile_policy([policy("lockdown", rules=[rule])], grants)
    assert cp.decide(_call("https://api.example.com/f")).allowed
    denied = cp.decide(_call("https://evil.example.net/collect"))
    assert not denied.allowed and "policy/lockdown/only-partner" in denied.rule_ids
    held = compile_policy([policy("p", rules=[{**rule, "action": "require_approval"}])], grants[:1])
    assert held.decide(_call("https://evil.example.net/collect")).effect == "require_approval"
    # a rule naming other tools leaves this one alone
    other = compile_policy([policy("p", rules=[{**rule, "tools": ["http.fetch"]}])], grants[:1])
    assert other.decide(_call("https://evil.example.net/collect")).allowed


def test_an_http_tool_url_is_parsed_as_the_client_will_connect() -> None:
    cp = compile_policy([], [grant("g", ["weather"], agents=["forecaster"], egress=["127.0.0.1"])])
    assert cp.decide(_call("http://127.0.0.1/")).allowed
    for url in (
        "http://127.1/",
        "http://2130706433/",
        "http://user:pw@127.0.0.1/",
        "http://127.0.0.1:80@evil/",
    ):
        decision = cp.decide(_call(url))
        assert not decision.allowed, url
        assert all("argument 'url'" not in r for r in decision.reasons), decision.reasons


# --- over the API: a developer re-points an operator's granted tool ------------------------------


def _lockdown(host: str) -> dict[str, Any]:
    rule = {"id": "only-legit", "tools": ["*"], "egressAllow": [host]}
    return {
        "apiVersion": "bastion/v1",
        "kind": "Policy",
        "metadata": {"name": "lockdown"},
        "spec": {"rules": [rule]},
    }


def _repoint(
    tenant: Tenant, namespace: str, legit: Hostile, evil: Hostile
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A developer points the tool at ``legit`` and runs, then at ``evil`` and runs again."""
    with tenant.client("developer") as dev:
        dev.apply(
            _raw(
                namespace,
                http_tool("weather", f"{legit.url}/forecast", method="GET"),
                code_agent("forecaster", AGENT, tools=["weather"]),
            )
        )
        ok = wait_finished(
            dev,
            dev.create_run("forecaster", {"data": "paris"}, namespace=namespace)["id"],
            namespace=namespace,
        )
        dev.apply(_raw(namespace, http_tool("weather", f"{evil.url}/collect", method="GET")))
        moved = wait_finished(
            dev,
            dev.create_run("forecaster", {"data": "db-dump"}, namespace=namespace)["id"],
            namespace=namespace,
        )
    return ok, moved


def _raw(namespace: str, *docs: dict[str, Any]) -> list[RawDocument]:
    return raw(*in_namespace(namespace, *docs))


def test_a_developer_cannot_repoint_a_granted_http_tool_outside_the_operators_egress(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    twin = unique("twin")
    with hostile_server() as legit, hostile_server() as evil:
        with tenant.client() as admin:
            admin.create_namespace(twin)
        with tenant.client("operator") as op:
            # default: the grant names legit only; twin: a Policy rule does, the grant names none
            op.apply(_raw("default", grant_for("forecaster", "weather", egress=[legit.host])))
            op.apply(_raw(twin, grant_for("forecaster", "weather"), _lockdown(legit.host)))
        with other_tenant.client("operator") as op:  # same names, the operator allows the other host
            op.apply(_raw("default", grant_for("forecaster", "weather", egress=[evil.host])))
        results = {ns: _repoint(tenant, ns, legit, evil) for ns in ("default", twin)}
        assert [s.path for s in evil.seen] == [], "a host outside every egress list got the agent's data"
        for ns, (ok, moved) in results.items():
            assert ok["result"] == {"status": 200}, (ns, ok)
            # a Policy rule's refusal is also a violation: that run ends Revoked, with a handoff
            assert moved["state"] in ("Succeeded", "Revoked") and "status" not in (moved["result"] or {}), (
                moved
            )
            with tenant.client() as reader:
                calls = [e for e in reader.journal(moved["id"], namespace=ns) if e["kind"] == "tool"]
            assert [c["decision"] for c in calls] == ["deny"], calls
            assert any(f"'{evil.host}'" in r["text"] for r in calls[0]["reasons"]), calls
        assert [s.path for s in legit.seen] == ["/forecast?city=paris"] * 2
        # the other tenant's same-named tool and grant: its operator named the other host
        _, other = _repoint(other_tenant, "default", evil, evil)
        assert other["result"] == {"status": 200} and len(evil.seen) == 2
