"""Policy: pure decisions, ``(subject, action, resource, context) -> Decision``. No I/O, no clock.

``compile_policy(policies, grants)`` turns Policy and ToolGrant manifests into a
``CompiledPolicy`` whose ``decide(CallContext)`` judges a tool call and ``inspect_output``
judges a tool result or a model output. ``evaluate_trust`` and ``check_error_budget`` judge an
agent's record; ``rejudge`` replays a run's recorded calls under another policy.
"""

from ._call import NO_COUNTERS, CallContext, Counters, ToolInfo, WindowCount
from ._compile import policy_version
from ._decision import RANK, Decision, Effect, Finding, RateLimitRef, combine, deny
from ._egress import DEFAULT_PORTS, HttpTarget, allows, destination_allows, encode_host, parse_target
from ._engine import CompiledPolicy, compile_policy, rego_input
from ._grants import TIERS, Subject, tier_rank
from ._normalize import normalize
from ._probes import BENIGN, EVASION_PROBES, PROBE_PATTERNS
from ._provenance import DELIVERED, TRUSTED_RULE, Origin, ProvenanceCheck, ProvenanceIndex, significant
from ._trust import (
    Attempted,
    BudgetVerdict,
    ErrorBudget,
    Handoff,
    RunOutcome,
    TrustChange,
    TrustSettings,
    build_handoff,
    check_error_budget,
    evaluate_trust,
)
from ._whatif import Change, RecordedCall, rejudge

__all__ = [
    "BENIGN",
    "DEFAULT_PORTS",
    "DELIVERED",
    "EVASION_PROBES",
    "NO_COUNTERS",
    "PROBE_PATTERNS",
    "RANK",
    "TIERS",
    "TRUSTED_RULE",
    "Attempted",
    "BudgetVerdict",
    "CallContext",
    "Change",
    "CompiledPolicy",
    "Counters",
    "Decision",
    "Effect",
    "ErrorBudget",
    "Finding",
    "Handoff",
    "HttpTarget",
    "Origin",
    "ProvenanceCheck",
    "ProvenanceIndex",
    "RateLimitRef",
    "RecordedCall",
    "RunOutcome",
    "Subject",
    "ToolInfo",
    "TrustChange",
    "TrustSettings",
    "WindowCount",
    "allows",
    "build_handoff",
    "check_error_budget",
    "combine",
    "compile_policy",
    "deny",
    "destination_allows",
    "encode_host",
    "evaluate_trust",
    "normalize",
    "parse_target",
    "policy_version",
    "rego_input",
    "rejudge",
    "significant",
    "tier_rank",
]
