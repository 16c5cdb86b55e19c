"""What-if: re-judge a finished run's recorded calls under another policy, executing nothing.

``POST /namespaces/{ns}/runs/{id}/what-if`` takes Policy and ToolGrant manifests (the body of an
apply). They replace the namespace's resources of the same kind and name, or are added; the rest
of the namespace's policy stays. Every recorded tool call is decided again (with the counters the
new policy would have seen) and its recorded result inspected again; the answer lists the
decisions that would change.

Who may: developers and up (it writes nothing, and developers are the ones proposing policy
changes to their operators); a viewer may not, since it runs caller-supplied patterns and Rego.
The judging itself runs in a killable child process under ``Settings.evaluation_seconds``
(``bastion.policy._evaluator``): a pathological pattern or Rego module costs its own request a
503, never the server its other requests.
"""

from __future__ import annotations

from typing import Any, cast

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from bastion.control._bastion import Bastion
from bastion.control.store import Principal
from bastion.errors import InvalidManifest, UserError
from bastion.policy import RecordedCall, Subject, ToolInfo
from bastion.policy._whatif_job import judge

from ._deps import BastionDep, PrincipalDep, require
from ._routes_resources import NamespacePath, read_documents, validated_resources
from ._routes_runs import RunIdPath, find_run

router = APIRouter(prefix="/api/v1", tags=["runs"])
JUDGED = ("Policy", "ToolGrant")


@router.post(
    "/namespaces/{namespace}/runs/{run_id}/what-if",
    summary="Re-judge a run's recorded calls under other Policies and ToolGrants",
)
async def what_if(
    request: Request,
    namespace: NamespacePath,
    run_id: RunIdPath,
    bastion: BastionDep,
    principal: PrincipalDep,
) -> dict[str, Any]:
    require(principal, "developer", "run what-if")
    resources = validated_resources(await read_documents(request))
    others = sorted({r.kind_name for r in resources if r.kind_name not in JUDGED})
    if others:
        raise InvalidManifest(
            f"what-if judges with Policy and ToolGrant manifests only; got {', '.join(others)}",
            field="documents",
            hint="pass the policy files you want to try, without agents, tools or secrets",
        )
    proposed = [r.wire() | {"metadata": {**r.wire()["metadata"], "namespace": namespace}} for r in resources]
    return await run_in_threadpool(_judge, bastion, principal, namespace, run_id, proposed)


def _judge(
    bastion: Bastion, principal: Principal, namespace: str, run_id: str, proposed: list[dict[str, Any]]
) -> dict[str, Any]:
    with bastion.store.read() as conn:
        run = find_run(bastion, conn, principal, namespace, run_id)
        if not run.state.finished:
            raise UserError(
                f"run {run_id} is {run.state}; what-if judges finished runs",
                field="run",
                hint="wait for it to finish",
                status=409,
            )
        entries = bastion.journal.entries(run.id, conn=conn)
        calls = [
            (e, bastion.journal.resolve(e.request, conn=conn), bastion.journal.resolve(e.response, conn=conn))
            for e in entries
            if e.kind == "tool"
        ]
        outcome = bastion.trust.history(conn, run.tenant_id, run.namespace, run.agent, limit=1000)
        tier = next((o.tier for o in outcome if o.run_id == run.id), None)
    reader = bastion.gateway.resources
    current = {kind: reader.resources(principal.tenant_id, kind, namespace) for kind in JUDGED}
    tools = {m["metadata"]["name"]: m for m in reader.resources(principal.tenant_id, "Tool", namespace)}
    replaced = {(m["kind"], m["metadata"]["name"]) for m in proposed}
    merged = {
        kind: [m for m in current[kind] if (kind, m["metadata"]["name"]) not in replaced]
        + [m for m in proposed if m["kind"] == kind]
        for kind in JUDGED
    }
    subject = Subject.from_manifest(run.agent_spec)
    if tier is not None:
        subject = Subject.from_manifest({**run.agent_spec, "spec": {**run.agent_spec["spec"], "tier": tier}})
    recorded: list[RecordedCall] = []
    for entry, request, response in calls:
        body = cast(dict[str, Any], request) if isinstance(request, dict) else {}
        params = cast(dict[str, Any], body.get("params") or {})
        name = str(params.get("name", ""))
        args = params.get("args", {})
        recorded.append(
            RecordedCall(
                seq=entry.seq,
                kind="tool",
                tool=ToolInfo.from_manifest(name, tools.get(name)),
                args=cast(dict[str, Any], args) if isinstance(args, dict) else {},
                decision=entry.decision,
                rule_ids=tuple(str(r.get("rule", "")) for r in entry.reasons),
                subject=subject,
                at=entry.started_at,
                response=response if entry.error is None else None,
                run_input=run.input,
            )
        )
    verdict = bastion.evaluator.run(
        f"what-if of run {run.id}", judge, merged["Policy"], merged["ToolGrant"], recorded
    )
    return {"run": run.id, "agent": run.agent, **verdict}
