"""Filling ``{secret:NAME}`` and ``{secret:NAME/KEY}`` placeholders, after the policy decision."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from bastion.errors import BastionError, ModelCallFailed, ToolCallFailed

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
        return self._cache[cache_key]

    def fill(self, tool: str, declared: list[str], template: str) -> str:
        def one(match: re.Match[str]) -> str:
            name, key = match.group(1), match.group(2)
            values = self.values(tool, declared, name)
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

    def headers(self, tool: str, declared: list[str], templates: Mapping[str, str]) -> dict[str, str]:
        return {name: self.fill(tool, declared, value) for name, value in templates.items()}

    def provider_key(self, provider: str, name: str) -> str:
        """The API key a model provider gets from Secret ``name`` (its one value, or its ``apiKey``),
        if the Secret lets that provider use it; the value goes into the redactor.

        Raises:
            ModelCallFailed: no such Secret, not usable by the provider, or ambiguous.
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
        values = self._cache[cache_key]
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
