"""Model calls for API clients outside any sandbox (the ``/llm/v1`` endpoint builds on this).

Each call is a run of runtime ``completion`` whose one journal entry is the ``llm.chat`` call: it
goes through the same gateway pipeline as an agent's (policy, budgets, secrets, router, scrub,
journal before the answer), so it is budgeted, audited, exported and replayed like any run. The
control plane holds the run's lease itself for the call's duration: no worker ever sees it
Scheduled (a server that dies mid-call leaves it to expire and be failed as a poison run).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import update

from bastion.api import API_VERSION, Clock, IdSource
from bastion.errors import LeaseLost, NotFound
from bastion.execution.gateway import Attempt, Gateway
from bastion.execution.runs import RunState, RunStore, runs
from bastion.execution.runs._step import StepWriter
from bastion.execution.sandbox import CallError
from bastion.observe.journal import Prepared

from .store import Store

LEASE_SECONDS = 900.0
"""Longer than any model call's retries and fallbacks take."""


class CompletionService:
    def __init__(
        self,
        store: Store,
        runs_: RunStore,
        gateway: Gateway,
        clock: Clock,
        ids: IdSource,
        workspace_root: Path,
    ) -> None:
        self.store, self.runs, self.gateway = store, runs_, gateway
        self.clock, self.ids, self.workspace_root = clock, ids, workspace_root
        self.steps = StepWriter(store)

    def complete(
        self, *, tenant_id: str, namespace: str, caller: str, model_policy: str, params: dict[str, Any]
    ) -> tuple[str, Any]:
        """Make one ``llm.chat`` call (params as in ``bastion.execution.llm.parse_params``) as
        ``caller`` (an API key's name) under ModelPolicy ``model_policy``.

        Returns:
            The run's id and the answer in the params' wire format.

        Raises:
            NotFound: the namespace does not exist in the tenant (no run is created).
            CallError: refused (code DENIED: no such policy, a budget) or failed (TOOL_FAILED),
                with the journaled error record as ``data``; the run is Failed with the reason.
        """
        agent = f"api-{caller}"
        spec: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": "Agent",
            "metadata": {"name": agent, "namespace": namespace},
            "spec": {"runtime": "completion", "modelPolicy": model_policy, "tools": []},
        }
        owner = f"api:{self.ids.token(6)}"
        with self.store.write() as conn:
            if not self.store.namespace_exists(conn, tenant_id, namespace):
                raise NotFound(
                    f"namespace {namespace!r} not found",
                    field="model",
                    hint="send model: NAMESPACE/POLICY for a namespace of your tenant "
                    "(`bastion namespaces list`); POLICY alone means namespace 'default'",
                )
            run = self.runs.create(
                conn,
                tenant_id=tenant_id,
                namespace=namespace,
                agent=agent,
                agent_spec=spec,
                input=params,
                max_attempts=1,
            )
            conn.execute(
                update(runs)
                .where(runs.c.id == run.id)
                .values(
                    state=str(RunState.RUNNING),
                    attempt=1,
                    lease_owner=owner,
                    lease_expires_at=self.clock.now() + timedelta(seconds=LEASE_SECONDS),
                )
            )
            self.runs.add_event(
                conn, run.id, "state", {"state": str(RunState.RUNNING), "attempt": 1, "worker": owner}
            )
        run = replace(run, attempt=1, state=RunState.RUNNING, lease_owner=owner)

        def fence(conn: Any) -> None:
            self.runs.fence(conn, run.id, 1, owner)

        def commit(prepared: Prepared, events: list[tuple[str, dict[str, Any]]]) -> None:
            self.steps.commit(
                run_id=run.id, attempt=1, owner=owner, prepared=prepared, events=events, at=self.clock.now()
            )

        session = self.gateway.session(
            Attempt(
                run_id=run.id,
                attempt=1,
                tenant_id=tenant_id,
                namespace=namespace,
                agent=agent,
                agent_spec=spec,
                workspace=self.workspace_root / run.id,
                fence=fence,
                commit=commit,
            )
        )
        state, reason, result = RunState.SUCCEEDED, None, None
        try:
            result = session.handle("llm.chat", params)
            return run.id, result
        except CallError as exc:
            state, reason = RunState.FAILED, exc.message
            raise
        finally:
            try:
                with self.store.write() as conn:
                    self.runs.transition(
                        conn, run, owner, state, reason=reason, result=result, journal=session.journal_head
                    )
            except LeaseLost:
                pass
