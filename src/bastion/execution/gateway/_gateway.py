"""The gateway: the one way out of a sandbox (DESIGN §3, Gateway).

Every request an agent makes is handled here, in this order: replay check (a resumed attempt is
answered from the journal while its requests match), policy decision (default deny), secrets
injected after the decision, execution, scrubbing, and a journal append committed before the
answer leaves. Tools and the clock know nothing of this: the session wraps them once.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, cast

from sqlalchemy import Connection

from bastion.api import Clock, IdSource, parse_duration
from bastion.errors import (
    ErrorBudgetExceeded,
    LeaseLost,
    NonDeterministic,
    RunError,
    RunSuspended,
    ToolCallFailed,
)
from bastion.execution.llm import Models, answer
from bastion.execution.sandbox import DENIED, INVALID, TOOL_FAILED, CallError
from bastion.execution.tools import HttpTool, Tool, ToolContext, ToolLimits
from bastion.observe import Database, RunSpan, Telemetry, ToolSpan
from bastion.observe.journal import GENESIS, Entry, Journal, Prepared, canonical, canonical_text, digest
from bastion.policy import (
    RANK,
    CallContext,
    CompiledPolicy,
    Counters,
    Decision,
    ErrorBudget,
    Subject,
    ToolInfo,
    check_error_budget,
)

from ._approvals import Approval, ApprovalState, ApprovalStore
from ._echo import EchoGuard, as_denial
from ._llm import ModelCalls
from ._metrics import GatewayMetrics
from ._policy import STAMP_SQL, Manifests, PolicyCache, RateWindows, parameters_fault, read_policy_stamp
from ._provenance import RunLabels
from ._resources import ResourceReader
from ._scrub import Redactor
from ._secrets import SecretResolver

log = logging.getLogger("bastion.gateway")
_NO_SPAN = ToolSpan(None)
"""Time, randomness and ids get no span (see ``bastion.observe.Telemetry``)."""
KINDS = {
    "tool.call": "tool",
    "llm.chat": "llm",
    "time.now": "time",
    "random.random": "random",
    "random.uuid": "uuid",
}


Query = Callable[[str, tuple[Any, ...]], tuple[Any, ...] | None]
"""Runs one read statement (qmark placeholders) on the attempt's held connection, outside any
transaction, and returns its first row (or None)."""
Fence = Callable[[Connection], None]
"""Raises LeaseLost unless the attempt still holds its run (inside the given transaction)."""
Commit = Callable[[Prepared, list[tuple[str, dict[str, Any]]]], None]
"""Writes a journal entry (and the statements it carries, ``Prepared.also``: a model call's budget
settlement) and run events (type, data) in one fenced transaction, raising LeaseLost
if the attempt no longer holds its run; the engine puts the agent's pending log lines before the
events, so the event stream keeps the order things happened in."""


class EffectLease(Protocol):
    """The attempt's lease, as the last gate before an external effect."""

    def renew(self) -> None:
        """Renew the lease now, checking in the same statement that this attempt still holds the
        run; raises LeaseLost if it does not."""
        ...

    def check(self) -> None:
        """Raise LeaseLost unless the lease has more than its safety margin left; called right
        before a request's first byte is written. No I/O unless the margin is reached, when it
        renews first (which fails if a successor holds the run)."""
        ...

    def confirm(self) -> None:
        """The fence before an external effect: raise LeaseLost unless this attempt still holds
        the run, read on the attempt's own connection (no write transaction); with less than
        half the lease left it renews instead (``renew``)."""
        ...


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
    tier: str | None = None
    """The agent's earned trust tier; None: the tier its spec declares."""
    lease: EffectLease | None = None
    """Renewed and checked before each external effect; None: a fenced read instead."""
    labels: Mapping[str, str] | None = None
    """The Agent's labels as stored now; None: the spec's. The run engine always passes them (and
    ``tier``): a run's spec is a snapshot a developer can start again, and grants trust both."""
    query: Query | None = None
    """Reads on the attempt's held connection (the namespace's policy stamp before each decision);
    None: a read transaction of the gateway's database instead."""
    input: Any = None
    """The run's input: its values are labeled ``input`` (the user's) for provenance rules."""
    on_live: Callable[[], None] | None = None
    """Called once when the session has replayed the journal's last entry: the agent is past
    everything earlier attempts did (the poison rule's evidence starts there)."""


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
        self.approvals = ApprovalStore(ids)
        self.policies = PolicyCache()
        self.rate_windows = RateWindows()

    def session(self, attempt: Attempt) -> GatewaySession:
        return GatewaySession(self, attempt)


