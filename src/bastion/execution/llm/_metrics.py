"""Prometheus instruments of model calls. Tenant, agent and model labels are capped: past
``MAX_LABEL_VALUES`` distinct values of a label, new ones are counted under ``_other``."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter

MAX_LABEL_VALUES = 200
OTHER = "_other"


class _Cap:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        with self._lock:
            if len(self.seen) >= self.limit:
                return OTHER
            self.seen.add(value)
            return value


class LlmMetrics:
    def __init__(
        self, registry: CollectorRegistry | None = None, *, max_label_values: int = MAX_LABEL_VALUES
    ) -> None:
        self.tokens = Counter(
            "bastion_llm_tokens",
            "Model tokens used, by tenant, agent, model and direction (input or output).",
            ["tenant", "agent", "model", "direction"],
            registry=registry,
        )
        self.cost = Counter(
            "bastion_llm_cost_usd",
            "Model cost in US dollars, by tenant, agent and model (from the ModelPolicy's price table).",
            ["tenant", "agent", "model"],
            registry=registry,
        )
        self.refusals = Counter(
            "bastion_llm_budget_refusals",
            "Model calls refused before they were made because a budget could not fit them, by budget.",
            ["budget"],
            registry=registry,
        )
        self.failures = Counter(
            "bastion_llm_failed_calls",
            "Model calls that failed on every target.",
            ["tenant", "agent"],
            registry=registry,
        )
        self._tenant, self._agent, self._model = (_Cap(max_label_values) for _ in range(3))

    def used(
        self, *, tenant: str, agent: str, model: str, input_tokens: int, output_tokens: int, cost_usd: float
    ) -> None:
        labels = (self._tenant(tenant), self._agent(agent), self._model(model))
        self.tokens.labels(*labels, "input").inc(input_tokens)
        self.tokens.labels(*labels, "output").inc(output_tokens)
        if cost_usd:
            self.cost.labels(*labels).inc(cost_usd)

    def failed(self, *, tenant: str, agent: str) -> None:
        self.failures.labels(self._tenant(tenant), self._agent(agent)).inc()
