"""The gateway: the one way out of a sandbox (DESIGN §3, Gateway).

Every request an agent makes is handled here, in this order: replay check (a resumed attempt is
answered from the journal while its requests match), policy decision (default deny), secrets
injected after the decision, execution, scrubbing, and a journal append committed before the
answer leaves. Tools and the clock know nothing of this: the session wraps them once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Connection

from bastion.api import Clock, IdSource
from bastion.errors import NonDeterministic, RunError, ToolCallFailed
from bastion.execution.llm import Models, answer
from bastion.execution.sandbox import DENIED, INVALID, TOOL_FAILED, CallError
from bastion.execution.tools import HttpTool, Tool, ToolContext, ToolLimits
from bastion.observe import Database, RunSpan, Telemetry, ToolSpan
from bastion.observe.journal import GENESIS, Entry, Journal, Prepared, canonical, digest
from bastion.policy import Decision, Grant, Subject, decide_tool_call

from ._llm import ModelCalls
from ._metrics import GatewayMetrics
from ._resources import ResourceReader
from ._scrub import Redactor
from ._secrets import SecretResolver

log = logging.getLogger("bastion.gateway")
GRANTS_TTL_SECONDS = 1.0
_NO_SPAN = ToolSpan(None)
"""Time, randomness and ids get no span (see ``bastion.observe.Telemetry``)."""
KINDS = {
    "tool.call": "tool",
    "llm.chat": "llm",
    "time.now": "time",
    "random.random": "random",
    "random.uuid": "uuid",
}


Fence = Callable[[Connection], None]
"""Raises LeaseLost unless the attempt still holds its run (inside the given transaction)."""
Commit = Callable[[Prepared, list[tuple[str, dict[str, Any]]]], None]
"""Writes a journal entry and run events (type, data) in one fenced transaction, raising LeaseLost
if the attempt no longer holds its run; the engine puts the agent's pending log lines before the
events, so the event stream keeps the order things happened in."""


@dataclass(frozen=True, kw_only=True)
class Attempt:
    """The attempt a session serves. The run engine builds it; the gateway never imports the engine."""

    run_id: str
    attempt: int
    tenant_id: str
    namespace: str
    agent: str
    agent_spec: dict[str, Any]
    """The Agent manifest as it was when the run was created."""
    workspace: Path
    fence: Fence
    commit: Commit
    span: RunSpan | None = None
    """The attempt's ``invoke_agent`` span: tool spans are started as its children."""


class Gateway:
    def __init__(
        self,
        db: Database,
        journal: Journal,
        resources: ResourceReader,
        *,
        tools: Mapping[str, Tool],
        clock: Clock,
        ids: IdSource,
        metrics: GatewayMetrics | None = None,
        limits: ToolLimits | None = None,
        telemetry: Telemetry | None = None,
        models: Models | None = None,
    ) -> None:
        self.db, self.journal, self.resources = db, journal, resources
        self.models = models
        """The LLM router, budgets and metrics behind ``llm.chat``; None answers every model call
        with a failure."""
        self.tools, self.clock, self.ids = tools, clock, ids
        self.metrics = metrics or GatewayMetrics()
        self.limits = limits or ToolLimits()
        self.telemetry = telemetry or Telemetry()

    def session(self, attempt: Attempt) -> GatewaySession:
        return GatewaySession(self, attempt)


