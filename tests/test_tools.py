"""The builtin tools against real things: an HTTP server on 127.0.0.1 and a real workspace with
real symlinks. Every failure must be a ToolCallFailed whose reason names the problem and never a
host path outside the workspace."""

from __future__ import annotations

import base64
import gzip
import json
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest

from bastion.errors import ToolCallFailed, UserError
from bastion.execution.tools import (
    MAX_ENTRIES,
    FsList,
    FsRead,
    FsWrite,
    HttpFetch,
    HttpTool,
    ToolContext,
    ToolLimits,
    builtin_tools,
)

FIFTY_MB = 50 * 1024 * 1024


@dataclass
class Server:
    port: int
    sent: dict[str, int] = field(default_factory=dict[str, int])
    """Bytes each streaming route managed to write before the client went away."""

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def egress(self) -> list[str]:
        return [f"127.0.0.1:{self.port}"]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {"Content-Type": "application/json"}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _stream(self, name: str, chunk: bytes, delay: float, length: int | None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        sent = 0
        deadline = time.monotonic() + 20
        try:
            while (length is None or sent < length) and time.monotonic() < deadline:
                self.wfile.write(chunk)
                self.wfile.flush()
                sent += len(chunk)
                time.sleep(delay)
        except OSError:
            pass  # the client hung up, as it should
        cast(_Server, self.server).bastion.sent[name] = sent

    def _route(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if url.path == "/echo":
            echo = {
                "method": self.command,
                "path": url.path,
                "query": urllib.parse.parse_qs(url.query),
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode(),
            }
            self._reply(200, json.dumps(echo).encode())
        elif url.path.startswith("/status/"):
            code = int(url.path.rsplit("/", 1)[1])
            self._reply(code, f"status {code}".encode(), {"Content-Type": "text/plain"})
        elif url.path == "/redirect":
            self._reply(302, b"", {"Location": query["to"]})
        elif url.path == "/slow":
            time.sleep(float(query["delay"]))
            self._reply(200, b"late")
        elif url.path == "/endless":  # 50 MB, fast; declared only if asked
            declared = FIFTY_MB if "declare" in query else None
            self._stream("endless", b"\0" * 65536, 0, declared)
        elif url.path == "/drip":  # one byte every 50 ms: no single read ever times out
            self._stream("drip", b"x", 0.05, 10_000)
        elif url.path == "/bomb":
            self._reply(200, gzip.compress(b"\0" * FIFTY_MB), {"Content-Encoding": "gzip"})
        elif url.path == "/gzip":
            self._reply(200, gzip.compress(b'{"zipped": true}'), {"Content-Encoding": "gzip"})
        elif url.path == "/brotli":
            self._reply(200, b"\x0b\x02\x80hi\x03", {"Content-Encoding": "br"})
        elif url.path == "/binary":
            self._reply(200, bytes(range(256)), {"Content-Type": "application/octet-stream"})
        else:
            self._reply(404, b"no such route", {"Content-Type": "text/plain"})

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _route


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    bastion: Server


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    httpd = _Server(("127.0.0.1", 0), Handler)
    httpd.bastion = Server(port=httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.bastion
    httpd.shutdown()
    httpd.server_close()


def ctx(tmp_path: Path, egress: list[str] | None = None, **kw: Any) -> ToolContext:
    limits = ToolLimits(**{k: kw.pop(k) for k in list(kw) if k in ToolLimits.__dataclass_fields__})
    return ToolContext(run_id="run-1", seq=7, workspace=tmp_path, egress=egress or [], limits=limits, **kw)


def fails(tool: Any, args: dict[str, Any], context: ToolContext) -> ToolCallFailed:
    with pytest.raises(ToolCallFailed) as caught:
        tool.invoke(args, context)
    assert "Traceback" not in caught.value.reason
    assert str(context.workspace) not in caught.value.reason
    return caught.value


fetch = HttpFetch()


# --- http.fetch: requests and answers ---------------------------------------------------------


def test_get_returns_status_headers_and_body(server: Server, tmp_path: Path) -> None:
    result = fetch.invoke({"url": f"{server.base}/echo?q=1"}, ctx(tmp_path, server.egress))
    assert result["status"] == 200
    assert result["headers"]["content-type"] == "application/json"
    echoed = json.loads(result["body"])
    assert (echoed["method"], echoed["query"]) == ("GET", {"q": ["1"]})


def test_post_json_and_body(server: Server, tmp_path: Path) -> None:
    context = ctx(tmp_path, server.egress)
    sent = fetch.invoke({"url": f"{server.base}/echo", "method": "POST", "json": {"a": [1, "é"]}}, context)
    echoed = json.loads(sent["body"])
    assert json.loads(echoed["body"]) == {"a": [1, "é"]}
    assert echoed["headers"]["content-type"] == "application/json"
    args = {
        "url": f"{server.base}/echo",
        "method": "PUT",
        "body": "plain",
        "headers": {"Content-Type": "text/plain"},
    }
    echoed = json.loads(fetch.invoke(args, context)["body"])
    assert (echoed["method"], echoed["body"], echoed["headers"]["content-type"]) == (
        "PUT",
        "plain",
        "text/plain",
    )


def test_gateway_headers_override_the_agents_and_carry_the_idempotency_key(
    server: Server, tmp_path: Path
) -> None:
    context = ctx(tmp_path, server.egress, headers={"Authorization": "Bearer from-gateway"})
    agent_headers = {"authorization": "Bearer agent", "X-Agent": "yes", "Idempotency-Key": "mine"}
    result = fetch.invoke({"url": f"{server.base}/echo", "headers": agent_headers}, context)
    seen = json.loads(result["body"])["headers"]
    assert seen["authorization"] == "Bearer from-gateway"
    assert seen["x-agent"] == "yes"
    assert seen["idempotency-key"] == "run-1:7"


@pytest.mark.parametrize("code", [404, 500])
def test_http_errors_are_answers(server: Server, tmp_path: Path, code: int) -> None:
    result = fetch.invoke({"url": f"{server.base}/status/{code}"}, ctx(tmp_path, server.egress))
    assert (result["status"], result["body"]) == (code, f"status {code}")


def test_redirects_are_returned_not_followed(server: Server, tmp_path: Path) -> None:
    for target in ("http://example.com/", f"{server.base}/echo"):
        url = f"{server.base}/redirect?to={urllib.parse.quote(target)}"
        result = fetch.invoke({"url": url}, ctx(tmp_path, server.egress))
        assert (result["status"], result["headers"]["location"]) == (302, target)


def test_binary_gzip_and_head(server: Server, tmp_path: Path) -> None:
    context = ctx(tmp_path, server.egress)
    binary = fetch.invoke({"url": f"{server.base}/binary"}, context)
    assert "body" not in binary and base64.b64decode(binary["body_base64"]) == bytes(range(256))
    assert json.loads(fetch.invoke({"url": f"{server.base}/gzip"}, context)["body"]) == {"zipped": True}
    assert fetch.invoke({"url": f"{server.base}/echo", "method": "HEAD"}, context)["body"] == ""
    assert "br" in fails(fetch, {"url": f"{server.base}/brotli"}, context).reason


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        ({}, "'url'"),
        ({"url": "http://x/", "verb": "GET"}, "unknown argument 'verb'"),
        ({"url": "http://x/", "method": "TRACE"}, "'method'"),
        ({"url": "http://x/", "headers": ["a"]}, "'headers'"),
        ({"url": "http://x/", "body": "a", "json": 1}, "not both"),
        ({"url": "http://x/", "body": {"a": 1}}, "'body'"),
        ({"url": "http://x/", "json": float("nan")}, "'json'"),
        ({"url": "http://x/", "headers": {"Host": "evil"}}, "'Host'"),
        ({"url": "http://x/", "headers": {"Content-Length": "1"}}, "'Content-Length'"),
        ({"url": "http://x/", "headers": {"X": "a\r\nInjected: 1"}}, "line breaks"),
        ({"url": "http://x/", "headers": {"bad name": "1"}}, "header name"),
    ],
)
def test_bad_arguments_are_refused_by_name(
    server: Server, tmp_path: Path, args: dict[str, Any], phrase: str
) -> None:
    args = {k: (f"{server.base}/echo" if v == "http://x/" else v) for k, v in args.items()}
    assert phrase in fails(fetch, args, ctx(tmp_path, server.egress)).reason


# --- http.fetch: egress -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("egress", "host"),
    [
        ([], "127.0.0.1"),
        (["127.0.0.1"], "127.0.0.1"),  # no port in the pattern: default ports only
        (["127.0.0.1:1"], "127.0.0.1"),
        (["localhost:{port}"], "127.0.0.1"),  # a name does not allow its IP
        (["127.0.0.1:{port}"], "localhost"),  # nor an IP its name
        (["*.localhost:{port}"], "localhost"),  # a subdomain glob does not allow the apex
        (["*:{port}", "127.0.0.*:{port}"], "127.0.0.1"),  # other globs match nothing
    ],
)
def test_egress_denies(server: Server, tmp_path: Path, egress: list[str], host: str) -> None:
    patterns = [p.format(port=server.port) for p in egress]
    failure = fails(fetch, {"url": f"http://{host}:{server.port}/echo"}, ctx(tmp_path, patterns))
    assert failure.reason == f"host '{host}:{server.port}' is not in this grant's egress allowlist"
    assert not failure.retryable


