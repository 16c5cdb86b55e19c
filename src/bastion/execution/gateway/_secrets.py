"""Filling ``{secret:NAME}`` and ``{secret:NAME/KEY}`` placeholders, after the policy decision.

A Secret names where it may be sent (``spec.destinations``, written by an operator); the
placeholders are filled here, but the request is checked against those destinations where its
URL is final (``bastion.execution.tools``' one HTTP sender, or ``provider_key`` for a model
provider's endpoint), so a developer who re-points a Tool or a ModelPolicy gets a denial.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from bastion.errors import BastionError, ModelCallFailed, SecretRefused, ToolCallFailed
from bastion.execution.tools import BoundSecret
from bastion.policy import destination_allows, parse_target

from ._resources import ResourceReader
from ._scrub import Redactor

PLACEHOLDER = re.compile(r"\{secret:([a-z0-9][-a-z0-9.]*)(?:/([A-Za-z0-9_.-]+))?\}")


class SecretResolver:
    """Resolves a tool's secret placeholders for one run, remembering every value in the redactor."""

    def __init__(self, resources: ResourceReader, tenant_id: str, namespace: str, redactor: Redactor) -> None:
        self._resources = resources
        self._tenant_id = tenant_id
        self._namespace = namespace
        self._redactor = redactor
        self._cache: dict[str, dict[str, str]] = {}
        self._destinations: dict[str, tuple[str, ...]] = {}
        """Per Secret name, the destinations its manifest declares."""
        self._by_name: dict[str, dict[str, str]] = {}
        """Per Secret name, its values once some user was allowed them (for labelling injections)."""

    def values(self, tool: str, declared: list[str], name: str) -> dict[str, str]:
        """A secret the tool declared and the secret allows it to use; its values go into the redactor."""
        if name not in declared:
            raise ToolCallFailed(tool, f"tool {tool!r} does not declare secret {name!r} in spec.secrets")
        # Per (user, secret), never per secret alone: the Secret's usableBy is checked for each tool.
        cache_key = f"tool:{tool}:{name}"
        if cache_key not in self._cache:
            manifest = self._resources.resource(self._tenant_id, "Secret", self._namespace, name)
            if manifest is None:
                raise ToolCallFailed(tool, f"secret {name!r} does not exist in namespace {self._namespace!r}")
            allowed: list[str] = manifest["spec"].get("usableBy", {}).get("tools", [])
            if tool not in allowed:
                raise ToolCallFailed(
                    tool, f"secret {name!r} may not be used by tool {tool!r} (spec.usableBy.tools)"
                )
            try:
                values = self._resources.secret_values(self._tenant_id, self._namespace, name)
            except BastionError:
                raise ToolCallFailed(tool, f"secret {name!r} could not be opened") from None
            for key, value in values.items():
                try:
                    self._redactor.add(f"{name}/{key}" if len(values) > 1 else name, value)
                except ValueError:
                    # A value too short to redact could never be kept out of outputs: refuse it.
                    raise ToolCallFailed(
                        tool, f"secret {name!r} is too short to be redacted safely; use a longer value"
                    ) from None
            self._cache[cache_key] = values
            self._by_name[name] = values
            self._destinations[name] = _destinations(manifest)
        return self._cache[cache_key]

    def fill(self, tool: str, declared: list[str], template: str, used: set[str] | None = None) -> str:
        def one(match: re.Match[str]) -> str:
            name, key = match.group(1), match.group(2)
            values = self.values(tool, declared, name)
            if used is not None:
                used.add(name)
            if key is None:
                if len(values) != 1:
                    raise ToolCallFailed(
                        tool, f"secret {name!r} has several keys; write {{secret:{name}/KEY}}"
                    )
                return next(iter(values.values()))
            if key not in values:
                raise ToolCallFailed(tool, f"secret {name!r} has no key {key!r}")
            return values[key]

        return PLACEHOLDER.sub(one, template)

    def headers(
        self, tool: str, declared: list[str], templates: Mapping[str, str]
    ) -> tuple[dict[str, str], tuple[BoundSecret, ...]]:
        """The headers with their placeholders filled, and the Secrets filled into them with the
        destinations each allows (the tool refuses to send them anywhere else)."""
        used: set[str] = set()
        filled = {name: self.fill(tool, declared, value, used) for name, value in templates.items()}
        return filled, tuple(
            BoundSecret(name=name, destinations=self._destinations[name]) for name in sorted(used)
        )

    def injected(self, names: list[str]) -> dict[str, str]:
        """The values of these Secrets (resolved already), labelled as the redactor labels them."""
        out: dict[str, str] = {}
        for name in names:
            values = self._by_name.get(name, {})
            for key, value in values.items():
                out[f"{name}/{key}" if len(values) > 1 else name] = value
        return out

    def provider_key(self, provider: str, name: str, url: str | None = None) -> str:
        """The API key a model provider gets from Secret ``name`` (its one value, or its ``apiKey``),
        if the Secret lets that provider use it and names ``url`` (the provider's endpoint) among
        its destinations; the value goes into the redactor. ``url=None`` only preloads.

        Raises:
            ModelCallFailed: no such Secret, not usable by the provider, or ambiguous.
            SecretRefused: ``url`` is not among the Secret's destinations.
        """
        cache_key = f"provider:{provider}:{name}"
        if cache_key not in self._cache:
            manifest = self._resources.resource(self._tenant_id, "Secret", self._namespace, name)
            if manifest is None:
                raise ModelCallFailed(f"secret {name!r} does not exist in namespace {self._namespace!r}")
            allowed: list[str] = manifest["spec"].get("usableBy", {}).get("providers", [])
            if provider not in allowed:
                raise ModelCallFailed(
                    f"secret {name!r} may not be used by provider {provider!r} (spec.usableBy.providers)"
                )
            try:
                values = self._resources.secret_values(self._tenant_id, self._namespace, name)
            except BastionError:
                raise ModelCallFailed(f"secret {name!r} could not be opened") from None
            for key, value in values.items():
                try:
                    self._redactor.add(f"{name}/{key}" if len(values) > 1 else name, value)
                except ValueError:
                    raise ModelCallFailed(
                        f"secret {name!r} is too short to be redacted safely; use a longer value"
                    ) from None
            self._cache[cache_key] = values
            self._by_name[name] = values
            self._destinations[name] = _destinations(manifest)
        values = self._cache[cache_key]
        if url is not None:
            target = parse_target(url)
            where = self._destinations[name]
            if isinstance(target, str) or not any(destination_allows(d, target) for d in where):
                raise SecretRefused(provider, name, url.partition("?")[0], bool(where))
        if len(values) == 1:
            return next(iter(values.values()))
        if "apiKey" in values:
            return values["apiKey"]
        raise ModelCallFailed(f"secret {name!r} has several keys; name the provider's key 'apiKey'")

    def preload(self, tool_manifests: list[dict[str, Any]]) -> None:
        """Teach the redactor every secret these tools may use, before the agent runs at all."""
        for manifest in tool_manifests:
            tool = manifest["metadata"]["name"]
            declared: list[str] = manifest["spec"].get("secrets", [])
            for name in declared:
                try:
                    self.values(tool, declared, name)
                except ToolCallFailed:
                    continue  # the call that needs it will fail with the reason


def _destinations(manifest: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(d) for d in manifest["spec"].get("destinations") or ())
