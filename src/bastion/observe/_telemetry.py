"""OpenTelemetry spans with the GenAI semantic conventions (DESIGN §3, Observe).

One span per run attempt (``invoke_agent {agent}``), one per tool call (``execute_tool {tool}``)
as its child, and ``chat {model}`` for model calls once the LLM router exists. Each Bastion owns
its own ``TracerProvider``: nothing is registered globally, so many Bastions share a process.

With no exporter attached nothing is recorded: the run span still gets real trace and span ids
(so ``TRACEPARENT`` carries a valid, unsampled context into the sandbox) and a tool call costs one
attribute check. Time, randomness and ids get no span: they are journaled, take microseconds and
would triple the span count without telling anyone anything.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

TRACES_PATH = "/v1/traces"


class _Switch(Sampler):
    """Records every span once an exporter is attached; before that, none (ids are still made)."""

    def __init__(self) -> None:
        self.on = False

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        return SamplingResult(Decision.RECORD_AND_SAMPLE if self.on else Decision.DROP, attributes)

    def get_description(self) -> str:
        return "BastionSwitch"


class Telemetry:
    """A Bastion's tracer and the spans it makes.

    Args:
        otlp_endpoint: an OTLP/HTTP collector, e.g. ``http://127.0.0.1:4318``; spans are batched
            and posted to ``{otlp_endpoint}/v1/traces`` (a URL already ending so is used as is).
        console: print every finished span to stdout (development).
        exporters: further exporters, each behind a ``SimpleSpanProcessor`` (tests).
    """

    def __init__(
        self,
        *,
        otlp_endpoint: str | None = None,
        console: bool = False,
        exporters: Sequence[SpanExporter] = (),
        service_name: str = "bastion",
    ) -> None:
        self._sampler = _Switch()
        self.provider = TracerProvider(
            sampler=self._sampler,
            resource=Resource.create({"service.name": service_name}),
            shutdown_on_exit=False,
        )
        self.tracer = self.provider.get_tracer("bastion")
        self._lock = threading.Lock()
        if otlp_endpoint:
            # Imported here: the OTLP exporter pulls in protobuf, which a Bastion without it never needs.
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            self.add_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=_traces_url(otlp_endpoint))))
        if console:
            self.add_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        for exporter in exporters:
            self.add_exporter(exporter)

    @property
    def recording(self) -> bool:
        """True once an exporter is attached: spans are then recorded and exported."""
        return self._sampler.on

    def add_exporter(self, exporter: SpanExporter) -> None:
        """Export every span finished from now on, synchronously (meant for tests)."""
        self.add_processor(SimpleSpanProcessor(exporter))

    def add_processor(self, processor: SpanProcessor) -> None:
        with self._lock:
            self.provider.add_span_processor(processor)
            self._sampler.on = True

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.provider.shutdown()

    # --- spans -----------------------------------------------------------------------

    @contextmanager
    def run_span(
        self, *, run_id: str, agent: str, attempt: int, namespace: str, tenant: str
    ) -> Generator[RunSpan, None, None]:
        """``invoke_agent {agent}`` around one attempt; an exception escaping it marks the span failed."""
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": agent,
            "bastion.run.id": run_id,
            "bastion.run.attempt": attempt,
            "bastion.namespace": namespace,
            "bastion.tenant": tenant,
        }
        span = self.tracer.start_span(f"invoke_agent {agent}", kind=SpanKind.INTERNAL, attributes=attributes)
        run = RunSpan(span, run_id)
        try:
            yield run
        except BaseException as exc:
            run.fail(type(exc).__name__, str(exc), exc)
            raise
        finally:
            span.end()

    def tool_span(self, run: RunSpan | None, *, tool: str, seq: int, replayed: bool) -> ToolSpan:
        """``execute_tool {tool}``, a child of ``run``: use it as a context manager around the call."""
        if run is None or not self._sampler.on:
            return NO_TOOL_SPAN
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": tool,
            "gen_ai.tool.call.id": f"{run.run_id}:{seq}",
            "bastion.run.id": run.run_id,
            "bastion.seq": seq,
            "bastion.replayed": replayed,
        }
        span = self.tracer.start_span(
            f"execute_tool {tool}", context=run.context, kind=SpanKind.INTERNAL, attributes=attributes
        )
        return ToolSpan(span)

    @contextmanager
    def chat_span(
        self,
        run: RunSpan | None,
        *,
        provider: str,
        model: str,
        seq: int | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> Generator[ChatSpan, None, None]:
        """``chat {model}`` around one model call (the LLM router's, when it exists)."""
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": provider,
            "gen_ai.request.model": model,
            **(attributes or {}),
        }
        if run is not None:
            attrs["bastion.run.id"] = run.run_id
        if seq is not None:
            attrs["bastion.seq"] = seq
        span = self.tracer.start_span(
            f"chat {model}",
            context=run.context if run is not None else None,
            kind=SpanKind.CLIENT,
            attributes=attrs,
        )
        chat = ChatSpan(span)
        try:
            yield chat
        except BaseException as exc:
            _failed(span, type(exc).__name__, str(exc), exc)
            raise
        finally:
            span.end()