@pytest.mark.parametrize("pattern", ["localhost:{port}", "LOCALHOST:{port}", "localhost.:{port}"])
def test_egress_allows_a_name_with_its_port(server: Server, tmp_path: Path, pattern: str) -> None:
    context = ctx(tmp_path, [pattern.format(port=server.port)])
    assert fetch.invoke({"url": f"http://LocalHost:{server.port}/echo"}, context)["status"] == 200


def test_egress_glob_allows_subdomains(server: Server, tmp_path: Path) -> None:
    context = ctx(tmp_path, [f"*.localhost:{server.port}"])
    for host in ("api.localhost", "a.b.localhost"):
        failure: ToolCallFailed | None = None
        try:
            fetch.invoke({"url": f"http://{host}:{server.port}/echo"}, context)
        except ToolCallFailed as exc:
            failure = exc
        # It passed the allowlist; whether the name then resolves depends on the machine's resolver.
        assert failure is None or ("egress" not in failure.reason and failure.retryable)


@pytest.mark.parametrize(
    ("url", "phrase"),
    [
        ("http://user:pw@127.0.0.1:{port}/echo", "credentials"),
        ("http://127.0.0.1:{port}@example.com/", "credentials"),
        ("file:///etc/passwd", "http or https"),
        ("ftp://127.0.0.1:{port}/", "http or https"),
        ("//127.0.0.1:{port}/", "http or https"),
        ("http://127.1:{port}/echo", "non-standard"),
        ("http://2130706433:{port}/echo", "non-standard"),
        ("http://0x7f.0.0.1:{port}/echo", "non-standard"),
        ("http://127.0.0.1:{port}/echo\r\nX: y", "whitespace"),
        ("http://127.0.0.1:{port}\\@example.com/", "backslash"),
        ("http://127.0.0.1:0/", "non-standard"),
        ("http://exa%6dple.com/", "non-standard"),
    ],
)
def test_urls_in_odd_forms_are_refused(server: Server, tmp_path: Path, url: str, phrase: str) -> None:
    context = ctx(tmp_path, [*server.egress, "example.com", "127.1", "2130706433"])
    assert phrase in fails(fetch, {"url": url.format(port=server.port)}, context).reason


