"""The compiled policy: ``decide`` for tool calls, ``inspect_output`` for results and model output.

Per (subject, tool) a plan is built once and cached: which grants could allow, which deny, what
is statically refused (the agent does not list the tool, the tool is missing or needs a higher
tier), which blocked-pattern scanners, limits, rate limits, egress lists and Rego modules apply,
and the allow decision itself, prebuilt. A call then only checks what can change between calls
(time, counters, arguments), and the common allow returns the prebuilt object.

Combining: every rule that objects yields a ``Finding``; the strongest effect wins (deny >
require_approval > redact > allow) with all the rules that reached it, sorted, so neither the
order of resources nor of rules can change a decision. No allowing grant is a deny.

Grants: every allowing grant that names the subject and the tool and *covers* the call (not
expired, calls and rate left, its ``arguments`` schema, ``argumentPatterns`` and egress list
satisfied) takes part, and the strongest of their effects wins: one that requires approval
beats one that allows, whatever their names. An allowed call counts against every grant that
took part (``Decision.grants``). A grant's ``requireArguments`` is not a scope but a condition:
while the grant has not expired, a call it names whose arguments fail it is denied.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any, Literal, cast

from jsonschema.exceptions import ValidationError, best_match  # pyright: ignore[reportUnknownVariableType]

from ._call import CallContext, Counters
from ._compile import Compiled, GrantRule, PatternRule, Where, build
from ._decision import Decision, Finding, RateLimitRef, combine
from ._egress import HttpTarget, allows, parse_target
from ._grants import Subject, tier_rank
from ._pii import Detection, detect, redact
from ._provenance import ProvenanceCheck
from ._scan import Scanner

_PLAN_CACHE = 8192


@dataclass(frozen=True, kw_only=True)
class _Candidate:
    """An allowing grant that names the subject and the tool, with its decisions prebuilt."""

    grant: GrantRule
    decision: Decision
    plain: bool
    """Nothing about it can change between calls: no expiry, count, rate, schema or egress."""


@dataclass(frozen=True, kw_only=True)
class _Plan:
    static: tuple[Finding, ...]
    """Denials known from the subject and tool alone."""
    refusals: tuple[Finding, ...]
    """Grants that name the subject and tool but can never allow it (tier too low)."""
    candidates: tuple[_Candidate, ...]
    plain: bool
    """Every candidate is ``plain`` and the tool does not fetch: the grants that cover a call
    are all of them, whatever its arguments."""
    together: Decision | None
    """With several candidates all ``plain``: their combined decision, prebuilt."""
    requirements: tuple[GrantRule, ...]
    """Grants whose ``requireArguments`` covers this tool (deny unless)."""
    deny_grants: tuple[GrantRule, ...]
    provenance: tuple[ProvenanceCheck, ...]
    """Requirements on where the arguments came from: grants' ``requireProvenance`` and rules'
    ``provenance`` that cover this tool."""
    scanners: tuple[tuple[Scanner, str, tuple[str, ...]], ...]
    """(scanner, action, rule ids) for the argument patterns that cover this tool."""
    limits: tuple[tuple[str, Literal["calls", "tokens"], int], ...]
    rates: tuple[tuple[RateLimitRef, int], ...]
    egress: tuple[PatternRule, ...]
    rego: tuple[tuple[str, Any], ...]
    fetches: bool
    http_url: str | None
    """An HTTP tool's URL, judged by the egress rules as ``http.fetch``'s ``url`` argument is;
    a grant without an ``egress`` list does not restrict it (a Policy rule's ``egressAllow`` does)."""
    subject: Subject
    tool: str
    fast: Decision | None = None
    """The allow to return when the arguments hold no blocked pattern, where nothing else can
    change between calls (plain candidates, no fetch, limit, rate, static or provenance check,
    requirement, deny grant or Rego module); None otherwise."""


class CompiledPolicy:
    """A policy version, ready to decide. Build it with ``compile_policy``; share it freely."""

    def __init__(self, compiled: Compiled) -> None:
        self._c = compiled
        self.version = compiled.version
        self.errors = compiled.errors
        """Why the inputs did not compile; when not empty, every decision is a deny naming them."""
        self.uses_provenance = (
            bool(compiled.rego)
            or any(r.provenance for r in compiled.rules)
            or any(g.provenance for g in compiled.grants)
        )
        """Whether any decision can read provenance: a requirement, a rule or a Rego module
        (whose input then carries it). A caller without such a policy need not label values."""
        self._plans: dict[str, dict[str, _Plan]] = {}
        self._outputs: dict[tuple[str, str | None], tuple[tuple[Scanner, str, tuple[str, ...]], ...]] = {}
        self._broken = (
            Decision(
                effect="deny",
                reasons=tuple(f"the policy does not compile: {e}" for e in compiled.errors),
                rule_ids=("policy/invalid",),
                version=compiled.version,
            )
            if compiled.errors
            else None
        )
        self._clean_output = Decision(
            effect="allow",
            reasons=("no blocked pattern or personal data found",),
            rule_ids=("output/clean",),
            version=compiled.version,
        )

    @property
    def trust(self) -> Mapping[str, Any]:
        """Per Policy name, the ``spec.trust`` settings it declared (camelCase)."""
        return self._c.trust

    @property
    def rate_limits(self) -> tuple[RateLimitRef, ...]:
        """Every rate limit this policy declares, for a caller sizing its counters."""
        refs = [g.rate[0] for g in self._c.grants if g.rate] + [r.rate[0] for r in self._c.rules if r.rate]
        return tuple(sorted(set(refs), key=lambda r: (r.owner, r.scope)))

    # --- tool calls ------------------------------------------------------------------

    def decide(self, call: CallContext) -> Decision:
        """Decide one tool call. Never raises: an error while deciding is a deny naming it."""
        if self._broken is not None:
            return self._broken
        try:
            by_tool = self._plans.get(call.subject.key)
            plan = by_tool.get(call.tool.key) if by_tool is not None else None
            if plan is None:
                plan = self._plan(call)
            return self._decide(plan, call)
        except Exception as exc:  # fail closed
            return Decision(
                effect="deny",
                reasons=(f"the policy could not decide ({type(exc).__name__}: {str(exc)[:200]}); denied",),
                rule_ids=("policy/error",),
                version=self.version,
            )

    def _decide(self, plan: _Plan, call: CallContext) -> Decision:
        fast = plan.fast
        if fast is not None:  # the common case: only the arguments can change the answer
            args = call.args
            found: list[Finding] | None = None
            for scanner, action, rule_ids in plan.scanners:
                if scanner.scan(args):
                    found = found or []
                    found.extend(self._pattern_findings(scanner, action, rule_ids, args))
            if found is None:
                return fast
            return self._combine(plan, call, plan.candidates, found, None)
        findings: list[Finding] | None = None
        refused: list[Finding] = []
        usable: Sequence[_Candidate]
        if plan.plain:
            usable = plan.candidates  # nothing about them can change: no list to build
        else:
            kept: list[_Candidate] = []
            for cand in plan.candidates:
                refusal = None if cand.plain else self._refuse(cand.grant, call)
                if refusal is None:
                    kept.append(cand)
                else:
                    refused.append(refusal)
            usable = kept
        target: HttpTarget | None = None
        outside: list[Finding] | None = None
        if plan.fetches or plan.http_url is not None:
            target, usable, more, outside = self._egress(plan, usable, call)
            refused.extend(more)
        if not usable:
            findings = refused + list(plan.refusals)
            if not findings:
                findings.append(
                    Finding(
                        "default-deny",
                        "deny",
                        f"no ToolGrant lets agent {plan.subject.name!r} call {plan.tool!r} (default deny)",
                    )
                )
        if outside:
            findings = (findings or []) + outside
        args = call.args
        for scanner, action, rule_ids in plan.scanners:
            if scanner.scan(args):
                findings = findings or []
                findings.extend(self._pattern_findings(scanner, action, rule_ids, args))
        if (
            plan.limits
            or plan.rates
            or plan.deny_grants
            or plan.static
            or plan.requirements
            or plan.provenance
        ):
            more = self._dynamic(plan, call)
            if more:
                findings = (findings or []) + more
        if usable and plan.rego and not _denied(findings):
            more = self._rego(plan, call, usable)
            if more:
                findings = (findings or []) + more
        if usable and not findings and target is None:
            if len(usable) == 1:
                return usable[0].decision  # the common case: prebuilt, no allocation
            if plan.plain and plan.together is not None:
                return plan.together
        return self._combine(plan, call, usable, findings or [], target)

    def _combine(
        self,
        plan: _Plan,
        call: CallContext,
        usable: Sequence[_Candidate],
        findings: list[Finding],
        target: HttpTarget | None,
    ) -> Decision:
        for cand in usable:
            base = cand.decision
            findings.append(Finding(base.rule_ids[0], base.effect, base.reasons[0]))
        redacted: Any = None
        if any(f.effect == "redact" for f in findings):
            redacted = call.args
            for scanner, action, _ in plan.scanners:
                if action == "redact":
                    redacted = scanner.redact(redacted, "[REDACTED]")
        decision = combine(findings, version=self.version, redacted=redacted)
        if decision.effect == "deny" or not usable:
            return decision
        return self._granted(decision, usable, target)

    def _granted(
        self, decision: Decision, usable: Sequence[_Candidate], target: HttpTarget | None
    ) -> Decision:
        """``decision`` (not a deny) with what the grants that took part add: their names, the
        rate limits the call counts against, the hosts it may reach."""
        names = tuple(sorted(c.grant.name for c in usable))
        consumes = tuple(
            sorted({r for c in usable for r in c.decision.consumes}, key=lambda r: (r.owner, r.scope))
        )
        if target is not None:
            egress: tuple[str, ...] = (str(target),)
        else:
            egress = tuple(sorted({h for c in usable for h in c.decision.egress}))
        # The grants that took part without deciding (an allowing one beside one that asks for
        # approval, every one beside a redaction) are named too: a replay counts from the journal.
        quiet = [n for n in names if f"grant/{n}" not in decision.rule_ids]
        return Decision(
            effect=decision.effect,
            reasons=(*decision.reasons, *(f"grant {n!r} also covers this call" for n in quiet)),
            rule_ids=(*decision.rule_ids, *(f"grant/{n}" for n in quiet)),
            egress=egress,
            grant=names[0],
            grants=names,
            version=self.version,
            redacted=decision.redacted,
            consumes=consumes,
        )

    def _refuse(self, grant: GrantRule, call: CallContext) -> Finding | None:
        rule = f"grant/{grant.name}"
        if grant.expires_ts is not None and _ts(call) >= grant.expires_ts:
            assert grant.expires_at is not None
            return Finding(rule, "deny", f"grant {grant.name!r} expired at {grant.expires_at.isoformat()}")
        counters = call.counters
        if grant.max_calls is not None and counters.calls_by_grant.get(grant.name, 0) >= grant.max_calls:
            return Finding(
                rule, "deny", f"grant {grant.name!r} allows {grant.max_calls} calls per run; all are used"
            )
        if grant.rate is not None:
            ref, calls = grant.rate
            if counters.in_window(ref) >= calls:
                return Finding(
                    f"{rule}/rate",
                    "deny",
                    f"grant {grant.name!r} allows {calls} calls per {ref.seconds}s per {ref.scope}; the limit is reached",
                )
        tool = call.tool.name
        schema = grant.schemas.get(tool)
        fault = _schema_fault(schema, call.args) if schema is not None else None
        if fault is not None:
            return Finding(
                f"{rule}/arguments",
                "deny",
                f"grant {grant.name!r}: the arguments do not match its schema for {tool!r}{fault}",
            )
        for arg, pattern in grant.arg_patterns.get(tool, ()):
            if arg not in call.args:
                continue
            value = call.args[arg]
            text = value if isinstance(value, str) else None
            if isinstance(value, bool | int | float) or value is None:
                text = json.dumps(value)
            if text is None or not pattern.fullmatch(text):
                return Finding(
                    f"{rule}/arguments",
                    "deny",
                    f"grant {grant.name!r}: argument {arg!r} does not match the allowed pattern {pattern.pattern!r}",
                )
        return None

    def _pattern_findings(
        self, scanner: Scanner, action: str, rule_ids: tuple[str, ...], args: Any
    ) -> list[Finding]:
        hits = scanner.which(args)
        if not hits:  # the scan saw something ``which`` cannot name: still the rules' action
            return [Finding(r, action, "a blocked pattern matched the arguments") for r in rule_ids]  # type: ignore[arg-type]
        verb = {"deny": "denied", "redact": "redacted", "require_approval": "held for approval"}[action]
        return [
            Finding(
                rule.rule_id,
                action,  # type: ignore[arg-type]
                f"blocked {rule.match} {rule.pattern!r} found in the arguments ({text[:80]!r}); {verb}",
            )
            for rule, text in hits
        ]

    def _dynamic(self, plan: _Plan, call: CallContext) -> list[Finding]:
        out = list(plan.static)
        counters: Counters = call.counters
        for rule_id, kind, limit in plan.limits:
            used = counters.tool_calls if kind == "calls" else counters.tokens
            if used >= limit:
                what = "tool calls" if kind == "calls" else "model tokens"
                out.append(Finding(rule_id, "deny", f"the run has used {used} of {limit} {what}"))
        for ref, calls in plan.rates:
            if counters.in_window(ref) >= calls:
                out.append(
                    Finding(ref.owner, "deny", f"{calls} calls per {ref.seconds}s per {ref.scope} is reached")
                )
        for grant in plan.requirements:
            if grant.expires_ts is None or _ts(call) < grant.expires_ts:
                fault = _schema_fault(grant.requirements[plan.tool], call.args)
                if fault is not None:
                    out.append(
                        Finding(
                            f"grant/{grant.name}/requireArguments",
                            "deny",
                            f"grant {grant.name!r} requires the arguments of {plan.tool!r} to match its "
                            f"requireArguments schema{fault}; denied",
                        )
                    )
        for check in plan.provenance:
            if check.expires_ts is None or _ts(call) < check.expires_ts:
                fault = check.fault(call.args, call.provenance)
                if fault is not None:
                    verb = "held for approval" if check.action == "require_approval" else "denied"
                    out.append(Finding(check.rule_id, check.action, f"{fault}; {verb}"))
        for grant in plan.deny_grants:
            if grant.expires_ts is None or _ts(call) < grant.expires_ts:
                out.append(
                    Finding(
                        f"grant/{grant.name}",
                        "deny",
                        f"grant {grant.name!r} forbids {plan.subject.name!r} to call {plan.tool!r}",
                    )
                )
        return out

    def _egress(
        self, plan: _Plan, usable: Sequence[_Candidate], call: CallContext
    ) -> tuple[HttpTarget | None, Sequence[_Candidate], list[Finding], list[Finding]]:
        """The call's target; the grants whose egress list covers it; why the others do not;
        and the rules' allowlists' findings."""
        target = parse_target(call.args.get("url") if plan.fetches else plan.http_url)
        if isinstance(target, str):
            if not plan.fetches:
                target = target.replace("argument 'url'", f"tool {plan.tool!r}'s url", 1)
            return None, usable, [], [Finding("egress/url", "deny", target)]
        refused: list[Finding] = []
        out: list[Finding] = []
        covering: list[_Candidate] = []
        for cand in usable:
            if allows(cand.grant.egress, target) or (not plan.fetches and not cand.grant.egress):
                covering.append(cand)
            else:
                refused.append(
                    Finding(
                        f"grant/{cand.grant.name}/egress",
                        "deny",
                        f"host {str(target)!r} is not in grant {cand.grant.name!r}'s egress allowlist",
                    )
                )
        for rule in plan.egress:
            if not allows(rule.egress, target):
                action = "require_approval" if rule.action == "require_approval" else "deny"
                out.append(
                    Finding(
                        rule.rule_id, action, f"host {str(target)!r} is not in the rule's egress allowlist"
                    )
                )
        return target, covering, refused, out

    def _rego(self, plan: _Plan, call: CallContext, usable: Sequence[_Candidate]) -> list[Finding]:
        names = sorted(c.grant.name for c in usable)
        document = rego_input(call, names[0], names)
        out: list[Finding] = []
        for rule_id, module in plan.rego:
            verdict = module.evaluate(document)
            if not verdict.allowed:
                out.append(Finding(rule_id, "deny", verdict.reason))
        return out

    # --- plans -------------------------------------------------------------------------

    def _plan(self, call: CallContext) -> _Plan:
        subject, tool = call.subject, call.tool
        c = self._c
        static: list[Finding] = []
        if tool.name not in subject.tools:
            static.append(
                Finding(
                    "agent/tools",
                    "deny",
                    f"agent {subject.name!r} does not list tool {tool.name!r} in spec.tools",
                )
            )
        if not tool.exists:
            static.append(Finding("tool/missing", "deny", f"no tool {tool.name!r} exists in this namespace"))
        if tier_rank(subject.tier) < tier_rank(tool.min_tier):
            static.append(
                Finding(
                    "tool/min-tier",
                    "deny",
                    f"tool {tool.name!r} needs tier {tool.min_tier}; agent {subject.name!r} is {subject.tier}",
                )
            )
        refusals: list[Finding] = []
        candidates: list[_Candidate] = []
        deny_grants: list[GrantRule] = []
        requirements: list[GrantRule] = []
        provenance: list[ProvenanceCheck] = [
            r.provenance
            for r in c.rules
            if r.provenance is not None
            and r.covers(tool.name)
            and (not r.provenance.effects or tool.effect in r.provenance.effects)
        ]
        rules = [r for r in c.rules if "arguments" in r.applies_to and r.covers(tool.name)]
        rates = [r.rate for r in rules if r.rate is not None]
        for grant in c.grants:
            if tool.name not in grant.tools or not grant.names(subject.name, subject.labels, subject.tier):
                continue
            if grant.effect == "deny":
                deny_grants.append(grant)
                continue
            if tool.name in grant.requirements:
                requirements.append(grant)
            provenance.extend(grant.provenance.get(tool.name, ()))
            if tier_rank(subject.tier) < tier_rank(grant.min_tier):
                refusals.append(
                    Finding(
                        f"grant/{grant.name}", "deny", f"grant {grant.name!r} needs tier {grant.min_tier}"
                    )
                )
                continue
            consumes = tuple(ref for ref, _ in ([grant.rate] if grant.rate else []) + rates)
            effect = "require_approval" if grant.require_approval else "allow"
            reason = (
                f"grant {grant.name!r} lets {subject.name!r} call {tool.name!r} after a person approves"
                if grant.require_approval
                else f"grant {grant.name!r} lets {subject.name!r} call {tool.name!r}"
            )
            decision = Decision(
                effect=effect,
                reasons=(reason,),
                rule_ids=(f"grant/{grant.name}",),
                egress=grant.egress,
                grant=grant.name,
                grants=(grant.name,),
                version=self.version,
                consumes=consumes,
            )
            plain = (
                grant.expires_ts is None
                and grant.max_calls is None
                and grant.rate is None
                and tool.name not in grant.schemas
                and tool.name not in grant.arg_patterns
            )
            candidates.append(_Candidate(grant=grant, decision=decision, plain=plain))
        together = None
        if len(candidates) > 1 and all(c.plain for c in candidates):
            found = [
                Finding(c.decision.rule_ids[0], c.decision.effect, c.decision.reasons[0]) for c in candidates
            ]
            together = self._granted(combine(found, version=self.version), candidates, None)
        groups: dict[tuple[str, frozenset[Any]], set[Any]] = {}
        ids: dict[tuple[str, frozenset[Any]], set[str]] = {}
        for rule in rules:
            for blocked, decode in rule.patterns:
                groups.setdefault((rule.action, decode), set()).add(blocked)
                ids.setdefault((rule.action, decode), set()).add(rule.rule_id)
        scanners = tuple(
            (c.scanner(action, decode, frozenset(blocked)), action, tuple(sorted(ids[(action, decode)])))  # type: ignore[arg-type]
            for (action, decode), blocked in sorted(
                groups.items(), key=lambda kv: (kv[0][0], sorted(kv[0][1]))
            )
        )
        limits = list(c.limits)
        if subject.max_tool_calls is not None:
            limits.append(("agent/limits.toolCalls", "calls", subject.max_tool_calls))
        if subject.max_tokens is not None:
            limits.append(("agent/limits.tokens", "tokens", subject.max_tokens))
        fast: Decision | None = None
        if (
            candidates
            and all(cand.plain for cand in candidates)
            and not tool.fetches
            and tool.url is None
            and not (static or refusals or limits or rates or deny_grants or requirements or provenance)
            and not c.rego
        ):
            fast = candidates[0].decision if len(candidates) == 1 else together
        plan = _Plan(
            static=tuple(static),
            refusals=tuple(refusals),
            candidates=tuple(candidates),
            plain=all(c.plain for c in candidates) and not tool.fetches and tool.url is None,
            together=together,
            requirements=tuple(requirements),
            deny_grants=tuple(deny_grants),
            provenance=tuple(provenance),
            scanners=scanners,
            limits=tuple(sorted(limits)),
            rates=tuple(sorted((r for r in rates), key=lambda r: r[0].owner)),
            egress=tuple(r for r in rules if r.egress) if tool.fetches or tool.url is not None else (),
            rego=c.rego,
            fetches=tool.fetches,
            http_url=tool.url,
            subject=subject,
            tool=tool.name,
            fast=fast,
        )
        by_tool = self._plans.get(subject.key)
        if by_tool is None:
            if len(self._plans) >= _PLAN_CACHE:
                self._plans.clear()
            by_tool = self._plans[subject.key] = {}
        by_tool[tool.key] = plan
        return plan

    # --- outputs ---------------------------------------------------------------------

    def inspect_output(
        self, value: Any, *, where: Where = "tool_result", tool: str | None = None
    ) -> Decision:
        """Judge a tool's result or a model's output: blocked patterns of the rules that apply
        ``where`` (and to ``tool``, when given) and personal data per each Policy's ``pii``.
        ``redact`` carries the redacted value in ``Decision.redacted``. Never raises."""
        if self._broken is not None:
            return self._broken
        try:
            return self._inspect(value, where, tool)
        except Exception as exc:  # fail closed
            return Decision(
                effect="deny",
                reasons=(
                    f"the output could not be inspected ({type(exc).__name__}: {str(exc)[:200]}); withheld",
                ),
                rule_ids=("policy/error",),
                version=self.version,
            )

    def _inspect(self, value: Any, where: Where, tool: str | None) -> Decision:
        scanners = self._output_scanners(where, tool)
        if not scanners and not self._c.pii:
            return self._clean_output
        findings: list[Finding] = []
        redacted = value
        for scanner, action, rule_ids in scanners:
            if scanner.scan(value):
                findings.extend(self._pattern_findings(scanner, action, rule_ids, value))
                if action == "redact":
                    redacted = scanner.redact(redacted, "[REDACTED]")
        if self._c.pii:
            pii_findings, redacted = self._pii(redacted)
            findings.extend(pii_findings)
        if not findings:
            return self._clean_output
        return combine(findings, version=self.version, redacted=redacted)

    def _output_scanners(
        self, where: Where, tool: str | None
    ) -> tuple[tuple[Scanner, str, tuple[str, ...]], ...]:
        key = (where, tool)
        found = self._outputs.get(key)
        if found is None:
            groups: dict[tuple[str, frozenset[Any]], set[Any]] = {}
            ids: dict[tuple[str, frozenset[Any]], set[str]] = {}
            for rule in self._c.rules:
                if where in rule.applies_to and rule.covers(tool):
                    for blocked, decode in rule.patterns:
                        groups.setdefault((rule.action, decode), set()).add(blocked)
                        ids.setdefault((rule.action, decode), set()).add(rule.rule_id)
            found = tuple(
                (self._c.scanner(action, decode, frozenset(b)), action, tuple(sorted(ids[(action, decode)])))  # type: ignore[arg-type]
                for (action, decode), b in sorted(groups.items(), key=lambda kv: (kv[0][0], sorted(kv[0][1])))
            )
            if len(self._outputs) < _PLAN_CACHE:
                self._outputs[key] = found
        return found

    def _pii(self, value: Any) -> tuple[list[Finding], Any]:
        rules = self._c.pii
        entities: frozenset[str] = frozenset[str]().union(*(r.entities for r in rules))
        floor = min(r.min_score for r in rules)
        seen: dict[str, list[Detection]] = {}
        hit: dict[str, set[str]] = {}

        def visit(text: str) -> str:
            detections = seen.get(text)
            if detections is None:
                detections = seen[text] = detect(text, entities, floor)
            keep: list[Detection] = []
            for rule in rules:
                relevant = [d for d in detections if d.entity in rule.entities and d.score >= rule.min_score]
                if relevant:
                    hit.setdefault(rule.rule_id, set()).update(d.entity for d in relevant)
                    if rule.action == "redact":
                        keep.extend(relevant)
            return redact(text, set(keep)) if keep else text

        from ._scan import _map_strings  # pyright: ignore[reportPrivateUsage]

        redacted = _map_strings(value, visit)
        findings: list[Finding] = []
        for rule in rules:
            kinds = hit.get(rule.rule_id)
            if kinds:
                verb = "withheld" if rule.action == "deny" else "redacted"
                findings.append(
                    Finding(
                        rule.rule_id, rule.action, f"personal data found ({', '.join(sorted(kinds))}); {verb}"
                    )  # type: ignore[arg-type]
                )
        return findings, redacted


def _ts(call: CallContext) -> float:
    now = call.now
    return (now if now.tzinfo is not None else now.replace(tzinfo=UTC)).timestamp()


def _schema_fault(schema: Any, args: Any) -> str | None:
    """`` at 'path': message`` of the most relevant violation of ``schema``, or None."""
    if schema.is_valid(args):
        return None
    errors = cast(Iterable[ValidationError], schema.iter_errors(args))
    error = cast(ValidationError | None, best_match(errors))
    if error is None:
        return ": invalid"
    where = "/".join(str(p) for p in error.absolute_path)
    return (f" at {where!r}" if where else "") + f": {str(error.message)[:200]}"


def _denied(findings: list[Finding] | None) -> bool:
    return bool(findings) and any(f.effect == "deny" for f in findings or ())


def rego_input(call: CallContext, grant: str | None, grants: Sequence[str] = ()) -> dict[str, Any]:
    """The ``input`` document a Rego module sees for a call: ``grants`` names every grant that
    covers it (sorted), ``grant`` the first of them. Where the gateway knows provenance, also
    ``run.input`` (the run's input), ``run.results`` (each result handed to the agent so far:
    ``seq``, ``tool``, ``source``, ``digest``; never the result itself) and ``provenance`` (per
    top-level argument, where its data came from: ``source``, ``seq``, ``tool``)."""
    subject, tool, counters = call.subject, call.tool, call.counters
    document = {
        "agent": {
            "name": subject.name,
            "labels": dict(subject.labels),
            "tier": subject.tier,
            "tools": list(subject.tools),
        },
        "tool": {"name": tool.name, "minTier": tool.min_tier, "builtin": tool.builtin},
        "args": json.loads(json.dumps(call.args, default=str)),
        "grant": grant,
        "grants": list(grants) if grants else ([grant] if grant is not None else []),
        "now": call.now.isoformat(),
        "counters": {
            "toolCalls": counters.tool_calls,
            "tokens": counters.tokens,
            "callsByGrant": dict(counters.calls_by_grant),
        },
    }
    index = call.provenance
    if index is not None:  # absent where provenance is not known: a rule that reads it is undefined
        document["run"] = {
            "input": json.loads(json.dumps(index.input, default=str)),
            "results": index.results(),
        }
        document["provenance"] = {
            str(key): [{"source": o.source, "seq": o.seq, "tool": o.tool} for o in index.origins_of(value)]
            for key, value in call.args.items()
        }
    return document


def compile_policy(
    policies: Sequence[Mapping[str, Any]], grants: Sequence[Mapping[str, Any]], *, strict: bool = False
) -> CompiledPolicy:
    """Compile Policy and ToolGrant manifests (camelCase dicts, as stored) into a policy.

    With ``strict``, manifests that do not compile raise ``InvalidManifest`` (one problem per
    fault); without, the result denies every call and names the faults (fail closed).
    """
    return CompiledPolicy(build(policies, grants, strict=strict))
