"""From resource manifests to a ``CompiledPolicy``: everything parsed, checked and compiled once.

``compile_policy`` takes Policy and ToolGrant manifests as the store holds them (camelCase
dicts), validates them with the API's models, and compiles every pattern, JSON Schema and Rego
module once. The result's ``version`` is the sha256 of the canonical inputs (kind, namespace,
name and spec of each, sorted), so the same resources always give the same version, whatever
order they came in and whatever their metadata says.

A manifest that does not compile makes a policy that denies everything, saying why (fail
closed); ``strict=True`` raises ``InvalidManifest`` instead, for the CLI and API to report.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast

from jsonschema import Draft202012Validator
from pydantic import ValidationError

from bastion.api import LinearRegex, Policy, ToolGrant, glob_source, linear, parse_duration, schema_validator
from bastion.errors import InvalidManifest, Problem

from ._confusables import table as confusables_table
from ._decision import RateLimitRef
from ._normalize import Decoding, warm
from ._provenance import ProvenanceCheck
from ._rego import RegoModule
from ._scan import BlockedRule, Scanner, pattern_source

Where = Literal["arguments", "tool_result", "model_output"]
Action = Literal["deny", "redact", "require_approval"]
PiiAction = Literal["allow", "redact", "deny"]


@dataclass(frozen=True, kw_only=True)
class GrantRule:
    """One ToolGrant, compiled."""

    name: str
    effect: Literal["allow", "deny"]
    agents: frozenset[str]
    labels: tuple[tuple[str, str], ...]
    tiers: frozenset[str]
    tools: frozenset[str]
    max_calls: int | None
    min_tier: str
    expires_at: datetime | None
    expires_ts: float | None
    egress: tuple[str, ...]
    rate: tuple[RateLimitRef, int] | None
    require_approval: bool
    schemas: Mapping[str, Draft202012Validator]
    """Per tool, the ``arguments`` schema: a call that fails it is not covered by this grant."""
    arg_patterns: Mapping[str, tuple[tuple[str, LinearRegex], ...]]
    requirements: Mapping[str, Draft202012Validator]
    """Per tool, the ``requireArguments`` schema: a call that fails it is denied."""
    provenance: Mapping[str, tuple[ProvenanceCheck, ...]] = field(
        default_factory=dict[str, tuple[ProvenanceCheck, ...]]
    )
    """Per tool, the ``requireProvenance`` requirements (deny unless, like ``requirements``)."""

    def names(self, name: str, labels: Mapping[str, str], tier: str) -> bool:
        by_labels = bool(self.labels) and all(labels.get(k) == v for k, v in self.labels)
        return name in self.agents or by_labels or tier in self.tiers


@dataclass(frozen=True, kw_only=True)
class PatternRule:
    """One Policy rule's blocked patterns, rate limit and egress allowlist, compiled."""

    rule_id: str
    tools: tuple[LinearRegex, ...]
    """Tool-name globs; empty means every tool."""
    action: Action
    applies_to: frozenset[str]
    patterns: tuple[tuple[BlockedRule, frozenset[Decoding]], ...]
    egress: tuple[str, ...]
    rate: tuple[RateLimitRef, int] | None
    provenance: ProvenanceCheck | None = None

    def covers(self, tool: str | None) -> bool:
        if not self.tools:
            return True
        return tool is not None and any(g.fullmatch(tool) for g in self.tools)


@dataclass(frozen=True, kw_only=True)
class PiiRule:
    rule_id: str
    action: PiiAction
    entities: frozenset[str]
    min_score: float


@dataclass(kw_only=True)
class Compiled:
    """Everything ``compile_policy`` produced; the engine in ``_engine`` decides with it."""

    version: str
    grants: tuple[GrantRule, ...] = ()
    rules: tuple[PatternRule, ...] = ()
    pii: tuple[PiiRule, ...] = ()
    rego: tuple[tuple[str, RegoModule], ...] = ()
    limits: tuple[tuple[str, Literal["calls", "tokens"], int], ...] = ()
    trust: Mapping[str, Any] = field(default_factory=dict[str, Any])
    errors: tuple[str, ...] = ()
    scanners: dict[tuple[Action, frozenset[Decoding], frozenset[BlockedRule]], Scanner] = field(
        default_factory=dict[tuple[Action, frozenset[Decoding], frozenset[BlockedRule]], Scanner]
    )

    def scanner(self, action: Action, decode: frozenset[Decoding], rules: frozenset[BlockedRule]) -> Scanner:
        """One shared scanner per group, so its clean-string memory serves every plan."""
        key = (action, decode, rules)
        found = self.scanners.get(key)
        if found is None:
            found = self.scanners[key] = Scanner(rules, decode)
        return found