# --- http.fetch: limits -----------------------------------------------------------------------


def test_a_response_over_the_cap_fails_without_being_read(server: Server, tmp_path: Path) -> None:
    context = ctx(tmp_path, server.egress, max_response_bytes=256 * 1024)
    for url in (f"{server.base}/endless", f"{server.base}/endless?declare=1", f"{server.base}/bomb"):
        started = time.monotonic()
        assert "larger than the limit of 262144 bytes" in fails(fetch, {"url": url}, context).reason
        assert time.monotonic() - started < 5
    time.sleep(0.2)  # let the server notice the hang-ups
    assert server.sent["endless"] < FIFTY_MB / 4


def test_a_request_body_over_the_cap_is_refused(server: Server, tmp_path: Path) -> None:
    context = ctx(tmp_path, server.egress, max_request_bytes=10)
    args = {"url": f"{server.base}/echo", "method": "POST", "body": "x" * 11}
    assert "over the limit of 10" in fails(fetch, args, context).reason


@pytest.mark.parametrize("route", ["/slow?delay=3", "/drip"])
def test_the_timeout_covers_the_whole_call(server: Server, tmp_path: Path, route: str) -> None:
    context = ctx(tmp_path, server.egress, timeout_seconds=0.5)
    started = time.monotonic()
    failure = fails(fetch, {"url": f"{server.base}{route}"}, context)
    assert time.monotonic() - started < 2
    assert "timed out after 0.5s" in failure.reason and failure.retryable


