"""The ``llm.chat`` call kind: one model call through the gateway's pipeline.

In order: parse the params (a bad request is refused and journaled like any other); policy (the
agent must name a ModelPolicy that exists: default deny); the lease fence (a zombie makes no
paid call: read in the reservation's transaction); the budget reservation; then the router, which
asks for each target's key only when it is about to use it (secrets after the decision); the
budget's settlement with the real usage; the ``chat {model}`` span and the metrics. The session
scrubs and journals what this returns, and writes the settlement in the entry's transaction.

Streaming: the provider's stream is collected here and the whole answer is journaled and
returned at once (the journaled unit is the answer, so a replay gives the same answer in one
piece); the in-sandbox shim re-streams it to the SDK as SSE. Fallback to the next target is
still allowed only before the provider's first streamed byte.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import Status, StatusCode

from bastion.errors import BudgetExceeded, ModelCallFailed, SecretRefused
from bastion.execution.llm import (
    BadChat,
    Models,
    Route,
    Statements,
    Target,
    budgets_for,
    endpoint,
    parse_params,
)
from bastion.observe.journal import digest
from bastion.policy import Decision

from ._echo import as_denial

if TYPE_CHECKING:
    from ._gateway import GatewaySession

Outcome = tuple[Decision, Any, "dict[str, Any] | None"]
log = logging.getLogger(__name__)


def _deny(rule: str, reason: str, error_type: str = "policy_denied") -> Outcome:
    decision = Decision(effect="deny", reasons=(reason,), rule_ids=(rule,))
    error: dict[str, Any] = {"type": error_type, "reasons": [reason], "rule_ids": [rule]}
    if error_type == "invalid_request":
        error = {"type": error_type, "reason": reason}
    return decision, None, error


class ModelCalls:
    """A session's model calls (one per session; the router, ledger and metrics are shared)."""

    def __init__(self, session: GatewaySession, models: Models | None) -> None:
        self.s = session
        self.models = models
        self.policy_name: str | None = session.attempt.agent_spec["spec"].get("modelPolicy")
        self._policy: dict[str, Any] | None = None
        self._route: Route | None = None
        """The policy's route, built with it (once per session, as the policy is read)."""
        self._carried: list[str] = []
        """The Secrets whose keys the current call sent (its response is checked for them)."""
        self._refused: list[SecretRefused] = []
        """The current call's targets refused a key because of the Secret's destinations."""
        self.settlement: Statements = ()
        """The current call's budget settlement, for the session to write with its journal entry
        (``Prepared.also``), or alone (``settle_alone``) if the entry cannot be written."""

    def take_settlement(self) -> Statements:
        settlement, self.settlement = self.settlement, ()
        return settlement

    def settle_alone(self, settlement: Statements) -> None:
        """The journal entry was not written (a lost lease): the call's spend is charged anyway
        and its reservation given back (never an exception: the entry's failure is the news)."""
        if self.models is None or not settlement:
            return
        try:
            self.models.ledger.write(settlement)
        except Exception:
            log.exception("settling model call budgets of run %s failed", self.s.attempt.run_id)

    def policy(self) -> dict[str, Any] | None:
        if self._policy is None and self.policy_name is not None:
            s = self.s
            self._policy = s.g.resources.resource(s.tenant_id, "ModelPolicy", s.namespace, self.policy_name)
            if self._policy is not None:
                self._route = Route.from_spec(self._policy["spec"])
        return self._policy

    def preload(self) -> None:
        """Teach the redactor the provider keys this agent's calls may use, before the agent runs."""
        policy = self.policy()
        if policy is None:
            return
        assert self._route is not None
        for target in self._route.targets:
            if target.secret is not None:
                try:
                    self.s.secrets.provider_key(target.provider, target.secret)
                except ModelCallFailed:
                    continue  # the call that needs it fails with the reason

    def call(self, seq: int, params: Mapping[str, Any], now: datetime) -> Outcome:
        self.settlement = ()
        try:
            request, stream, _ = parse_params(params)
        except BadChat as exc:
            return _deny("request/invalid", f"llm.chat: {exc}", "invalid_request")
        if self.policy_name is None:
            return _deny(
                "model/no-policy", "the agent names no spec.modelPolicy: its model calls have nowhere to go"
            )
        policy = self.policy()
        if policy is None:
            return _deny(
                "model/no-policy",
                f"ModelPolicy {self.policy_name!r} does not exist in namespace {self.s.namespace!r}",
            )
        decision = Decision(
            effect="allow",
            reasons=(f"the agent's model calls go through ModelPolicy {self.policy_name!r}",),
            rule_ids=(f"model/{self.policy_name}",),
        )
        if self.models is None:
            return decision, None, ModelCallFailed("this Bastion has no model router").to_record()
        s, attempt, models = self.s, self.s.attempt, self.models
        fence = None
        if attempt.lease is None:
            fence = attempt.fence  # no paid call from an attempt that lost its run: read with the reservation
        else:  # as before any external effect: renewed and checked in one statement, then the margin
            attempt.lease.renew()
            attempt.lease.check()
        route = self._route
        assert route is not None
        spec: dict[str, Any] = attempt.agent_spec["spec"]
        budgets = budgets_for(
            policy=policy["spec"],
            agent_limits=spec.get("limits") or {},
            run_id=attempt.run_id,
            tenant_id=attempt.tenant_id,
            namespace=attempt.namespace,
            agent=attempt.agent,
            day=now.date().isoformat(),
        )
        key = f"{attempt.run_id}:{seq}"
        tokens, cost = route.estimate(request)
        try:
            reservation = models.ledger.reserve(key, budgets, tokens=tokens, cost_usd=cost, fence=fence)
        except BudgetExceeded as exc:
            refusal = Decision(effect="deny", reasons=(exc.detail,), rule_ids=(f"budget/{exc.budget}",))
            return refusal, None, exc.to_record()
        first = route.targets[0]
        self._carried, self._refused = [], []
        with s.g.telemetry.chat_span(
            attempt.span, provider=first.provider, model=first.model, seq=seq
        ) as span:
            try:
                result = models.router.complete(
                    route,
                    request,
                    scope=f"{attempt.tenant_id}/{attempt.namespace}",
                    stream=stream,
                    key_for=self._key,
                    idempotency_key=key,
                    call_id=digest(key.encode())[:24],
                    created=int(now.timestamp()),
                )
            except ModelCallFailed as exc:
                self.settlement = models.ledger.settlement(reservation, (), tokens=0, cost_usd=0.0)
                if self._refused:  # a Secret may not go where this policy points: a denial
                    refused = self._refused[0]
                    return _deny(refused.rule_id, refused.reason)
                # A failure's text reaches the agent unredacted (no oracle): one that carries a
                # key the call sent back is refused like an answer that does.
                failure = exc.to_record()
                incident = s.echoes.check(first.provider, s.secrets.injected(self._carried), failure)
                if incident is not None:
                    return as_denial(decision, incident), None, incident
                models.metrics.failed(tenant=attempt.tenant_id, agent=attempt.agent)
                span.span.set_attribute("error.type", "model_call_failed")
                span.span.set_status(Status(StatusCode.ERROR, s.redactor.scrub_text(exc.reason)[:1024]))
                return decision, None, failure
            span.span.set_attribute("gen_ai.provider.name", result.provider)
            span.usage(
                input_tokens=result.usage.input_tokens,
                output_tokens=result.usage.output_tokens,
                response_model=result.model,
                finish_reasons=(result.finish_reason,),
            )
        self.settlement = models.ledger.settlement(
            reservation, [b.scope for b in budgets], tokens=result.usage.total, cost_usd=result.cost_usd
        )
        models.metrics.used(
            tenant=attempt.tenant_id,
            agent=attempt.agent,
            model=result.model,
            input_tokens=result.usage.input_tokens,
            output_tokens=result.usage.output_tokens,
            cost_usd=result.cost_usd,
        )
        answer = result.to_json()
        incident = s.echoes.check(result.provider, s.secrets.injected(self._carried), answer)
        if incident is not None:
            return as_denial(decision, incident), None, incident
        return decision, answer, None

    def _key(self, target: Target) -> str | None:
        """The target's API key, if its Secret names the target's endpoint among its destinations.

        Raises:
            ModelCallFailed: the router then tries the next target.
        """
        if target.secret is None:
            return None
        url = endpoint(target) or f"{target.provider}:"
        try:
            key = self.s.secrets.provider_key(target.provider, target.secret, url)
        except SecretRefused as exc:
            self._refused.append(exc)
            raise ModelCallFailed(exc.reason) from None
        self._carried.append(target.secret)
        return key
