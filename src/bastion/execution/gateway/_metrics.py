"""Prometheus instruments of the gateway (label values are bounded: kinds and decisions only)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.calls = Counter(
            "bastion_gateway_calls",
            "Gateway calls by kind and decision.",
            ["kind", "decision"],
            registry=registry,
        )
        self.latency = Histogram(
            "bastion_gateway_call_duration_seconds",
            "Time from a sandbox request to its answer, journal included.",
            ["kind"],
            registry=registry,
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0),
        )
        self.replayed = Counter(
            "bastion_gateway_replayed_calls",
            "Calls answered from the journal on a resumed attempt.",
            ["kind"],
            registry=registry,
        )