def test_a_refused_connection_is_retryable(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    failure = fails(fetch, {"url": f"http://127.0.0.1:{port}/"}, ctx(tmp_path, [f"127.0.0.1:{port}"]))
    assert failure.retryable and "connection refused" in failure.reason


# --- HTTP tools -------------------------------------------------------------------------------


def test_http_tool_sends_arguments_as_query_or_json(server: Server, tmp_path: Path) -> None:
    # the gateway hands an HTTP tool the host and port its decision judged
    context = ctx(tmp_path, server.egress, headers={"Authorization": "Bearer injected"})
    getter = HttpTool(
        "weather", f"{server.base}/echo?units=si", "GET", {"X-Static": "1", "Authorization": "no"}
    )
    echoed = json.loads(getter.invoke({"city": "Zürich", "days": [1, 2], "exact": True}, context)["body"])
    assert echoed["query"] == {"units": ["si"], "city": ["Zürich"], "days": ["1", "2"], "exact": ["true"]}
    assert echoed["headers"]["authorization"] == "Bearer injected" and echoed["headers"]["x-static"] == "1"
    poster = HttpTool("create", f"{server.base}/echo")
    echoed = json.loads(poster.invoke({"title": "t", "tags": ["a"]}, context)["body"])
    assert (echoed["method"], json.loads(echoed["body"])) == ("POST", {"title": "t", "tags": ["a"]})
    assert echoed["headers"]["idempotency-key"] == "run-1:7"
    assert "'q'" in fails(getter, {"q": {"nested": 1}}, context).reason


def test_http_tool_sends_only_where_its_decision_allows(server: Server, tmp_path: Path) -> None:
    getter = HttpTool("weather", f"{server.base}/echo", "GET")
    for egress in ([], ["example.com"], [f"127.0.0.1:{server.port + 1}"]):
        failure = fails(getter, {"city": "x"}, ctx(tmp_path, egress))
        assert "is not in this grant's egress allowlist" in failure.reason, failure.reason


def test_http_tool_refuses_bad_configuration() -> None:
    with pytest.raises(UserError, match="credentials"):
        HttpTool("t", "https://user:pw@example.com/")
    with pytest.raises(UserError, match="method"):
        HttpTool("t", "https://example.com/", "TRACE")


def test_builtin_tools() -> None:
    tools = builtin_tools()
    assert sorted(tools) == ["fs.list", "fs.read", "fs.write", "http.fetch"]
    assert {name: tool.workspace_only for name, tool in tools.items()} == {
        "fs.list": True,
        "fs.read": True,
        "fs.write": True,
        "http.fetch": False,
    }


# --- fs.* -------------------------------------------------------------------------------------

read, write, listing = FsRead(), FsWrite(), FsList()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "ws").mkdir()
    return tmp_path / "ws"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the workspace, holding a file the agent must never reach."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("host secret")
    return tmp_path / "outside"


def test_write_read_list_round_trip(workspace: Path) -> None:
    context = ctx(workspace)
    assert write.invoke({"path": "notes/a.txt", "content": "héllo"}, context) == {
        "path": "notes/a.txt",
        "size": 6,
    }
    assert (
        write.invoke({"path": "./notes//b.bin", "content_base64": "AAEC"}, context)["path"] == "notes/b.bin"
    )
    assert write.invoke({"path": "notes/a.txt", "content": "!", "append": True}, context)["size"] == 7
    assert read.invoke({"path": "notes/a.txt"}, context) == {
        "path": "notes/a.txt",
        "content": "héllo!",
        "size": 7,
    }
    assert read.invoke({"path": "notes/b.bin"}, context)["content"] == "\0\1\2"
    (workspace / "notes" / "raw").write_bytes(b"\xff\xfe")
    assert read.invoke({"path": "notes/raw"}, context)["content_base64"] == "//4="
    (workspace / "notes" / "deeper").mkdir()
    (workspace / "notes" / "link").symlink_to("a.txt")
    assert listing.invoke({"path": "notes"}, context) == {
        "path": "notes",
        "entries": [
            {"name": "a.txt", "type": "file", "size": 7},
            {"name": "b.bin", "type": "file", "size": 3},
            {"name": "deeper", "type": "dir", "size": None},
            {"name": "link", "type": "symlink", "size": None},
            {"name": "raw", "type": "file", "size": 2},
        ],
        "truncated": False,
    }
    assert [e["name"] for e in listing.invoke({}, context)["entries"]] == ["notes"]


def test_write_replaces_atomically_and_keeps_the_mode(workspace: Path) -> None:
    target = workspace / "run.sh"
    target.write_text("old")
    target.chmod(0o750)
    write.invoke({"path": "run.sh", "content": "new"}, ctx(workspace))
    assert target.read_text() == "new" and (target.stat().st_mode & 0o777) == 0o750
    assert sorted(os.listdir(workspace)) == ["run.sh"]  # no temporary file left behind


