"""The LLM router against real local HTTP servers speaking the providers' wire formats."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest

from bastion.errors import ModelCallFailed
from bastion.execution.llm import (
    ChatRequest,
    Message,
    Price,
    Route,
    Router,
    Target,
    ToolDef,
    default_providers,
)
from bastion.testing import FakeProvider, Hold, disconnect, fault, malformed, reply, tool_calls

SCOPE = "tenant/namespace"
"""The caller scope of these tests' calls (breakers and latencies are kept per scope)."""
HELLO = ChatRequest(
    messages=(Message(role="system", content="Be brief."), Message(role="user", content="hi"))
)


class FakeTime:
    """The router's clock and sleep: sleeping advances the clock and is recorded."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds


@pytest.fixture
def time_() -> FakeTime:
    return FakeTime()


_routers: list[Router] = []


@pytest.fixture(autouse=True)
def _close_routers() -> Iterator[None]:
    yield
    while _routers:
        _routers.pop().close()


def router(time_: FakeTime | None = None, **options: float) -> Router:
    clock = {"now": time_.now, "sleep": time_.sleep} if time_ is not None else {}
    made = Router(default_providers(), jitter=lambda: 0.5, **clock, **options)  # pyright: ignore[reportArgumentType]
    _routers.append(made)
    return made


@pytest.fixture
def fakes() -> Iterator[list[FakeProvider]]:
    started = [FakeProvider().start() for _ in range(3)]
    yield started
    for fake in started:
        fake.close()


def target(fake: FakeProvider, provider: str = "openai", model: str = "m", **extra: float) -> Target:
    url = fake.openai_url if provider == "openai" else fake.anthropic_url
    return Target(provider=provider, model=model, base_url=url, **extra)  # pyright: ignore[reportArgumentType]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("stream", [False, True])
def test_text_and_tool_calls_round_trip_both_formats(provider: str, stream: bool, time_: FakeTime) -> None:
    request = ChatRequest(
        messages=(Message(role="user", content="look it up"),),
        tools=(ToolDef(name="kb.search", description="Search.", parameters={"type": "object"}),),
    )
    step = tool_calls(("kb_search", {"query": "refunds"}), ("kb.search", {"query": "b"}), text="Looking.")
    with FakeProvider(step, reply("Answer.")) as fake:
        route = Route(
            targets=(target(fake, provider),), prices={"m": Price(input_per_mtok=1, output_per_mtok=2)}
        )
        first = router(time_).complete(route, request, stream=stream, scope=SCOPE)
        second = router(time_).complete(route, request, stream=stream, scope=SCOPE)
        sent = fake.requests[0].body
    assert first.message.content == "Looking."
    # Wire names are mapped back to Bastion's, whichever the model used.
    assert [(c.name, c.arguments) for c in first.message.tool_calls] == [
        ("kb.search", {"query": "refunds"}),
        ("kb.search", {"query": "b"}),
    ]
    assert first.finish_reason == "tool_calls"
    assert second.message.content == "Answer." and second.finish_reason == "stop"
    assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0
    assert first.cost_usd == pytest.approx((first.usage.input_tokens + 2 * first.usage.output_tokens) / 1e6)
    assert (first.provider, first.model) == (provider, "m")
    tools = sent["tools"]
    names = [t["function"]["name"] for t in tools] if provider == "openai" else [t["name"] for t in tools]
    assert names == ["kb_search"]
    assert bool(sent.get("stream")) is stream


def test_fallback_goes_down_the_chain_in_order(fakes: list[FakeProvider], time_: FakeTime) -> None:
    a, b, c = fakes
    a.push(fault(400))  # not retryable: next target at once
    b.push(fault(503), fault(503), fault(503))  # retried, then given up
    c.push(reply("from c"))
    route = Route(
        targets=(target(a, model="a"), target(b, "anthropic", model="b"), target(c, model="c")), retries=2
    )
    result = router(time_).complete(route, HELLO, scope=SCOPE)
    assert result.message.content == "from c" and result.model == "c"
    assert [len(f.requests) for f in fakes] == [1, 3, 1]
    assert result.attempts == 5
    assert time_.slept == [0.25, 0.5]  # exponential backoff (jitter pinned at 1.0x)


def test_retry_after_is_honoured_and_a_long_one_moves_on(fakes: list[FakeProvider], time_: FakeTime) -> None:
    a, b, _ = fakes
    a.push(fault(429, retry_after=3), reply("after the wait"))
    route = Route(targets=(target(a), target(b)))
    assert router(time_).complete(route, HELLO, scope=SCOPE).message.content == "after the wait"
    assert time_.slept == [3.0]
    a.push(fault(429, retry_after=600))
    b.push(reply("from b"))
    assert router(time_).complete(route, HELLO, scope=SCOPE).message.content == "from b"
    assert time_.slept == [3.0], "a Retry-After past the cap is not slept: the next target answers"


def test_every_target_failing_is_one_clear_error(fakes: list[FakeProvider], time_: FakeTime) -> None:
    a, b, _ = fakes
    a.push(fault(500), fault(500))
    b.push(malformed(), malformed())
    route = Route(targets=(target(a, model="a"), target(b, model="b")), retries=1)
    with pytest.raises(ModelCallFailed) as caught:
        router(time_).complete(route, HELLO, scope=SCOPE)
    assert "no target of the model policy answered" in caught.value.detail
    assert [f["target"] for f in caught.value.attempts] == ["openai/a", "openai/a", "openai/b", "openai/b"]
    assert "malformed" in caught.value.attempts[-1]["error"]


def test_timeouts_fall_back(fakes: list[FakeProvider], time_: FakeTime) -> None:
    a, b, _ = fakes
    a.push(reply("too late", delay=2.0))
    b.push(reply("in time"))
    route = Route(targets=(target(a, timeout_seconds=0.3), target(b)), retries=0)
    result = router(time_).complete(route, HELLO, scope=SCOPE)
    assert result.message.content == "in time"
    assert len(a.requests) == 1


def test_a_stream_that_breaks_after_its_first_byte_does_not_fall_back(
    fakes: list[FakeProvider], time_: FakeTime
) -> None:
    a, b, _ = fakes
    a.push(disconnect(after_events=2))
    b.push(reply("never asked"))
    route = Route(targets=(target(a), target(b)))
    with pytest.raises(ModelCallFailed) as caught:
        router(time_).complete(route, HELLO, stream=True, scope=SCOPE)
    assert "broke off after it had begun" in caught.value.detail
    assert len(a.requests) == 1 and b.requests == []
    # Before the first byte (here: not streamed, connection dropped mid-body) it does fall back.
    a.push(disconnect(), disconnect(), disconnect())
    assert router(time_).complete(route, HELLO, scope=SCOPE).message.content == "never asked"
    assert len(a.requests) == 4


def test_a_malformed_stream_is_a_failure_not_a_crash(fakes: list[FakeProvider], time_: FakeTime) -> None:
    a, _, _ = fakes
    a.push(malformed(stream_only=True))
    with pytest.raises(ModelCallFailed, match="malformed chunk"):
        router(time_).complete(Route(targets=(target(a),)), HELLO, stream=True, scope=SCOPE)


def test_breaker_opens_then_lets_one_probe_through(fakes: list[FakeProvider], time_: FakeTime) -> None:
    a, b, _ = fakes
    b.push(*(reply(f"b{i}") for i in range(10)))
    route = Route(targets=(target(a), target(b)), retries=0)
    r = router(time_, breaker_threshold=3, breaker_cooldown=30.0)
    a.push(fault(500), fault(500), fault(500))
    for _ in range(3):
        r.complete(route, HELLO, scope=SCOPE)
    assert r.breaker(route.targets[0], scope=SCOPE).state == "open"
    r.complete(route, HELLO, scope=SCOPE)
    assert len(a.requests) == 3, "an open breaker skips its target"
    time_.t += 31
    assert r.breaker(route.targets[0], scope=SCOPE).state == "half-open"
    a.push(fault(500))
    r.complete(route, HELLO, scope=SCOPE)
    assert len(a.requests) == 4, "one probe after the cooldown"
    assert r.breaker(route.targets[0], scope=SCOPE).state == "open", "a failed probe opens it again"
    r.complete(route, HELLO, scope=SCOPE)
    assert len(a.requests) == 4
    time_.t += 31
    a.push(reply("a is back"))
    assert r.complete(route, HELLO, scope=SCOPE).message.content == "a is back"
    assert r.breaker(route.targets[0], scope=SCOPE).state == "closed"


def test_strategies_order_by_price_and_by_observed_latency(
    fakes: list[FakeProvider], time_: FakeTime
) -> None:
    a, b, _ = fakes
    prices = {
        "dear": Price(input_per_mtok=10, output_per_mtok=30),
        "cheap": Price(input_per_mtok=0.1, output_per_mtok=0.4),
    }
    route = Route(
        targets=(target(a, model="dear"), target(b, model="cheap")), strategy="cheapest", prices=prices
    )
    b.push(reply("cheap one"))
    assert router(time_).complete(route, HELLO, scope=SCOPE).model == "cheap"
    r = router()
    fastest = Route(targets=(target(a, model="slow"), target(b, model="quick")), strategy="fastest")
    a.push(reply("slow", delay=0.2))
    b.push(reply("quick"))
    r.complete(Route(targets=(fastest.targets[0],)), HELLO, scope=SCOPE)
    r.complete(Route(targets=(fastest.targets[1],)), HELLO, scope=SCOPE)
    assert [t.model for t in r.order(fastest, scope=SCOPE)] == ["quick", "slow"]


def test_output_cap_and_api_key_reach_the_provider(time_: FakeTime) -> None:
    with FakeProvider(reply("ok"), reply("ok"), api_key="sk-test-key-123456") as fake:
        request = ChatRequest(messages=(Message(role="user", content="hi"),), max_tokens=5000)
        route = Route(targets=(target(fake),), max_output_tokens=256)
        router(time_).complete(route, request, key_for=lambda _t: "sk-test-key-123456", scope=SCOPE)
        anthropic = Route(targets=(target(fake, "anthropic"),), max_output_tokens=256)
        router(time_).complete(anthropic, request, key_for=lambda _t: "sk-test-key-123456", scope=SCOPE)
        first, second = fake.requests
    assert first.body["max_tokens"] == 256 and second.body["max_tokens"] == 256
    assert first.headers["authorization"] == "Bearer sk-test-key-123456"
    assert second.headers["x-api-key"] == "sk-test-key-123456"
    assert second.headers["anthropic-version"]


def test_a_wrong_key_is_not_retried_and_does_not_count_against_the_breaker(time_: FakeTime) -> None:
    with FakeProvider(default=reply("ok"), api_key="the-right-key-0000") as fake:
        route = Route(targets=(target(fake),), retries=3)
        r = router(time_, breaker_threshold=2)
        for _ in range(3):
            with pytest.raises(ModelCallFailed, match="401"):
                r.complete(route, HELLO, key_for=lambda _t: "a-wrong-key-00000", scope=SCOPE)
        assert len(fake.requests) == 3, "no retry of a refused key, and no breaker skipping the target"
        assert r.breaker(route.targets[0], scope=SCOPE).state == "closed", (
            "a refused key is the caller's fault"
        )
        assert (
            r.complete(route, HELLO, key_for=lambda _t: "the-right-key-0000", scope=SCOPE).message.content
            == "ok"
        )


def test_a_hold_pauses_a_stream_midway() -> None:
    hold = Hold()
    with FakeProvider(reply("one two three four five six", hold=hold)) as fake:
        import threading

        out: list[str] = []
        thread = threading.Thread(
            target=lambda: out.append(
                router()
                .complete(Route(targets=(target(fake),)), HELLO, stream=True, scope=SCOPE)
                .message.content
            )
        )
        thread.start()
        hold.wait_reached()
        assert out == []
        hold.release()
        thread.join(10)
    assert out == ["one two three four five six"]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("stream", [False, True])
def test_calls_reuse_one_pooled_connection(provider: str, stream: bool) -> None:
    """A streamed answer is read to the end of its body (past OpenAI's ``[DONE]``), so the
    connection goes back to the pool: the calls of one caller ride one connection, not a new
    handshake each (which, under many callers, also overflowed the server's listen queue)."""
    with FakeProvider(default=reply("Hello there.")) as fake:
        made = router()
        route = Route(targets=(target(fake, provider),))
        answers = [made.complete(route, HELLO, stream=stream, scope=SCOPE) for _ in range(4)]
        peers = {r.peer for r in fake.requests}
    assert [a.message.content for a in answers] == ["Hello there."] * 4
    assert len(fake.requests) == 4 and len(peers) == 1, peers


def test_a_burst_of_new_connections_is_answered() -> None:
    """64 callers at once, (nearly) each on a new connection: none is reset (the fake's listen
    backlog was socketserver's 5, and the kernel reset connections past it)."""
    limits = httpx.Limits(max_connections=64)
    with FakeProvider(default=reply("ok")) as fake, httpx.Client(limits=limits) as client:
        gate = threading.Barrier(64)
        failures: list[str] = []

        def call() -> None:
            gate.wait()
            try:
                response = client.post(
                    fake.openai_url + "/chat/completions",
                    json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                )
                assert response.status_code == 200
            except httpx.HTTPError as exc:
                failures.append(repr(exc))

        threads = [threading.Thread(target=call) for _ in range(64)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        peers = {r.peer for r in fake.requests}
    assert failures == []
    assert len(fake.requests) == 64
    assert len(peers) >= 32, "the callers came on new connections, at once"
