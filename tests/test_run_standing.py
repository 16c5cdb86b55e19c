"""A run is judged as its Agent is now, never as the snapshot it was created with.

Grants trust two fields only an operator may raise or set: an Agent's tier and its ``bastion.io/``
labels. A run keeps the manifest it was created with, and a developer can start a stored run
again (fork it; and every resume, retry and approval's resumption is a new attempt of it): none
of these may bring back a tier or a label the operator has since taken away. Same-named agents in
another namespace and another tenant keep theirs.
"""

from __future__ import annotations

from typing import Any

from bastion.client import BastionClient

from ._agents import FINISHED, builtin_tool, code_agent, in_namespace, wait_finished
from ._docs import raw
from .conftest import Tenant, unique

AGENT = """
from bastion import agent

def main(input):
    out = {}
    for tool in ("by-tier", "by-label"):
        try:
            agent.tools.call(tool, path=".")
            out[tool] = "allowed"
        except agent.ToolDenied:
            out[tool] = "denied"
    return out
"""
ALLOWED = {"by-tier": "allowed", "by-label": "allowed"}
DENIED = {"by-tier": "denied", "by-label": "denied"}
CLEARANCE = {"bastion.io/clearance": "pci"}


def _agent(tier: str, labels: dict[str, str] | None) -> dict[str, Any]:
    doc = code_agent("vault", AGENT, tools=["by-tier", "by-label"], labels=labels)
    doc["spec"]["tier"] = tier
    return doc


def _setup(namespace: str, *, approval: bool = False) -> list[dict[str, Any]]:
    """Two tools; one granted to tier T3, one to the operator label; the agent has both."""
    extra = {"requireApproval": True} if approval else {}
    grants = [
        {
            "apiVersion": "bastion/v1",
            "kind": "ToolGrant",
            "metadata": {"name": "t3-only"},
            "spec": {"subjects": {"tiers": ["T3"]}, "tools": ["by-tier"], **extra},
        },
        {
            "apiVersion": "bastion/v1",
            "kind": "ToolGrant",
            "metadata": {"name": "pci-only"},
            "spec": {"subjects": {"labels": CLEARANCE}, "tools": ["by-label"], **extra},
        },
    ]
    tools = [builtin_tool("by-tier", "fs.list"), builtin_tool("by-label", "fs.list")]
    return in_namespace(namespace, *tools, *grants, _agent("T3", CLEARANCE))


def _wait(client: BastionClient, run_id: str, namespace: str, states: set[str] = FINISHED) -> dict[str, Any]:
    return wait_finished(client, run_id, namespace=namespace, states=states)


def _run(client: BastionClient, namespace: str) -> dict[str, Any]:
    return _wait(client, client.create_run("vault", {}, namespace=namespace)["id"], namespace)


def _fork(client: BastionClient, run_id: str, seq: int, namespace: str) -> dict[str, Any]:
    return _wait(client, client.fork_run(run_id, seq, namespace=namespace)["id"], namespace)


def test_a_fork_does_not_bring_back_a_lowered_tier_or_a_removed_operator_label(tenant: Tenant) -> None:
    ns, twin = "default", unique("twin")
    with tenant.client() as admin:
        admin.create_namespace(twin)
    with tenant.client("operator") as op:
        op.apply(raw(*_setup(ns), *_setup(twin)))
        old = _run(op, ns)
        twin_old = _run(op, twin)
        assert old["result"] == ALLOWED and twin_old["result"] == ALLOWED, (old, twin_old)
        # the operator demotes the agent of one namespace and takes its clearance away
        op.apply(raw(*in_namespace(ns, _agent("T0", None))))
    with tenant.client("developer") as dev:
        assert _run(dev, ns)["result"] == DENIED
        forked = _fork(dev, old["id"], 0, ns)
        assert forked["state"] == "Succeeded", forked
        assert forked["result"] == DENIED, "a fork replayed the tier and label the operator took away"
        # Forked after the first call: that call's recorded answer is replayed (history); the
        # second is made live, and judged as the agent is now.
        halfway = _fork(dev, old["id"], 1, ns)
        assert halfway["result"] == {"by-tier": "allowed", "by-label": "denied"}, halfway
        live = [e for e in dev.journal(halfway["id"], namespace=ns) if e["kind"] == "tool"]
        assert [e["decision"] for e in live] == ["allow", "deny"], live
        # the same-named agent of the other namespace keeps what its operator gave it, forked or not
        assert _run(dev, twin)["result"] == ALLOWED
        assert _fork(dev, twin_old["id"], 0, twin)["result"] == ALLOWED


def test_a_fork_of_a_deleted_agent_keeps_nothing_an_operator_granted(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    runs: dict[str, str] = {}
    for who in (tenant, other_tenant):
        with who.client("operator") as op:
            op.apply(raw(*_setup("default")))
            first = _run(op, "default")
            assert first["result"] == ALLOWED, first
            runs[who.name] = first["id"]
    with tenant.client("operator") as op:
        op.delete("Agent", "vault")
    with tenant.client("developer") as dev:
        assert _fork(dev, runs[tenant.name], 0, "default")["result"] == DENIED
    with other_tenant.client("developer") as dev:
        assert _fork(dev, runs[other_tenant.name], 0, "default")["result"] == ALLOWED


def test_an_approval_resumes_the_run_as_the_agent_is_now(tenant: Tenant) -> None:
    """The run asked while the agent was T3 with the label; an operator demoted it meanwhile: the
    approval's resumption is a new attempt, judged as the agent is now, so the calls are denied."""
    ns, twin = "default", unique("twin")
    with tenant.client() as admin:
        admin.create_namespace(twin)
    with tenant.client("operator") as op:
        op.apply(raw(*_setup(ns, approval=True), *_setup(twin, approval=True)))
        waiting = {n: op.create_run("vault", {}, namespace=n)["id"] for n in (ns, twin)}
        for n, run_id in waiting.items():
            _wait(op, run_id, n, {"WaitingApproval", *FINISHED})
        op.apply(raw(*in_namespace(ns, _agent("T0", None))))

        def approve_all() -> None:
            for approval in op.list_approvals():
                op.decide_approval(approval["id"], approve=True, reason="fine")

        approve_all()  # the by-tier call of each run
        done = _wait(op, waiting[ns], ns)
        assert done["result"] == DENIED, "the resumed attempt was judged with the old tier and label"
        # the twin namespace's same-named agent was not demoted: its calls go through after approval
        _wait(op, waiting[twin], twin, {"WaitingApproval", *FINISHED})
        approve_all()  # its by-label call
        assert _wait(op, waiting[twin], twin)["result"] == ALLOWED
