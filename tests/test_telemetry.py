"""OpenTelemetry spans of live runs: names, parentage, GenAI attributes, errors, TRACEPARENT, OTLP."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from bastion.client import BastionClient
from bastion.control import Bastion, create_app
from bastion.execution.gateway import Attempt
from bastion.execution.sandbox import CallError
from bastion.observe import Telemetry
from bastion.testing import serve_in_thread

from ._agents import builtin_tool, code_agent, grant_for, wait_finished
from ._docs import raw

TRACED = """
import os
from bastion import agent

def main(input):
    agent.tools.call("fs.write", path="a.txt", content="hi")
    try:
        agent.tools.call("fs.list")
    except agent.ToolDenied:
        pass
    try:
        agent.tools.call("fs.read", path="missing.txt")
    except agent.ToolFailed:
        pass
    agent.now()
    return os.environ.get("TRACEPARENT")
"""

BROKEN = """
def main(input):
    raise RuntimeError("on purpose")
"""


@dataclass(frozen=True)
class Live:
    bastion: Bastion
    client: BastionClient


@pytest.fixture
def live(make_bastion: Callable[..., Bastion]) -> Callable[[], Iterator[Live]]:
    """A Bastion whose telemetry is set up by the test before its worker starts."""

    def start() -> Iterator[Live]:
        bastion = make_bastion(lease_seconds=2.0, poll_seconds=0.05)
        first = bastion.bootstrap()
        assert first is not None
        thread, stop = bastion.start_worker()
        try:
            with serve_in_thread(create_app(bastion)) as url, BastionClient(url, first.admin_key) as system:
                key = system.create_tenant("traced")["adminKey"]["token"]
                with BastionClient(url, key) as client:
                    client.apply(
                        raw(builtin_tool("fs.write"), builtin_tool("fs.read"), builtin_tool("fs.list"))
                    )
                    yield Live(bastion, client)
        finally:
            stop.set()
            thread.join(timeout=30)

    return start


def _wait_for(exporter: InMemorySpanExporter, count: int, name: str) -> list[ReadableSpan]:
    """The run span ends just after the run's state is written: wait for it to be exported."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        spans = list(exporter.get_finished_spans())
        if sum(s.name == name for s in spans) >= count:
            return spans
        time.sleep(0.02)
    raise AssertionError(f"no {count} span(s) {name!r}: {[s.name for s in exporter.get_finished_spans()]}")


def test_a_run_makes_a_trace_of_its_tool_calls(live: Callable[[], Iterator[Live]]) -> None:
    exporter = InMemorySpanExporter()
    for env in live():
        env.bastion.telemetry.add_exporter(exporter)
        env.client.apply(
            raw(
                code_agent("traced", TRACED, tools=["fs.write", "fs.read", "fs.list"]),
                grant_for("traced", "fs.write", "fs.read"),
            )
        )
        run = env.client.create_run("traced")
        done = wait_finished(env.client, run["id"])
        assert done["state"] == "Succeeded", done
        spans = _wait_for(exporter, 1, "invoke_agent traced")

    [root] = [s for s in spans if s.name == "invoke_agent traced"]
    tools = sorted((s for s in spans if s.name.startswith("execute_tool ")), key=lambda s: s.start_time or 0)
    assert [s.name for s in tools] == [
        "execute_tool fs.write",
        "execute_tool fs.list",
        "execute_tool fs.read",
    ]
    assert len(spans) == 4, "time, random and uuid calls get no span"
    assert root.context is not None and root.parent is None
    trace_id, root_id = root.context.trace_id, root.context.span_id
    for span in tools:
        assert span.context is not None and span.context.trace_id == trace_id
        assert span.parent is not None and span.parent.span_id == root_id

    attrs = dict(root.attributes or {})
    assert attrs["gen_ai.operation.name"] == "invoke_agent"
    assert attrs["gen_ai.agent.name"] == "traced"
    assert attrs["bastion.run.id"] == run["id"]
    assert attrs["bastion.run.attempt"] == 1
    assert attrs["bastion.run.state"] == "Succeeded"
    assert root.status.status_code is StatusCode.UNSET

    by_tool = {str((s.attributes or {})["gen_ai.tool.name"]): s for s in tools}
    expected: dict[str, tuple[str, str | None, int]] = {
        "fs.write": ("allow", None, 1),
        "fs.list": ("deny", "policy_denied", 2),
        "fs.read": ("allow", "tool_call_failed", 3),
    }
    for tool, (decision, error_type, seq) in expected.items():
        span = by_tool[tool]
        attrs = dict(span.attributes or {})
        assert attrs["gen_ai.operation.name"] == "execute_tool"
        assert attrs["bastion.run.id"] == run["id"]
        assert attrs["bastion.decision"] == decision
        assert attrs["bastion.seq"] == seq
        assert attrs["bastion.replayed"] is False
        assert attrs.get("error.type") == error_type
        failed = error_type is not None
        assert (span.status.status_code is StatusCode.ERROR) == failed, tool

    # The agent saw the run span's context: it can continue the trace.
    version, seen_trace, seen_span, flags = done["result"].split("-")
    assert (version, seen_trace, seen_span) == ("00", f"{trace_id:032x}", f"{root_id:016x}")
    assert int(flags, 16) & 1, "sampled"


def _never(*_: object) -> None:
    raise AssertionError("a replayed call writes nothing")


