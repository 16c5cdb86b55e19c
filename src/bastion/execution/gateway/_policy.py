"""What the gateway keeps for policy: compiled policies by their inputs, and rate-limit windows.

Compiling a namespace's Policies and ToolGrants (patterns, JSON Schemas, Rego) costs milliseconds,
a decision microseconds; so a compiled policy is kept per (tenant, namespace, digest of the inputs'
kinds, names and specs) and shared by every session of that namespace that sees the same inputs.
Never by names or resourceVersions alone: every new resource starts at resourceVersion 1, so a
twin namespace or tenant with same-named resources would be judged by the other's rules
(DESIGN invariant 6). Rate limits count allowed calls per (tenant, namespace, agent or the whole
namespace, limit) in sliding windows held by this process (DESIGN §5: in-process by default).
``parameters_fault`` holds a call's arguments to its Tool's JSON Schema (``spec.parameters``),
whatever the runtime that made the call.
"""

from __future__ import annotations

import functools
import json
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match  # pyright: ignore[reportUnknownVariableType]

from bastion.api import schema_validator
from bastion.policy import CompiledPolicy, RateLimitRef, compile_policy, policy_version

CACHE_SIZE = 64


class PolicyCache:
    def __init__(self, size: int = CACHE_SIZE) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._compiled: OrderedDict[tuple[Any, ...], CompiledPolicy] = OrderedDict()

    def get(
        self,
        policies: Sequence[dict[str, Any]],
        grants: Sequence[dict[str, Any]],
        *,
        tenant: str,
        namespace: str,
    ) -> CompiledPolicy:
        """The compiled policy of ``tenant``'s ``namespace`` for exactly these manifests."""
        key = (tenant, namespace, policy_version(policies, grants))
        with self._lock:
            found = self._compiled.get(key)
            if found is not None:
                self._compiled.move_to_end(key)
                return found
        # Outside the lock: another session may compile the same set meanwhile; both results are equal.
        compiled = compile_policy(policies, grants)
        with self._lock:
            self._compiled[key] = compiled
            while len(self._compiled) > self._size:
                self._compiled.popitem(last=False)
        return compiled


class RateWindows:
    """Timestamps of allowed calls per (tenant, namespace, agent or all agents, limit).

    A limit is owned by a grant or rule of one namespace (``ref.owner`` is its name there), so the
    namespace is part of the key: a same-named grant in another namespace or tenant is another limit.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str, str, str], deque[float]] = {}

    @staticmethod
    def _key(ref: RateLimitRef, tenant: str, namespace: str, agent: str) -> tuple[str, str, str, str]:
        return (tenant, namespace, agent if ref.scope == "agent" else "", ref.owner)

    def count(self, ref: RateLimitRef, *, tenant: str, namespace: str, agent: str, now: float) -> int:
        with self._lock:
            seen = self._seen.get(self._key(ref, tenant, namespace, agent))
            if not seen:
                return 0
            while seen and now - seen[0] >= ref.seconds:
                seen.popleft()
            return len(seen)

    def record(
        self, refs: Sequence[RateLimitRef], *, tenant: str, namespace: str, agent: str, now: float
    ) -> None:
        with self._lock:
            for ref in refs:
                self._seen.setdefault(self._key(ref, tenant, namespace, agent), deque()).append(now)


@functools.lru_cache(maxsize=256)
def _validator(schema_json: str) -> Draft202012Validator | str:
    """The validator of a Tool's parameters (patterns matched by RE2), or why there is none."""
    try:
        return schema_validator(json.loads(schema_json))
    except ValueError as exc:
        return str(exc)


def parameters_fault(tool: str, manifest: Mapping[str, Any] | None, args: Mapping[str, Any]) -> str | None:
    """Why ``args`` do not fit the JSON Schema the Tool ``manifest`` declares (naming the field),
    or None when they do. No manifest is no fault here (policy denies a missing tool)."""
    if manifest is None:
        return None
    spec = cast(Mapping[str, Any], manifest.get("spec") or {})
    schema = spec.get("parameters")
    if schema is None:
        return None
    validator = _validator(json.dumps(schema, sort_keys=True, separators=(",", ":")))
    if isinstance(validator, str):
        return f"tool {tool!r} declares parameters that cannot be enforced ({validator}); refused"
    try:
        if validator.is_valid(args):  # pyright: ignore[reportUnknownMemberType]
            return None
        errors = cast(Iterable[ValidationError], validator.iter_errors(args))  # pyright: ignore[reportUnknownMemberType]
        error = cast(ValidationError, best_match(errors))
    except Exception as exc:  # an unresolvable $ref, say: refused (fail closed), and journaled as such
        return f"tool {tool!r} declares parameters that cannot be evaluated ({type(exc).__name__}: {str(exc)[:200]}); refused"
    where = "/".join(str(p) for p in error.absolute_path) or "(the arguments)"
    return (
        f"the arguments of {tool!r} do not match the Tool's parameters at {where!r}: "
        f"{str(error.message)[:200]}"
    )


__all__ = ["PolicyCache", "RateWindows", "parameters_fault"]
