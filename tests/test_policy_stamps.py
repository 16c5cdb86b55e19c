"""A namespace's compiled policy is shared by its sessions and replaced on change, not on a timer.

Four sides hold resources of the SAME names (Tool ``fs.list``, Agent ``lister``, ToolGrant
``lists``): two tenants, each with namespaces ``prod`` and ``staging``. A running session on each
side makes calls; one side's grant changes (or goes), and the very next call of that side's session
must see it, while the three twins keep deciding with their own grants and are not even reloaded
(DESIGN invariant 6: the cache is keyed by tenant, namespace and content).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from bastion.api import validate_documents
from bastion.control import Bastion
from bastion.control.store import Principal
from bastion.execution.gateway import Attempt, GatewaySession
from bastion.execution.runs._step import StepWriter  # pyright: ignore[reportPrivateUsage]
from bastion.execution.sandbox import CallError

from ._agents import builtin_tool, code_agent
from ._docs import raw

SIDES = [("a", "prod"), ("a", "staging"), ("b", "prod"), ("b", "staging")]


def _grant(*tools: str) -> dict[str, Any]:
    return {
        "apiVersion": "bastion/v1",
        "kind": "ToolGrant",
        "metadata": {"name": "lists"},
        "spec": {"subjects": {"agents": ["lister"]}, "tools": list(tools)},
    }


def _nothing(*_: Any) -> None:
    return None


class Sides:
    def __init__(self, bastion: Bastion, workspace: Path, held: bool, stack: ExitStack) -> None:
        self.bastion = bastion
        self.principals: dict[str, Principal] = {}
        self.sessions: dict[tuple[str, str], GatewaySession] = {}
        agent = code_agent("lister", "def main(input):\n    return None\n", tools=["fs.list", "fs.read"])
        for tenant, namespace in SIDES:
            if tenant not in self.principals:
                with bastion.store.write() as conn:
                    record = bastion.store.create_tenant(conn, f"tenant-{tenant}")
                    _, token = bastion.store.create_key(conn, record, "admin", "admin")
                principal = bastion.store.authenticate(token)
                assert principal is not None
                self.principals[tenant] = principal
            principal = self.principals[tenant]
            with bastion.store.write() as conn:
                if namespace != "default":
                    bastion.store.create_namespace(conn, principal.tenant_id, namespace)
            self.apply(
                tenant, namespace, builtin_tool("fs.list"), builtin_tool("fs.read"), agent, _grant("fs.list")
            )
            query = None
            if held:  # the run engine's way: reads on the attempt's held connection
                query = stack.enter_context(StepWriter(bastion.store).held()).first
            self.sessions[tenant, namespace] = bastion.gateway.session(
                Attempt(
                    run_id=f"run-{tenant}-{namespace}",
                    attempt=1,
                    tenant_id=principal.tenant_id,
                    namespace=namespace,
                    agent="lister",
                    agent_spec=agent,
                    workspace=workspace,
                    fence=_nothing,
                    commit=_nothing,
                    query=query,
                )
            )

    def apply(self, tenant: str, namespace: str, *documents: dict[str, Any]) -> None:
        placed = [{**d, "metadata": {**d["metadata"], "namespace": namespace}} for d in documents]
        with self.bastion.store.write() as conn:
            self.bastion.resources.apply(conn, self.principals[tenant], validate_documents(raw(*placed)))

    def delete_grant(self, tenant: str, namespace: str) -> None:
        with self.bastion.store.write() as conn:
            self.bastion.resources.delete(conn, self.principals[tenant], "ToolGrant", namespace, "lists")

    def lists(self, side: tuple[str, str]) -> bool:
        """Whether the side's running session is allowed ``fs.list`` now."""
        try:
            self.sessions[side].handle("tool.call", {"name": "fs.list", "args": {}})
        except CallError as exc:
            if "denied" not in exc.message:
                raise
            return False
        return True

    @property
    def loads(self) -> int:
        return self.bastion.gateway.policies.loads


@pytest.fixture(params=["held-connection", "read-transaction"])
def sides(
    request: pytest.FixtureRequest, make_bastion: Callable[..., Bastion], tmp_path: Path
) -> Iterator[Sides]:
    with ExitStack() as stack:
        yield Sides(make_bastion(), tmp_path, request.param == "held-connection", stack)


def test_a_change_bites_on_the_next_call_and_only_in_its_namespace(sides: Sides) -> None:
    assert all(sides.lists(side) for side in SIDES)
    loaded = sides.loads
    assert all(sides.lists(side) for side in SIDES), "unchanged namespaces answer from the cache"
    assert sides.loads == loaded, "no namespace is re-read while nothing changed"

    # Tenant a's prod grant no longer covers fs.list: a's prod session sees it on its next call,
    # well inside a second; the same-named grants of the three twins still hold.
    sides.apply("a", "prod", _grant("fs.read"))
    assert not sides.lists(("a", "prod"))
    assert [sides.lists(side) for side in SIDES[1:]] == [True, True, True]
    assert sides.loads == loaded + 1, "only the changed namespace is reloaded"

    # Deleting a twin's grant: again only that namespace.
    sides.delete_grant("b", "staging")
    assert not sides.lists(("b", "staging"))
    assert [sides.lists(side) for side in SIDES[:3]] == [False, True, True]

    # And granting again is seen at once too.
    sides.apply("a", "prod", _grant("fs.list"))
    assert sides.lists(("a", "prod"))


def test_sessions_of_a_namespace_share_one_compiled_policy(sides: Sides) -> None:
    first = sides.sessions["a", "prod"]
    again = sides.bastion.gateway.session(first.attempt)
    assert first.policy()[0] is again.policy()[0]
    twin = sides.sessions["b", "prod"]
    assert twin.policy()[0] is not first.policy()[0], "a same-named twin compiles its own"