def _meta(manifest: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = manifest.get("metadata")
    return cast(Mapping[str, Any], meta) if isinstance(meta, Mapping) else {}


def policy_version(policies: Sequence[Mapping[str, Any]], grants: Sequence[Mapping[str, Any]]) -> str:
    """``sha256:<hex>`` of the canonical inputs: kind, namespace, name and spec of each."""
    items = sorted(
        json.dumps(
            [kind, _meta(m).get("namespace", ""), _meta(m).get("name", ""), m.get("spec")],
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            default=str,
        )
        for kind, ms in (("Policy", policies), ("ToolGrant", grants))
        for m in ms
    )
    return "sha256:" + hashlib.sha256("\n".join(items).encode()).hexdigest()


def build(
    policies: Sequence[Mapping[str, Any]], grants: Sequence[Mapping[str, Any]], *, strict: bool
) -> Compiled:
    version = policy_version(policies, grants)
    problems: list[Problem] = []
    out = Compiled(version=version)
    grant_rules: list[GrantRule] = []
    for i, manifest in enumerate(grants):
        try:
            grant_rules.append(_grant(ToolGrant.model_validate(manifest)))
        except (ValidationError, ValueError) as exc:
            problems.append(_problem("ToolGrant", manifest, i, exc))
    rules: list[PatternRule] = []
    pii: list[PiiRule] = []
    rego: list[tuple[str, RegoModule]] = []
    limits: list[tuple[str, Literal["calls", "tokens"], int]] = []
    trust: dict[str, Any] = {}
    for i, manifest in enumerate(policies):
        try:
            policy = Policy.model_validate(manifest)
            name = policy.metadata.name
            rules.extend(_rule(name, r) for r in policy.spec.rules)
            settings = policy.spec.pii
            if isinstance(settings, str):
                if settings != "allow":
                    pii.append(
                        PiiRule(
                            rule_id=f"policy/{name}/pii",
                            action=settings,
                            entities=frozenset(_ALL_PII),
                            min_score=0.4,
                        )
                    )
            elif settings.action != "allow" and settings.entities:
                pii.append(
                    PiiRule(
                        rule_id=f"policy/{name}/pii",
                        action=settings.action,
                        entities=frozenset(settings.entities),
                        min_score=settings.min_score,
                    )
                )
            lim = policy.spec.limits
            if lim.tool_calls_per_run is not None:
                limits.append((f"policy/{name}/limits.toolCallsPerRun", "calls", lim.tool_calls_per_run))
            if lim.tokens_per_run is not None:
                limits.append((f"policy/{name}/limits.tokensPerRun", "tokens", lim.tokens_per_run))
            if "trust" in (manifest.get("spec") or {}):
                trust[name] = policy.spec.trust.model_dump(by_alias=True)
            if policy.spec.rego is not None:
                module = RegoModule(name, policy.spec.rego)
                if module.error is not None:
                    problems.append(
                        Problem(
                            message=f"Policy {name!r}: the Rego module does not compile: {module.error}",
                            field="spec.rego",
                            hint="write 'package bastion' and a boolean rule 'allow'",
                            document=i,
                        )
                    )
                rego.append((f"policy/{name}/rego", module))
        except (ValidationError, ValueError) as exc:
            problems.append(_problem("Policy", manifest, i, exc))
    if problems and strict:
        raise InvalidManifest(
            f"the policy does not compile ({len(problems)} problem{'s' * (len(problems) > 1)})",
            problems=problems,
        )
    out.grants = tuple(sorted(grant_rules, key=lambda g: g.name))
    out.rules = tuple(sorted(rules, key=lambda r: r.rule_id))
    out.pii = tuple(sorted(pii, key=lambda p: p.rule_id))
    out.rego = tuple(sorted(rego, key=lambda r: r[0]))
    out.limits = tuple(sorted(limits))
    out.trust = trust
    out.errors = tuple(p.located() for p in problems)
    if any(not "".join(p.pattern for p, _ in r.patterns).isascii() for r in out.rules):
        warm()
    if any("confusables" in decode for r in out.rules for _, decode in r.patterns):
        confusables_table()
    return out


_ALL_PII = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS", "API_KEY")


def _problem(kind: str, manifest: Mapping[str, Any], index: int, exc: Exception) -> Problem:
    name = _meta(manifest).get("name", f"#{index}")
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return Problem(message=f"{kind} {name!r}: {first['msg']}", field=where or None, document=index)
    return Problem(message=f"{kind} {name!r}: {exc}", document=index)


def _grant(grant: ToolGrant) -> GrantRule:
    spec = grant.spec
    name = grant.metadata.name
    expires = spec.expires_at
    if expires is not None and expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    rate = None
    if spec.rate_limit is not None:
        seconds = parse_duration(spec.rate_limit.per)
        rate = (RateLimitRef(f"grant/{name}", spec.rate_limit.scope, seconds), spec.rate_limit.calls)
    return GrantRule(
        name=name,
        effect=spec.effect,
        agents=frozenset(spec.subjects.agents),
        labels=tuple(sorted(spec.subjects.labels.items())),
        tiers=frozenset(spec.subjects.tiers),
        tools=frozenset(spec.tools),
        max_calls=spec.max_calls,
        min_tier=spec.min_tier,
        expires_at=expires,
        expires_ts=expires.timestamp() if expires is not None else None,
        egress=tuple(spec.egress),
        rate=rate,
        require_approval=spec.require_approval,
        schemas={tool: schema_validator(schema) for tool, schema in spec.arguments.items()},
        arg_patterns={
            tool: tuple((arg, linear(rx)) for arg, rx in sorted(patterns.items()))
            for tool, patterns in spec.argument_patterns.items()
        },
        requirements={tool: schema_validator(schema) for tool, schema in spec.require_arguments.items()},
        provenance={
            tool: tuple(
                ProvenanceCheck.build(
                    rule_id=f"grant/{name}/requireProvenance",
                    owner=f"grant {name!r}",
                    paths=req.paths,
                    sources=req.from_,
                    allow=req.allow,
                    action=req.action,
                    expires_ts=expires.timestamp() if expires is not None else None,
                )
                for req in reqs
            )
            for tool, reqs in spec.require_provenance.items()
            if reqs
        },
    )


def _rule(policy: str, rule: Any) -> PatternRule:
    rule_id = f"policy/{policy}/{rule.id}"
    patterns: list[tuple[BlockedRule, frozenset[Decoding]]] = []
    for bp in rule.blocked_patterns:
        try:
            pattern_source(bp.match, bp.pattern, confusables=bp.confusables)
        except ValueError as exc:  # PatternError, RegexError
            raise ValueError(f"rule {rule.id!r}: {exc}") from None
        decode: frozenset[Decoding] = frozenset(bp.decode)
        if bp.confusables:
            decode |= frozenset[Decoding](("confusables",))
        patterns.append((BlockedRule(rule_id, bp.match, bp.pattern), decode))
    rate = None
    if rule.rate_limit is not None:
        seconds = parse_duration(rule.rate_limit.per)
        rate = (RateLimitRef(rule_id, rule.rate_limit.scope, seconds), rule.rate_limit.calls)
    return PatternRule(
        rule_id=rule_id,
        tools=tuple(LinearRegex(glob_source(t)) for t in rule.tools),
        action=rule.action,
        applies_to=frozenset(rule.applies_to),
        patterns=tuple(patterns),
        egress=tuple(rule.egress_allow),
        rate=rate,
        provenance=None
        if rule.provenance is None
        else ProvenanceCheck.build(
            rule_id=rule_id,
            owner=f"rule {rule_id!r}",
            paths=rule.provenance.paths,
            sources=rule.provenance.from_,
            allow=rule.provenance.allow,
            action=rule.action,
            effects=rule.provenance.effects,
        ),
    )