class GatewaySession:
    """Serves one attempt's sandbox: ``handle`` answers its requests."""

    def __init__(self, gateway: Gateway, attempt: Attempt) -> None:
        self.g = gateway
        self.attempt = attempt
        self.tenant_id, self.namespace = attempt.tenant_id, attempt.namespace
        self.redactor = Redactor()
        self.recorded: dict[int, Entry] = {e.seq: e for e in gateway.journal.entries(attempt.run_id)}
        self.seq = 0
        self.head = GENESIS
        self.calls_by_grant: dict[str, int] = {}
        spec: dict[str, Any] = attempt.agent_spec["spec"]
        meta: dict[str, Any] = attempt.agent_spec["metadata"]
        self.subject = Subject(
            name=attempt.agent,
            labels=meta.get("labels", {}),
            tier=spec.get("tier", "T0"),
            tools=spec.get("tools", []),
        )
        self.secrets = SecretResolver(gateway.resources, self.tenant_id, self.namespace, self.redactor)
        self.tool_manifests = {
            m["metadata"]["name"]: m
            for m in gateway.resources.resources(self.tenant_id, "Tool", self.namespace)
        }
        self.secrets.preload([m for name, m in self.tool_manifests.items() if name in self.subject.tools])
        self.model_calls = ModelCalls(self, gateway.models)
        self.model_calls.preload()
        self._grants_cache: tuple[float, list[Grant]] | None = None

    @property
    def journal_head(self) -> tuple[int, str]:
        """The journal's (entries, head hash) as this attempt leaves it.

        An attempt that ended during replay (a non-deterministic agent, a failure) leaves the
        earlier attempts' entries past its own position: the journal ends at the last of those.
        """
        end = max(self.recorded, default=0)
        if end > self.seq:
            return end, self.recorded[end].hash
        return self.seq, self.head

    # --- the sandbox's handler and notifier ------------------------------------------

    def handle(self, method: str, params: dict[str, Any]) -> Any:
        started = time.perf_counter()
        kind = KINDS.get(method)
        if kind is None:
            raise CallError(INVALID, f"unknown method {method!r}", {"type": "invalid_request"})
        request = {"method": method, "params": params}
        try:
            request_hash = digest(canonical(request))
        except (TypeError, ValueError):
            raise CallError(INVALID, "the request is not JSON", {"type": "invalid_request"}) from None
        seq = self.seq + 1
        recorded = self.recorded.get(seq)
        span = _NO_SPAN
        if kind == "tool":
            name = params.get("name")
            span = self.g.telemetry.tool_span(
                self.attempt.span,
                tool=name if isinstance(name, str) else "?",
                seq=seq,
                replayed=recorded is not None,
            )
        try:
            with span:
                if recorded is not None:
                    return self._replay(seq, kind, request, request_hash, recorded, span)
                return self._live(seq, kind, request, request_hash, span)
        except (CallError, RunError):
            raise  # an answer for the agent, or the end of this attempt (lease lost, non-determinism)
        except Exception:
            # Anything else is Bastion's fault, not the agent's: a fixed answer, the details in our log.
            log.exception("the gateway failed on seq %s of run %s", seq, self.attempt.run_id)
            raise CallError(
                TOOL_FAILED, "the gateway failed on this call", {"type": "gateway_error"}
            ) from None
        finally:
            self.g.metrics.latency.labels(kind).observe(time.perf_counter() - started)

    # --- replay ----------------------------------------------------------------------

    def _replay(
        self,
        seq: int,
        kind: str,
        request: dict[str, Any],
        request_hash: str,
        recorded: Entry,
        span: ToolSpan,
    ) -> Any:
        if recorded.request_hash != request_hash:
            was = self.g.journal.resolve(recorded.request)
            raise NonDeterministic(
                seq, f"the agent asked for {_summary(request)}; the journal recorded {_summary(was)}"
            )
        self.seq, self.head = seq, recorded.hash
        self.g.metrics.replayed.labels(kind).inc()
        reasons = recorded.reasons
        grant = next(
            (r["rule"].removeprefix("grant/") for r in reasons if r.get("rule", "").startswith("grant/")),
            None,
        )
        if recorded.decision == "allow" and grant is not None:
            self.calls_by_grant[grant] = self.calls_by_grant.get(grant, 0) + 1
        tool = self._tool(str(request["params"].get("name", ""))) if kind == "tool" else None
        if tool is not None and tool.workspace_only and recorded.decision == "allow":
            # Workspace effects are re-created: this attempt started from the initial workspace.
            value, error = self._invoke(seq, tool, request["params"], Decision(effect="allow", reasons=()))
            value = self.redactor.scrub(value)
            error = cast(dict[str, Any] | None, self.redactor.scrub(error))
            span.outcome(recorded.decision, error)
            return self._answer(value, error)
        span.outcome(recorded.decision, recorded.error)
        return self._answer(
            self._shaped(kind, request, self.g.journal.resolve(recorded.response)), recorded.error
        )

    # --- live ------------------------------------------------------------------------

    def _live(self, seq: int, kind: str, request: dict[str, Any], request_hash: str, span: ToolSpan) -> Any:
        started_at = self.g.clock.now()
        t0 = time.perf_counter()
        decision: Decision
        value: Any = None
        error: dict[str, Any] | None = None
        if kind == "tool":
            decision, value, error = self._tool_call(seq, request["params"], started_at)
        elif kind == "llm":
            decision, value, error = self.model_calls.call(seq, request["params"], started_at)
        else:
            decision = Decision(
                effect="allow",
                reasons=(f"{kind} comes through the gateway so replay is exact",),
                rule_ids=(f"builtin/{kind}",),
            )
            value = self._seam(kind)
        value = self.redactor.scrub(value)
        error = cast(dict[str, Any] | None, self.redactor.scrub(error))
        duration_us = int((time.perf_counter() - t0) * 1_000_000)
        reasons = [
            {"rule": rule, "text": self.redactor.scrub_text(text)}
            for rule, text in zip(decision.rule_ids, decision.reasons, strict=False)
        ]
        attempt = self.attempt
        prepared = self.g.journal.prepare(
            run_id=attempt.run_id,
            seq=seq,
            attempt=attempt.attempt,
            kind=kind,
            request=request,
            request_hash=request_hash,
            decision=decision.effect,
            reasons=reasons,
            response=value,
            error=error,
            started_at=started_at,
            duration_us=duration_us,
            prev_hash=self.head,
        )
        event: dict[str, Any] = {
            "seq": seq,
            "kind": kind,
            "decision": decision.effect,
            "durationUs": duration_us,
        }
        if kind == "tool":
            event["tool"] = request["params"].get("name")
        elif kind == "llm" and isinstance(value, dict):
            result = cast(dict[str, Any], value)
            event.update(model=result.get("model"), usage=result.get("usage"))
        if error is not None:
            event["error"] = error.get("reason") or error.get("message")
        if decision.effect != "allow":
            event["reasons"] = [r["text"] for r in reasons]
        attempt.commit(prepared, [("call", event)])
        self.seq, self.head = seq, prepared.entry.hash
        self.g.metrics.calls.labels(kind, decision.effect).inc()
        span.outcome(decision.effect, error)
        return self._answer(self._shaped(kind, request, value), error)

    @staticmethod
    def _shaped(kind: str, request: dict[str, Any], value: Any) -> Any:
        """A model call's journaled result in the wire format the caller asked for."""
        if kind != "llm" or value is None:
            return value
        return answer(request["params"], value)

    def _seam(self, kind: str) -> Any:
        if kind == "time":
            return self.g.clock.now().isoformat()
        if kind == "uuid":
            return self.g.ids.uid()
        return int.from_bytes(self.g.ids.key_bytes(7), "big") / float(1 << 56)

    def _tool(self, name: str) -> Tool | None:
        manifest = self.tool_manifests.get(name)
        if manifest is None:
            return None
        impl: dict[str, Any] = manifest["spec"]["implementation"]
        if impl["type"] == "builtin":
            return self.g.tools.get(impl["name"])
        if impl["type"] == "http":
            return HttpTool(name=name, url=impl["url"], method=impl.get("method", "POST"))
        return None

    def _grants(self) -> list[Grant]:
        """The namespace's grants, re-read at most once a second so a revoked grant bites quickly."""
        now = time.monotonic()
        if self._grants_cache is None or now - self._grants_cache[0] > GRANTS_TTL_SECONDS:
            manifests = self.g.resources.resources(self.tenant_id, "ToolGrant", self.namespace)
            self._grants_cache = (now, [_grant(m) for m in manifests])
        return self._grants_cache[1]

    def _tool_call(
        self, seq: int, params: dict[str, Any], now: datetime
    ) -> tuple[Decision, Any, dict[str, Any] | None]:
        name, args = params.get("name"), params.get("args", {})
        if not isinstance(name, str) or not isinstance(args, dict):
            decision = Decision(
                effect="deny",
                reasons=("tool.call needs a tool name and an args object",),
                rule_ids=("request/invalid",),
            )
            return decision, None, {"type": "invalid_request", "reason": decision.reasons[0]}
        manifest = self.tool_manifests.get(name)
        grants = self._grants()
        decision = decide_tool_call(
            self.subject,
            name,
            tool_exists=manifest is not None,
            tool_min_tier=(manifest or {}).get("spec", {}).get("minTier", "T0"),
            grants=grants,
            calls_by_grant=self.calls_by_grant,
            now=now,
        )
        if not decision.allowed:
            return (
                decision,
                None,
                {
                    "type": "policy_denied",
                    "tool": name,
                    "reasons": list(decision.reasons),
                    "rule_ids": list(decision.rule_ids),
                },
            )
        if decision.grant is not None:
            self.calls_by_grant[decision.grant] = self.calls_by_grant.get(decision.grant, 0) + 1
        tool = self._tool(name)
        if tool is None:
            impl_type = (manifest or {}).get("spec", {}).get("implementation", {}).get("type")
            return (
                decision,
                None,
                ToolCallFailed(
                    name, f"implementation type {impl_type!r} is not available in this release"
                ).to_record(),
            )
        if not tool.workspace_only:
            # Last chance to notice a lost lease before an external effect.
            with self.g.db.read() as conn:
                self.attempt.fence(conn)
        value, error = self._invoke(seq, tool, params, decision)
        return decision, value, error

    def _invoke(
        self, seq: int, tool: Tool, params: dict[str, Any], decision: Decision
    ) -> tuple[Any, dict[str, Any] | None]:
        name = str(params["name"])
        manifest = self.tool_manifests[name]
        spec: dict[str, Any] = manifest["spec"]
        try:
            headers = self.secrets.headers(
                name, spec.get("secrets", []), spec["implementation"].get("headers", {})
            )
            ctx = ToolContext(
                run_id=self.attempt.run_id,
                seq=seq,
                workspace=self.attempt.workspace,
                egress=decision.egress,
                headers=headers,
                limits=self.g.limits,
            )
            return tool.invoke(dict(params.get("args", {})), ctx), None
        except ToolCallFailed as exc:
            return None, exc.to_record()

    @staticmethod
    def _answer(value: Any, error: dict[str, Any] | None) -> Any:
        if error is None:
            return value
        if error.get("type") == "budget_exceeded":
            raise CallError(DENIED, f"budget {error.get('budget')!r} exceeded: {error.get('reason')}", error)
        if error.get("type") == "policy_denied":
            raise CallError(DENIED, f"denied: {'; '.join(error.get('reasons', []))}", error)
        if error.get("type") == "invalid_request":
            raise CallError(INVALID, str(error.get("reason", "invalid request")), error)
        if error.get("type") == "model_call_failed":
            raise CallError(TOOL_FAILED, f"the model call failed: {error.get('reason')}", error)
        raise CallError(TOOL_FAILED, str(error.get("reason", "tool failed")), error)


def _grant(manifest: dict[str, Any]) -> Grant:
    spec: dict[str, Any] = manifest["spec"]
    subjects: dict[str, Any] = spec.get("subjects", {})
    expires = spec.get("expiresAt")
    return Grant(
        name=manifest["metadata"]["name"],
        agents=subjects.get("agents", []),
        labels=subjects.get("labels", {}),
        tiers=subjects.get("tiers", []),
        tools=spec.get("tools", []),
        max_calls=spec.get("maxCalls"),
        min_tier=spec.get("minTier", "T0"),
        expires_at=datetime.fromisoformat(expires.replace("Z", "+00:00"))
        if isinstance(expires, str)
        else None,
        egress=spec.get("egress", []),
    )


def _summary(request: Any) -> str:
    if not isinstance(request, dict):
        return "something else"
    req = cast(dict[str, Any], request)
    params: dict[str, Any] = req.get("params") or {}
    if req.get("method") == "tool.call":
        return f"tool {params.get('name')!r} with args {canonical(params.get('args', {})).decode()[:200]}"
    return str(req.get("method"))
