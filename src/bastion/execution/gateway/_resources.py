"""What the gateway reads of the control plane's resources, as a Protocol (control implements it)."""

from __future__ import annotations

from typing import Any, Protocol


class ResourceReader(Protocol):
    def resource(self, tenant_id: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """One resource's manifest (Secret values masked), or None."""
        ...

    def resources(self, tenant_id: str, kind: str, namespace: str) -> list[dict[str, Any]]:
        """Every resource of a kind in a namespace."""
        ...

    def secret_values(self, tenant_id: str, namespace: str, name: str) -> dict[str, str]:
        """A Secret's plaintext values. Only the gateway calls this, after a policy decision.

        Raises:
            NotFound: no such Secret.
        """
        ...
