"""Who a run is judged as: the Agent as it is now, never the snapshot the run was created with.

A run keeps the Agent manifest it was created with: what to run (source, entrypoint, limits,
tools). The two fields operators' grants trust, the tier and the labels, are not taken from it:
an old run's snapshot is something a developer can start again (a fork, and every retry, resume
and approval's resumption is a new attempt of a stored run), and an operator who lowers an
agent's tier or takes a ``bastion.io/`` label away means it for every run from then on. So each
attempt reads the Agent as stored now; the trust record (promotions, demotions, revocations)
then starts from that declared tier as it does for a new run. An Agent that no longer exists is
judged at the default tier with no labels: nothing an operator granted it survives its deletion.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bastion.execution.gateway import ResourceReader

DEFAULT_TIER = "T0"


@dataclass(frozen=True, kw_only=True)
class Standing:
    """The tier an Agent declares and its labels, as stored now."""

    tier: str = DEFAULT_TIER
    labels: Mapping[str, str] = field(default_factory=dict[str, str])


def current_standing(resources: ResourceReader, tenant_id: str, namespace: str, agent: str) -> Standing:
    """The standing of Agent ``agent`` of the tenant's namespace now (the default if it is gone)."""
    manifest = resources.resource(tenant_id, "Agent", namespace, agent)
    if manifest is None:
        return Standing()
    spec: Mapping[str, Any] = manifest.get("spec") or {}
    labels: Mapping[str, Any] = manifest.get("metadata", {}).get("labels") or {}
    return Standing(
        tier=str(spec.get("tier") or DEFAULT_TIER), labels={str(k): str(v) for k, v in labels.items()}
    )