class RunSpan:
    """The span of one attempt, as the worker and the gateway see it."""

    def __init__(self, span: Span, run_id: str) -> None:
        self.span, self.run_id = span, run_id
        self.context = trace.set_span_in_context(span)
        """The run span as a parent: tool and chat spans are started in it explicitly."""
        self.failed = False

    @property
    def traceparent(self) -> str:
        """The W3C ``traceparent`` of this span, for the sandbox's ``TRACEPARENT``."""
        ctx = self.span.get_span_context()
        return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"

    def finished(self, state: str) -> None:
        self.span.set_attribute("bastion.run.state", state)

    def fail(self, error_type: str, reason: str, exc: BaseException | None = None) -> None:
        """Mark the attempt failed (once: the first cause wins)."""
        if not self.failed:
            self.failed = True
            _failed(self.span, error_type, reason, exc)


class ToolSpan:
    """One tool call's span; ``outcome`` records the decision and, if any, the error."""

    def __init__(self, span: Span | None) -> None:
        self.span = span
        self.errored = False

    def outcome(self, decision: str, error: Mapping[str, Any] | None) -> None:
        span = self.span
        if span is None:
            return
        span.set_attribute("bastion.decision", decision)
        if error is not None:
            self.errored = True
            reason = error.get("reason") or "; ".join(error.get("reasons", [])) or str(error.get("type"))
            _failed(span, str(error.get("type", "error")), str(reason))

    def __enter__(self) -> ToolSpan:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        span = self.span
        if span is None:
            return
        if exc is not None and not self.errored:
            _failed(span, type(exc).__name__, str(exc), exc)
        span.end()


NO_TOOL_SPAN = ToolSpan(None)
"""What ``tool_span`` returns when nothing records: every method returns at once."""


class ChatSpan:
    """One model call's span; ``usage`` records the response's model and token counts."""

    def __init__(self, span: Span) -> None:
        self.span = span

    def usage(
        self,
        *,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        response_model: str | None = None,
        finish_reasons: Sequence[str] = (),
    ) -> None:
        if input_tokens is not None:
            self.span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
        if output_tokens is not None:
            self.span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
        if response_model is not None:
            self.span.set_attribute("gen_ai.response.model", response_model)
        if finish_reasons:
            self.span.set_attribute("gen_ai.response.finish_reasons", list(finish_reasons))


def _failed(span: Span, error_type: str, reason: str, exc: BaseException | None = None) -> None:
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, reason[:1024]))
    if exc is not None:
        span.record_exception(exc)


def _traces_url(endpoint: str) -> str:
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith(TRACES_PATH) else endpoint + TRACES_PATH