def test_replayed_tool_calls_are_marked_replayed(live: Callable[[], Iterator[Live]], tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    for env in live():
        env.bastion.telemetry.add_exporter(exporter)
        env.client.apply(
            raw(
                code_agent("again", TRACED, tools=["fs.write", "fs.read", "fs.list"]),
                grant_for("again", "fs.write", "fs.read"),
            )
        )
        done = wait_finished(env.client, env.client.create_run("again")["id"])
        assert done["state"] == "Succeeded", done
        with env.bastion.store.read() as conn:
            run = env.bastion.runs.get(conn, done["id"])
        assert run is not None
        exporter.clear()
        # A second attempt's session over the same journal: every call is answered by replay.
        telemetry = env.bastion.telemetry
        with telemetry.run_span(
            run_id=run.id, agent=run.agent, attempt=2, namespace=run.namespace, tenant=run.tenant_id
        ) as span:
            session = env.bastion.gateway.session(
                Attempt(
                    run_id=run.id,
                    attempt=2,
                    tenant_id=run.tenant_id,
                    namespace=run.namespace,
                    agent=run.agent,
                    agent_spec=run.agent_spec,
                    workspace=tmp_path,
                    fence=_never,
                    commit=_never,
                    span=span,
                )
            )
            session.handle("tool.call", {"name": "fs.write", "args": {"path": "a.txt", "content": "hi"}})
            with pytest.raises(CallError):
                session.handle("tool.call", {"name": "fs.list", "args": {}})
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"invoke_agent again", "execute_tool fs.write", "execute_tool fs.list"}
    for name, decision in [("execute_tool fs.write", "allow"), ("execute_tool fs.list", "deny")]:
        attrs = dict(spans[name].attributes or {})
        assert attrs["bastion.replayed"] is True
        assert attrs["bastion.decision"] == decision
    assert spans["execute_tool fs.list"].status.status_code is StatusCode.ERROR


def test_a_failed_run_marks_its_span_failed(live: Callable[[], Iterator[Live]]) -> None:
    exporter = InMemorySpanExporter()
    for env in live():
        env.bastion.telemetry.add_exporter(exporter)
        env.client.apply(raw(code_agent("broken", BROKEN)))
        run = env.client.create_run("broken")
        assert wait_finished(env.client, run["id"])["state"] == "Failed"
        spans = _wait_for(exporter, 1, "invoke_agent broken")
    [root] = spans
    assert root.status.status_code is StatusCode.ERROR
    assert "on purpose" in (root.status.description or "")
    assert (root.attributes or {})["error.type"] == "failed"
    assert (root.attributes or {})["bastion.run.state"] == "Failed"


def test_without_an_exporter_nothing_records_but_traceparent_is_valid(
    live: Callable[[], Iterator[Live]],
) -> None:
    for env in live():
        assert not env.bastion.telemetry.recording
        env.client.apply(
            raw(code_agent("quiet", "import os\ndef main(input):\n    return os.environ['TRACEPARENT']\n"))
        )
        run = env.client.create_run("quiet")
        done = wait_finished(env.client, run["id"])
        assert done["state"] == "Succeeded", done
        version, trace_id, span_id, flags = done["result"].split("-")
        assert version == "00"
        assert not int(flags, 16) & 1, "not sampled: nothing records"
        assert int(trace_id, 16) != 0 and int(span_id, 16) != 0


def test_chat_spans_carry_the_genai_usage_attributes() -> None:
    exporter = InMemorySpanExporter()
    telemetry = Telemetry(exporters=[exporter])
    run_span = telemetry.run_span(run_id="r1", agent="a", attempt=1, namespace="default", tenant="t")
    with run_span as run, telemetry.chat_span(run, provider="openai", model="gpt-x", seq=1) as chat:
        chat.usage(input_tokens=12, output_tokens=3, response_model="gpt-x-1", finish_reasons=["stop"])
    chat_span, root = exporter.get_finished_spans()
    assert chat_span.name == "chat gpt-x"
    assert chat_span.parent is not None and root.context is not None
    assert chat_span.parent.span_id == root.context.span_id
    assert dict(chat_span.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-x",
        "bastion.run.id": "r1",
        "bastion.seq": 1,
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 3,
        "gen_ai.response.model": "gpt-x-1",
        "gen_ai.response.finish_reasons": ("stop",),
    }
    telemetry.shutdown()


class _Collector(BaseHTTPRequestHandler):
    posts: list[tuple[str, str, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.posts.append((self.path, self.headers.get("Content-Type", ""), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    """A tiny OTLP/HTTP endpoint on 127.0.0.1 that records what is posted to it."""
    posts: list[tuple[str, str, bytes]] = []
    handler = type("Collector", (_Collector,), {"posts": posts})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", posts
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_spans_are_exported_over_otlp_http(
    make_bastion: Callable[..., Bastion], collector: tuple[str, list[tuple[str, str, bytes]]]
) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    endpoint, posts = collector
    bastion = make_bastion(otlp_endpoint=endpoint, lease_seconds=2.0, poll_seconds=0.05)
    assert bastion.telemetry.recording
    first = bastion.bootstrap()
    assert first is not None
    thread, stop = bastion.start_worker()
    try:
        with serve_in_thread(create_app(bastion)) as url, BastionClient(url, first.admin_key) as system:
            key = system.create_tenant("otlp")["adminKey"]["token"]
            with BastionClient(url, key) as client:
                client.apply(raw(code_agent("exported", "def main(input):\n    return 1\n")))
                run = client.create_run("exported")
                assert wait_finished(client, run["id"])["state"] == "Succeeded"
    finally:
        stop.set()
        thread.join(timeout=30)
    assert bastion.telemetry.force_flush(10_000)
    assert posts, "nothing was posted to the collector"
    names: list[str] = []
    for path, content_type, body in posts:
        assert path == "/v1/traces"
        assert content_type == "application/x-protobuf"
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                names += [span.name for span in scope_spans.spans]
    assert "invoke_agent exported" in names
