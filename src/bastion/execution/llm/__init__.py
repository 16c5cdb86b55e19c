"""The LLM router (DESIGN §3): providers, routing, retries, breakers, budgets, wire formats.

It knows nothing of journals or policy: the gateway's ``llm.chat`` call kind wraps it once.
"""

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from ._anthropic import (
    AnthropicProvider,
    anthropic_answer,
    anthropic_body,
    request_from_anthropic,
)
from ._anthropic import (
    endpoint as _anthropic_endpoint,
)
from ._budgets import Budget, BudgetLedger, Reservation, Statements, budgets_for
from ._formats import FORMATS, Format, answer, parse_params
from ._metrics import LlmMetrics
from ._openai import (
    OpenAIProvider,
    openai_answer,
    openai_body,
    request_from_openai,
)
from ._openai import (
    endpoint as _openai_endpoint,
)
from ._provider import Call, Provider, ProviderFailure, Target, wire_names
from ._router import DEFAULT_MAX_OUTPUT_TOKENS, Breaker, Price, Route, Router
from ._scripted import ScriptedProvider, load_script
from ._tables import llm_reservations, llm_usage, metadata
from ._types import BadChat, ChatRequest, ChatResult, Message, Reply, ToolCall, ToolDef, Usage


def endpoint(target: Target) -> str | None:
    """The URL a built-in provider sends ``target``'s requests (and its API key) to; None for a
    provider that sends nothing over the network (``scripted``) or one Bastion does not ship."""
    if target.provider == "openai":
        return _openai_endpoint(target)
    if target.provider == "anthropic":
        return _anthropic_endpoint(target)
    return None


def default_providers() -> dict[str, Provider]:
    """One of each provider Bastion ships, by name."""
    providers: list[Provider] = [OpenAIProvider(), AnthropicProvider(), ScriptedProvider()]
    return {p.name: p for p in providers}


@dataclass(frozen=True, kw_only=True)
class Models:
    """What the gateway needs for model calls: the router, the budget ledger and the metrics."""

    router: Router
    ledger: BudgetLedger
    metrics: LlmMetrics

    @staticmethod
    def build(
        ledger: BudgetLedger, registry: CollectorRegistry | None = None, router: Router | None = None
    ) -> "Models":
        metrics = LlmMetrics(registry)
        if ledger.refusals is None:
            ledger.refusals = metrics.refusals
        return Models(router=router or Router(default_providers()), ledger=ledger, metrics=metrics)


__all__ = [
    "DEFAULT_MAX_OUTPUT_TOKENS",
    "FORMATS",
    "AnthropicProvider",
    "BadChat",
    "Breaker",
    "Budget",
    "BudgetLedger",
    "Call",
    "ChatRequest",
    "ChatResult",
    "Format",
    "LlmMetrics",
    "Message",
    "Models",
    "OpenAIProvider",
    "Price",
    "Provider",
    "ProviderFailure",
    "Reply",
    "Reservation",
    "Route",
    "Router",
    "ScriptedProvider",
    "Statements",
    "Target",
    "ToolCall",
    "ToolDef",
    "Usage",
    "answer",
    "anthropic_answer",
    "anthropic_body",
    "budgets_for",
    "default_providers",
    "endpoint",
    "llm_reservations",
    "llm_usage",
    "load_script",
    "metadata",
    "openai_answer",
    "openai_body",
    "parse_params",
    "request_from_anthropic",
    "request_from_openai",
    "wire_names",
]
