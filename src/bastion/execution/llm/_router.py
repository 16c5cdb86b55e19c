"""The router: a ModelPolicy's targets, tried in the strategy's order, with retries and breakers.

* **Order.** ``priority`` keeps the policy's order; ``cheapest`` sorts by the price table (unpriced
  targets last); ``fastest`` by the observed latency average (EWMA; unmeasured targets first, so
  they get measured). Ties keep the policy's order.
* **Retries.** A retryable failure (429, 5xx, timeout, broken connection, garbled answer) is tried
  again on the same target up to ``retries`` times, after an exponential backoff with jitter, or
  after the provider's ``Retry-After`` when it gave one (a wait longer than ``max_retry_after``
  moves on to the next target instead). Other failures move on at once.
* **Fallback** happens only before the first streamed byte: once an answer has begun, a failure
  ends the call (``ModelCallFailed``), it is never stitched from two providers.
* **Breakers.** Each target has one per caller scope (a tenant's namespace: the credentials a
  target is called with are resolved there), shared by that scope's runs: after
  ``breaker_threshold`` consecutive failed requests it opens and the target is skipped; after
  ``breaker_cooldown`` seconds one request is let through (half-open); its success closes the
  breaker, its failure opens it again. Only the target's faults count (a rate limit, an overload,
  a timeout, a garbled answer): a refused key (401/403) or a bad request is the caller's, so one
  tenant's wrong key never takes a target offline for another (DESIGN invariant 6). Latency
  averages are kept per scope too.

Time, sleep and jitter are injected, so tests drive the breaker and the backoff exactly.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from bastion.errors import ModelCallFailed

from ._provider import Call, Provider, ProviderFailure, Target
from ._types import ChatRequest, ChatResult, Usage, estimate_text_tokens, estimate_tokens

Strategy = Literal["priority", "cheapest", "fastest"]
DEFAULT_MAX_OUTPUT_TOKENS = 4096
"""The output cap when neither the request nor the ModelPolicy sets one."""


@dataclass(frozen=True, kw_only=True)
class Price:
    input_per_mtok: float
    output_per_mtok: float

    def cost(self, usage: Usage) -> float:
        return round(
            (usage.input_tokens * self.input_per_mtok + usage.output_tokens * self.output_per_mtok) / 1e6, 9
        )


@dataclass(frozen=True, kw_only=True)
class Route:
    """A ModelPolicy's spec as the router uses it."""

    targets: tuple[Target, ...]
    strategy: Strategy = "priority"
    retries: int = 2
    max_output_tokens: int | None = None
    prices: Mapping[str, Price] = field(default_factory=dict[str, Price])

    @staticmethod
    def from_spec(spec: Mapping[str, Any]) -> Route:
        """From a stored ModelPolicy spec (camelCase, already validated by the API)."""
        targets = tuple(
            Target(
                provider=str(t["provider"]),
                model=str(t["model"]),
                base_url=t.get("baseUrl"),
                secret=t.get("secret"),
                timeout_seconds=float(t.get("timeoutSeconds", 60.0)),
                script=tuple(cast(list[dict[str, Any]], t.get("script") or [])),
            )
            for t in cast(list[dict[str, Any]], spec["targets"])
        )
        prices = {
            str(model): Price(
                input_per_mtok=float(p["inputPerMtok"]), output_per_mtok=float(p["outputPerMtok"])
            )
            for model, p in cast(dict[str, dict[str, Any]], spec.get("prices") or {}).items()
        }
        return Route(
            targets=targets,
            strategy=cast(Strategy, spec.get("strategy", "priority")),
            retries=int(spec.get("retries", 2)),
            max_output_tokens=spec.get("maxOutputTokens"),
            prices=prices,
        )

    def max_tokens(self, request: ChatRequest) -> int:
        caps = [c for c in (request.max_tokens, self.max_output_tokens) if c is not None]
        return min(caps) if caps else DEFAULT_MAX_OUTPUT_TOKENS

    def cost(self, model: str, usage: Usage) -> float:
        price = self.prices.get(model)
        return price.cost(usage) if price is not None else 0.0

    def estimate(self, request: ChatRequest) -> tuple[int, float]:
        """The most a call may use: prompt estimate + output cap, at the dearest target's price."""
        usage = Usage(input_tokens=estimate_tokens(request), output_tokens=self.max_tokens(request))
        return usage.total, max((self.cost(t.model, usage) for t in self.targets), default=0.0)


class Breaker:
    """One target's circuit breaker (closed → open → half-open → closed | open)."""

    def __init__(self, threshold: int, cooldown: float, now: Callable[[], float]) -> None:
        self.threshold, self.cooldown, self.now = threshold, cooldown, now
        self.failures = 0
        self.opened_at: float | None = None
        self.probing = False
        self._lock = threading.Lock()

    @property
    def state(self) -> Literal["closed", "open", "half-open"]:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.probing or self.now() >= self.opened_at + self.cooldown else "open"

    def allow(self) -> bool:
        with self._lock:
            if self.opened_at is None:
                return True
            if self.probing or self.now() < self.opened_at + self.cooldown:
                return False
            self.probing = True  # the one probe of the half-open state
            return True

    def success(self) -> None:
        with self._lock:
            self.failures, self.opened_at, self.probing = 0, None, False

    def failure(self) -> None:
        with self._lock:
            self.failures += 1
            if self.probing or self.failures >= self.threshold:
                self.opened_at, self.probing = self.now(), False

    def release(self) -> None:
        """The probe was not made after all (no key, say): let another request probe."""
        with self._lock:
            self.probing = False


KeyFor = Callable[[Target], "str | None"]
"""The API key of a target, resolved by the gateway after its decision; raises ModelCallFailed."""