class GatewaySession:
    """Serves one attempt's sandbox: ``handle`` answers its requests."""

    def __init__(self, gateway: Gateway, attempt: Attempt) -> None:
        self.g = gateway
        self.attempt = attempt
        self.tenant_id, self.namespace = attempt.tenant_id, attempt.namespace
        self.redactor = Redactor()
        """Scrubs what is stored (journal, events, records); never what goes back to the agent."""
        self.echoes = EchoGuard()
        self.recorded: dict[int, Entry] = {e.seq: e for e in gateway.journal.entries(attempt.run_id)}
        self._frontier = max(self.recorded, default=0)
        self.seq = 0
        self.head = GENESIS
        self.calls_by_grant: dict[str, int] = {}
        self.workspace = attempt.workspace
        """Where workspace tools work: the sandbox's live workspace once the worker knows it."""
        self.tool_calls = 0
        self.tokens = 0
        self.errors: list[str] = []
        """One signature per failed or refused call (the error budget's ``maxErrors``/``maxRepeats``)."""
        self.violations: list[str] = []
        """Calls a Policy rule refused: procedure violations (``revokeOnViolation``)."""
        self.budget = ErrorBudget.from_manifest(attempt.agent_spec)
        subject = Subject.from_manifest(attempt.agent_spec)
        if attempt.tier is not None:
            subject = dataclasses.replace(subject, tier=attempt.tier)
        if attempt.labels is not None:
            subject = dataclasses.replace(subject, labels=dict(attempt.labels))
        self.subject = subject
        self.secrets = SecretResolver(gateway.resources, self.tenant_id, self.namespace, self.redactor)
        self.tool_manifests = {
            m["metadata"]["name"]: m
            for m in gateway.resources.resources(self.tenant_id, "Tool", self.namespace)
        }
        self.secrets.preload([m for name, m in self.tool_manifests.items() if name in self.subject.tools])
        self._tool_infos: dict[str, ToolInfo] = {}
        self.model_calls = ModelCalls(self, gateway.models)
        self.model_calls.preload()
        self.labels = RunLabels(attempt.input, self.tool_manifests, self._handed)
        """Where each value handed to the agent came from, built from the journal when needed."""

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
        # Out-of-band context (the trace a shim request belongs to) is neither hashed nor journaled:
        # it differs between attempts, and a replayed request must still match.
        if "_meta" in params:
            params = {k: v for k, v in params.items() if k != "_meta"}
        request = {"method": method, "params": params}
        try:
            request_text = canonical_text(request)  # encoded once: hashed here, stored if unscrubbed
            request_hash = digest(request_text.encode())
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
                return self._live(seq, kind, request, request_hash, request_text, span)
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
        if seq == self._frontier and self.attempt.on_live is not None:
            self.attempt.on_live()
        reasons = recorded.reasons
        rule_ids = tuple(str(r.get("rule", "")) for r in reasons)
        response = self.g.journal.resolve(recorded.response)  # once: a large one is a blob read
        name = str(request["params"].get("name", "")) if kind == "tool" else ""
        if kind == "tool":
            self.labels.handed(seq, name, recorded.decision, rule_ids, response, recorded.error)
            # A call refused at execution (a Secret's destination, an echo) was counted live too.
            executed = any(r.startswith("secret/") for r in rule_ids)
            if recorded.decision in ("allow", "redact") or executed:
                self.tool_calls += 1
                for rule in rule_ids:  # every grant that covered the call
                    grant = rule.removeprefix("grant/")
                    if rule.startswith("grant/") and "/" not in grant:
                        self.calls_by_grant[grant] = self.calls_by_grant.get(grant, 0) + 1
            self._account(
                seq,
                name,
                recorded.decision,
                rule_ids,
                [str(r.get("text", "")) for r in reasons],
                recorded.error,
            )
        tool = self._tool(name) if kind == "tool" else None
        if tool is not None and tool.workspace_only and recorded.decision == "allow":
            # Workspace effects are re-created: this attempt started from the initial workspace.
            value, error = self._invoke(seq, tool, request["params"], Decision(effect="allow", reasons=()))
            span.outcome(recorded.decision, cast(dict[str, Any] | None, self.redactor.scrub(error)))
            return self._answer(value, error)
        span.outcome(recorded.decision, recorded.error)
        self._check_budget(seq)
        if self.redactor.marked([response, recorded.error]):
            # The live answer held a secret the agent sent itself (a call that carried one would
            # have been refused); the scrubbed copy would show it which value was the secret.
            raise NonDeterministic(
                seq, "its journaled answer was scrubbed of a secret and cannot be replayed as it was given"
            )
        return self._answer(self._shaped(kind, request, response), recorded.error)

    # --- live ------------------------------------------------------------------------

    def _live(
        self,
        seq: int,
        kind: str,
        request: dict[str, Any],
        request_hash: str,
        request_text: str,
        span: ToolSpan,
    ) -> Any:
        started_at = self.g.clock.now()
        t0 = time.perf_counter()
        decision: Decision
        value: Any = None
        error: dict[str, Any] | None = None
        if kind == "tool":
            decision, value, error = self._tool_call(seq, request["params"], request_hash, started_at)
        elif kind == "llm":
            decision, value, error = self.model_calls.call(seq, request["params"], started_at)
        else:
            decision = Decision(
                effect="allow",
                reasons=(f"{kind} comes through the gateway so replay is exact",),
                rule_ids=(f"builtin/{kind}",),
            )
            value = self._seam(kind)
        # Stored scrubbed; answered as it is: redacting the answer would tell the agent which of
        # the values it wrote itself is a secret (a call that carried one was checked for echoes).
        stored = self.redactor.scrub(value)
        stored_error = cast(dict[str, Any] | None, self.redactor.scrub(error))
        duration_us = int((time.perf_counter() - t0) * 1_000_000)
        reasons: list[dict[str, Any]] = [
            {"rule": rule, "text": self.redactor.scrub_text(text)}
            for rule, text in zip(decision.rule_ids, decision.reasons, strict=False)
        ]
        if decision.version:
            for reason in reasons:  # the policy version that made the decision, journaled beside it
                reason["policy"] = decision.version
        if kind == "tool" and decision.effect in ("allow", "redact"):  # its result is labeled trusted
            trusted = self.labels.trusted_reason(str(request["params"].get("name")))
            if trusted is not None:
                reasons.append(trusted)
        attempt = self.attempt
        stored_request = self.redactor.scrub(request)  # the hash is the raw request's: replay compares
        prepared = self.g.journal.prepare(
            run_id=attempt.run_id,
            seq=seq,
            attempt=attempt.attempt,
            kind=kind,
            request=stored_request,
            request_text=request_text if stored_request is request else None,
            request_hash=request_hash,
            decision=decision.effect,
            reasons=reasons,
            response=stored,
            error=stored_error,
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
        elif kind == "llm" and isinstance(stored, dict):
            result = cast(dict[str, Any], stored)
            event.update(model=result.get("model"), usage=result.get("usage"))
        if stored_error is not None:
            event["error"] = stored_error.get("reason") or stored_error.get("message")
        if decision.effect != "allow":
            event["reasons"] = [r["text"] for r in reasons]
        events: list[tuple[str, dict[str, Any]]] = [("call", event)]
        if stored_error is not None and "incident" in stored_error:
            events.append(("incident", {"seq": seq, **stored_error["incident"]}))
        settlement = self.model_calls.take_settlement() if kind == "llm" else ()
        if settlement:  # a model call's budget is settled in its entry's transaction
            prepared = dataclasses.replace(prepared, also=settlement)
        try:
            attempt.commit(prepared, events)
        except LeaseLost:  # nothing written; any other failure may have committed: left held
            self.model_calls.settle_alone(settlement)
            raise
        self.seq, self.head = seq, prepared.entry.hash
        self.g.metrics.calls.labels(kind, decision.effect).inc()
        span.outcome(decision.effect, stored_error)  # spans are exported: scrubbed too
        if kind == "tool":
            name = str(request["params"].get("name", ""))
            rules = [r["rule"] for r in reasons]
            self.labels.handed(seq, name, decision.effect, rules, stored, stored_error)
            self._account(seq, name, decision.effect, decision.rule_ids, list(decision.reasons), error)
            self._check_budget(seq)
        return self._answer(self._shaped(kind, request, value), error)

    @staticmethod
    def _shaped(kind: str, request: dict[str, Any], value: Any) -> Any:
        """A model call's journaled result in the wire format the caller asked for."""
        if kind != "llm" or value is None:
            return value
        return answer(request["params"], value)

    def _account(
        self,
        seq: int,
        tool: str,
        effect: str,
        rule_ids: tuple[str, ...],
        reasons: list[str],
        error: dict[str, Any] | None,
    ) -> None:
        """Count a refused or failed call against the error budget, live and on replay alike.

        A person's denial (or an approval left to expire) is a decision about the call, not an
        error of the agent's: it reaches the agent as a denial and counts for nothing here."""
        if effect == "deny" and any(r.startswith("approval/") for r in rule_ids):
            return
        if effect == "deny":
            by_policy = [r for r in rule_ids if r.startswith("policy/") and r != "policy/error"]
            if by_policy and error is not None and error.get("type") == "policy_denied":
                self.violations.append(
                    f"seq {seq}: {tool!r} refused by {', '.join(by_policy)}: {'; '.join(reasons)}"[:500]
                )
            else:
                self.errors.append(f"denied:{tool}")
        elif error is not None and error.get("type") == "tool_call_failed":
            self.errors.append(f"failed:{tool}:{str(error.get('reason', ''))[:80]}")

    def _check_budget(self, seq: int) -> None:
        """End the attempt once the run's errors exceed its agent's error budget.

        Raises:
            ErrorBudgetExceeded: the worker ends the run and judges the agent's trust.
        """
        verdict = check_error_budget(self.errors, self.violations, self.budget)
        if verdict is not None:
            raise ErrorBudgetExceeded(
                f"error budget exceeded at seq {seq}: {verdict.reason}", rule_id=verdict.rule_id
            )

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

    def policy(self) -> tuple[CompiledPolicy, dict[str, dict[str, Any]]]:
        """The namespace's compiled policy and its grants by name, as of now: the namespace's policy
        stamp is read on every call, so a revoked grant or a new rule bites on the next decision;
        the manifests are read and compiled only when the stamp changed (shared by every session
        of the gateway)."""
        return self.g.policies.current(
            tenant=self.tenant_id, namespace=self.namespace, stamp=self._policy_stamp(), load=self._manifests
        )

    def _policy_stamp(self) -> str | None:
        query = self.attempt.query
        if query is not None:
            row = query(STAMP_SQL, (self.tenant_id, self.namespace))
            return None if row is None else str(row[0])
        with self.g.db.read() as conn:
            return read_policy_stamp(conn, self.tenant_id, self.namespace)

    def _manifests(self) -> Manifests:
        policies = self.g.resources.resources(self.tenant_id, "Policy", self.namespace)
        grants = self.g.resources.resources(self.tenant_id, "ToolGrant", self.namespace)
        return policies, grants

    def _handed(self) -> Iterator[tuple[int, str, str, tuple[str, ...], Any, dict[str, Any] | None]]:
        """The run's journaled tool calls up to this attempt's position (provenance's history)."""
        journal = self.g.journal
        for entry in journal.entries(self.attempt.run_id):
            if entry.kind != "tool" or entry.seq > self.seq:
                continue
            request = journal.resolve(entry.request)
            params: Any = cast(dict[str, Any], request).get("params") if isinstance(request, dict) else None
            name = str(cast(dict[str, Any], params).get("name", "")) if isinstance(params, dict) else ""
            rule_ids = tuple(str(r.get("rule", "")) for r in entry.reasons)
            yield entry.seq, name, entry.decision, rule_ids, journal.resolve(entry.response), entry.error

    def _tool_info(self, name: str) -> ToolInfo:
        info = self._tool_infos.get(name)
        if info is None:
            info = self._tool_infos[name] = ToolInfo.from_manifest(name, self.tool_manifests.get(name))
        return info

    def _tool_call(
        self, seq: int, params: dict[str, Any], request_hash: str, now: datetime
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
        fault = parameters_fault(name, manifest, cast(dict[str, Any], args))
        if fault is not None:  # the Tool's own schema, for every runtime, before any grant or secret
            decision = Decision(effect="deny", reasons=(fault,), rule_ids=("tool/parameters",))
            return decision, None, {"type": "invalid_request", "tool": name, "reason": fault}
        policy, grants = self.policy()
        at = now.timestamp()
        windows, tenant, agent = self.g.rate_windows, self.tenant_id, self.attempt.agent
        namespace = self.namespace
        counters = Counters(
            calls_by_grant=self.calls_by_grant,
            tool_calls=self.tool_calls,
            tokens=self.tokens,
            in_window=lambda ref: windows.count(ref, tenant=tenant, namespace=namespace, agent=agent, now=at),
        )
        call = CallContext(
            subject=self.subject,
            tool=self._tool_info(name),
            args=cast(dict[str, Any], args),
            now=now,
            counters=counters,
            provenance=self.labels.index() if policy.uses_provenance else None,
        )
        decision = policy.decide(call)
        if decision.effect == "require_approval":  # the shortest timeout of the grants that ask
            ttl = min(
                (
                    parse_duration(str(grants.get(g, {}).get("spec", {}).get("approvalTimeout", "24h")))
                    for g in decision.grants or ("",)
                ),
            )
            decision = self._approval(seq, name, args, request_hash, decision, now, ttl)
        if decision.effect not in ("allow", "redact"):
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
        redacted: Any = decision.redacted
        if decision.effect == "redact" and isinstance(redacted, dict):
            params = {**params, "args": cast(dict[str, Any], redacted)}  # the tool gets what the rules left
        self.tool_calls += 1
        for grant in decision.grants:
            self.calls_by_grant[grant] = self.calls_by_grant.get(grant, 0) + 1
        windows.record(decision.consumes, tenant=tenant, namespace=namespace, agent=agent, now=at)
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
        value, error = self._invoke(seq, tool, params, decision)
        if error is not None:
            return as_denial(decision, error), value, error
        # What comes back is judged too: PII and blocked patterns in a tool's result.
        inspected = policy.inspect_output(value, where="tool_result", tool=name)
        if inspected.effect == "allow":
            return decision, value, error
        merged = _stronger(decision, inspected)
        if inspected.effect == "redact":
            return merged, inspected.redacted, None
        refusal = {
            "type": "policy_denied",
            "tool": name,
            "reasons": list(inspected.reasons),
            "rule_ids": list(inspected.rule_ids),
        }
        return merged, None, refusal

    def _approval(
        self, seq: int, tool: str, args: Any, request_hash: str, decision: Decision, now: datetime, ttl: int
    ) -> Decision:
        """The decision a human made on this call, or suspend the run until one is made.

        Raises:
            RunSuspended: no decision yet; the attempt ends and the run waits without a sandbox.
        """
        attempt, store = self.attempt, self.g.approvals
        with self.g.db.write() as conn:
            attempt.fence(conn)
            found = store.for_call(conn, attempt.run_id, seq)
            if found is not None and found.request_hash == request_hash:
                state = found.effective_state(now)
                if state == "expired" and found.state == "pending":
                    store.expire(conn, found, now)
                if state != "pending":
                    return _decided(found, state, decision)
            else:
                found = store.request(
                    conn,
                    tenant_id=attempt.tenant_id,
                    namespace=attempt.namespace,
                    run_id=attempt.run_id,
                    seq=seq,
                    agent=attempt.agent,
                    tool=tool,
                    args=self.redactor.scrub(args),
                    request_hash=request_hash,
                    reasons=[self.redactor.scrub_text(r) for r in decision.reasons],
                    now=now,
                    expires_at=now + timedelta(seconds=ttl),
                )
        raise RunSuspended(f"waiting for approval {found.id} of a call to {tool!r}", approval_id=found.id)

    def _invoke(
        self, seq: int, tool: Tool, params: dict[str, Any], decision: Decision
    ) -> tuple[Any, dict[str, Any] | None]:
        name = str(params["name"])
        manifest = self.tool_manifests[name]
        spec: dict[str, Any] = manifest["spec"]
        try:
            headers, carried = self.secrets.headers(
                name, spec.get("secrets", []), spec["implementation"].get("headers", {})
            )
            ctx = ToolContext(
                run_id=self.attempt.run_id,
                seq=seq,
                workspace=self.workspace,
                egress=decision.egress,
                headers=headers,
                secrets=carried,
                limits=self.g.limits,
                may_send=self._fence_effect(tool),
                pool=f"{self.tenant_id}/{self.namespace}",
            )
            value = tool.invoke(dict(params.get("args", {})), ctx)
        except ToolCallFailed as exc:
            return None, exc.to_record()
        incident = self.echoes.check(name, self.secrets.injected([c.name for c in carried]), value)
        return (None, incident) if incident is not None else (value, None)

    def _fence_effect(self, tool: Tool) -> Callable[[], None] | None:
        """The last gate before an external effect, as late as it can be: confirm on the attempt's
        held connection that it still holds the run (renewing the lease when under half of it is
        left), and hand the tool the lease's own check for the moment it sends. A worker paused anywhere before that moment finds its lease past its
        margin when it wakes, and sends nothing (README, "Effects after a lost lease")."""
        if tool.workspace_only:
            return None
        lease = self.attempt.lease
        if lease is None:
            with self.g.db.read() as conn:
                self.attempt.fence(conn)
            return None
        lease.confirm()
        return lease.check

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


def _stronger(call: Decision, output: Decision) -> Decision:
    """The call's decision joined with the verdict on its output (the stronger effect wins)."""
    effect = output.effect if RANK[output.effect] > RANK[call.effect] else call.effect
    return dataclasses.replace(
        call,
        effect=effect,
        reasons=(*call.reasons, *output.reasons),
        rule_ids=(*call.rule_ids, *output.rule_ids),
        version=call.version or output.version,
    )


def _decided(approval: Approval, state: ApprovalState, asked: Decision) -> Decision:
    """The policy's ``require_approval`` turned into what the human (or the deadline) decided."""
    rule_ids = (*asked.rule_ids, f"approval/{approval.id}")
    why = f": {approval.reason}" if approval.reason else ""
    if state == "approved":
        return Decision(
            effect="allow",
            reasons=(*asked.reasons, f"approved by {approval.decided_by}{why}"),
            rule_ids=rule_ids,
            egress=asked.egress,
            grant=asked.grant,
            grants=asked.grants,
            consumes=asked.consumes,
        )
    if state == "expired":
        reason = f"approval {approval.id} expired at {approval.expires_at.isoformat()} without a decision"
    else:
        reason = f"denied by {approval.decided_by}{why}"
    return Decision(effect="deny", reasons=(*asked.reasons, reason), rule_ids=rule_ids)


def _summary(request: Any) -> str:
    if not isinstance(request, dict):
        return "something else"
    req = cast(dict[str, Any], request)
    params: dict[str, Any] = req.get("params") or {}
    if req.get("method") == "tool.call":
        return f"tool {params.get('name')!r} with args {canonical(params.get('args', {})).decode()[:200]}"
    return str(req.get("method"))