@pytest.mark.parametrize(
    ("tool", "args", "phrase"),
    [
        (read, {"path": "../outside/secret.txt"}, "'..'"),
        (read, {"path": "a/../../x"}, "'..'"),
        (read, {"path": "/etc/passwd"}, "absolute"),
        (read, {"path": "a\0b"}, "NUL"),
        (read, {"path": ""}, "must name a file"),
        (read, {"path": "."}, "must name a file"),
        (read, {}, "missing argument 'path'"),
        (read, {"path": 3}, "'path' must be a string"),
        (read, {"path": "a", "mode": "r"}, "unknown argument 'mode'"),
        (read, {"path": "missing.txt"}, "'missing.txt' does not exist"),
        (write, {"path": "x"}, "exactly one"),
        (write, {"path": "x", "content": "a", "append": "yes"}, "'append' must be a boolean"),
        (write, {"path": "x", "content_base64": "!!"}, "not valid base64"),
        (write, {"path": "a/b/c", "content": "x", "create_dirs": False}, "'a' does not exist"),
        (listing, {"path": "../"}, "'..'"),
        (listing, {"path": "nowhere"}, "'nowhere' does not exist"),
    ],
)
def test_bad_paths_are_refused(workspace: Path, tool: Any, args: dict[str, Any], phrase: str) -> None:
    assert phrase in fails(tool, args, ctx(workspace)).reason


def test_a_symlink_to_a_host_file_is_not_followed(workspace: Path) -> None:
    (workspace / "passwd").symlink_to("/etc/passwd")
    context = ctx(workspace)
    assert "'passwd' is a symlink" in fails(read, {"path": "passwd"}, context).reason
    assert "symlink" in fails(write, {"path": "passwd", "content": "x", "append": True}, context).reason
    assert Path("/etc/passwd").read_text().startswith("root")


def test_a_symlinked_directory_pointing_outside_is_not_entered(workspace: Path, outside: Path) -> None:
    (workspace / "out").symlink_to(outside)
    (workspace / "sub").mkdir()
    (workspace / "sub" / "out").symlink_to(outside)
    context = ctx(workspace)
    for path in ("out/secret.txt", "sub/out/secret.txt"):
        assert f"'{path.rsplit('/', 1)[0]}' is a symlink" in fails(read, {"path": path}, context).reason
        assert "symlink" in fails(write, {"path": path, "content": "pwned"}, context).reason
    assert "symlink" in fails(listing, {"path": "out"}, context).reason
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "host secret"


def test_a_symlink_swapped_in_as_the_write_target_is_replaced_not_followed(
    workspace: Path, outside: Path
) -> None:
    (workspace / "report.txt").symlink_to(outside / "secret.txt")
    assert write.invoke({"path": "report.txt", "content": "mine"}, ctx(workspace))["size"] == 4
    assert not (workspace / "report.txt").is_symlink()
    assert (workspace / "report.txt").read_text() == "mine"
    assert (outside / "secret.txt").read_text() == "host secret"


def test_sizes_over_the_limit_are_refused(workspace: Path) -> None:
    context = ctx(workspace, max_file_bytes=1024)
    assert "over the limit of 1024" in fails(write, {"path": "big", "content": "x" * 1025}, context).reason
    assert not (workspace / "big").exists()
    (workspace / "big").write_bytes(b"x" * 1025)
    assert "larger than the limit of 1024" in fails(read, {"path": "big"}, context).reason
    write.invoke({"path": "log", "content": "x" * 1000}, context)
    failure = fails(write, {"path": "log", "content": "x" * 25, "append": True}, context)
    assert "larger than the limit" in failure.reason and (workspace / "log").stat().st_size == 1000


def test_directories_fifos_and_huge_listings(workspace: Path) -> None:
    context = ctx(workspace)
    (workspace / "dir").mkdir()
    os.mkfifo(workspace / "pipe")
    assert "is a directory" in fails(read, {"path": "dir"}, context).reason
    assert "is a directory" in fails(write, {"path": "dir", "content": "x"}, context).reason
    assert "not a regular file" in fails(read, {"path": "pipe"}, context).reason  # and did not hang
    assert "not a directory" in fails(read, {"path": "pipe/x"}, context).reason
    many = workspace / "many"
    many.mkdir()
    for i in range(MAX_ENTRIES + 5):
        (many / f"f{i:05d}").touch()
    listed = listing.invoke({"path": "many"}, context)
    assert listed["truncated"] and len(listed["entries"]) == MAX_ENTRIES
    assert (
        listed["entries"][0]["name"] == "f00000"
        and listed["entries"][-1]["name"] == f"f{MAX_ENTRIES - 1:05d}"
    )