class Router:
    def __init__(
        self,
        providers: Mapping[str, Provider],
        *,
        now: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
        breaker_threshold: int = 5,
        breaker_cooldown: float = 30.0,
        backoff_base: float = 0.25,
        backoff_max: float = 8.0,
        max_retry_after: float = 30.0,
        ewma_alpha: float = 0.3,
    ) -> None:
        self.providers = dict(providers)
        self.now, self.sleep, self.jitter = now, sleep, jitter
        self.breaker_threshold, self.breaker_cooldown = breaker_threshold, breaker_cooldown
        self.backoff_base, self.backoff_max, self.max_retry_after = backoff_base, backoff_max, max_retry_after
        self.ewma_alpha = ewma_alpha
        self._breakers: dict[tuple[str, str], Breaker] = {}
        self._latency: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the providers' connection pools."""
        for provider in self.providers.values():
            close = getattr(provider, "close", None)
            if callable(close):
                close()

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def breaker(self, target: Target, *, scope: str) -> Breaker:
        """``target``'s breaker for callers in ``scope`` (see ``complete``)."""
        with self._lock:
            found = self._breakers.get((scope, target.key))
            if found is None:
                found = self._breakers[(scope, target.key)] = Breaker(
                    self.breaker_threshold, self.breaker_cooldown, self.now
                )
            return found

    def latency(self, target: Target, *, scope: str) -> float | None:
        """The target's observed latency average in seconds for callers in ``scope``, if measured."""
        return self._latency.get((scope, target.key))

    def order(self, route: Route, *, scope: str) -> list[Target]:
        targets = list(route.targets)
        if route.strategy == "cheapest":

            def price(t: Target) -> float:
                p = route.prices.get(t.model)
                return p.input_per_mtok + p.output_per_mtok if p is not None else float("inf")

            targets.sort(key=price)
        elif route.strategy == "fastest":
            targets.sort(key=lambda t: self._latency.get((scope, t.key), 0.0))
        return targets

    def backoff(self, attempt: int) -> float:
        """Seconds before retry ``attempt`` (0-based): exponential, capped, with jitter in [0.5, 1.5)."""
        return min(self.backoff_max, self.backoff_base * 2**attempt) * (0.5 + self.jitter())

    def complete(
        self,
        route: Route,
        request: ChatRequest,
        *,
        scope: str,
        stream: bool = False,
        key_for: KeyFor = lambda _target: None,
        idempotency_key: str | None = None,
        call_id: str = "",
        created: int = 0,
    ) -> ChatResult:
        """Answer ``request`` from the first target that can.

        Args:
            scope: who is calling, e.g. ``tenant/namespace``: breakers and latency averages are
                kept per scope, so no caller's failures or timings decide for another's.

        Raises:
            ModelCallFailed: every target failed (or was skipped), or a stream broke mid-answer;
                ``attempts`` lists each failure.
        """
        failures: list[dict[str, Any]] = []
        requests = 0
        max_tokens = route.max_tokens(request)
        for target in self.order(route, scope=scope):
            breaker = self.breaker(target, scope=scope)
            if not breaker.allow():
                failures.append({"target": target.label, "error": "circuit open"})
                continue
            provider = self.providers.get(target.provider)
            if provider is None:
                breaker.release()
                failures.append({"target": target.label, "error": f"no provider {target.provider!r}"})
                continue
            try:
                key = key_for(target)
            except ModelCallFailed as exc:
                breaker.release()
                failures.append({"target": target.label, "error": exc.reason})
                continue
            call = Call(
                target=target,
                request=request,
                max_tokens=max_tokens,
                stream=stream,
                api_key=key,
                idempotency_key=idempotency_key,
            )
            for retry in range(route.retries + 1):
                requests += 1
                started = self.now()
                try:
                    reply = provider.complete(call)
                except ProviderFailure as failure:
                    failures.append(
                        {"target": target.label, "error": failure.reason, "status": failure.status}
                    )
                    if failure.retryable:
                        breaker.failure()
                    else:  # a refused key or request is the caller's fault, not the target's
                        breaker.release()
                    if failure.mid_stream:
                        raise ModelCallFailed(
                            f"{target.label}'s answer broke off after it had begun: {failure.reason}",
                            failures,
                        ) from None
                    if not failure.retryable or retry == route.retries or breaker.state != "closed":
                        break
                    delay = self.backoff(retry)
                    if failure.retry_after is not None:
                        if failure.retry_after > self.max_retry_after:
                            break
                        delay = max(delay, failure.retry_after)
                    self.sleep(delay)
                    continue
                elapsed = self.now() - started
                self._observe(scope, target, elapsed)
                breaker.success()
                usage, estimated = reply.usage, False
                if usage is None:
                    usage = Usage(
                        input_tokens=estimate_tokens(request),
                        output_tokens=estimate_text_tokens(reply.message),
                    )
                    estimated = True
                return ChatResult(
                    id=call_id,
                    created=created,
                    message=reply.message,
                    finish_reason=reply.finish_reason,
                    usage=usage,
                    cost_usd=route.cost(target.model, usage),
                    provider=target.provider,
                    model=target.model,
                    latency_ms=round(elapsed * 1000, 3),
                    attempts=requests,
                    usage_estimated=estimated,
                )
        summary = "; ".join(f"{f['target']}: {f['error']}" for f in failures[-4:])
        raise ModelCallFailed(f"no target of the model policy answered ({summary})", failures)

    def _observe(self, scope: str, target: Target, seconds: float) -> None:
        with self._lock:
            key = (scope, target.key)
            old = self._latency.get(key)
            self._latency[key] = seconds if old is None else old + self.ewma_alpha * (seconds - old)
