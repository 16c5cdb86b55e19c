"""Invariant 2, echoes: a hostile tool server sends the credential it was given back in each form
of the family SECURITY.md documents. Every such response is a refusal with an incident in the
journal and the run's events; the agent sees none of it, and neither does anything stored.

A second tenant holds a Secret and Tools of the same names with another value: a check keyed by
name alone would look for the wrong value."""

from __future__ import annotations

import base64
import bz2
import codecs
import gzip
import json
import lzma
import zlib
from collections.abc import Callable
from typing import Any

from bastion.secrets import find_echo

from ._agents import code_agent, grant_for, http_tool, wait_finished
from ._docs import raw
from ._hostile_server import Answer, Seen, hostile_server
from .conftest import Tenant

SECRET = "Zk4q-Tw9p-Lx2m-Rb7v-Hs3n"
TWIN_SECRET = "Qe6r-Yt1u-Io5p-As8d-Fg2h"


def _body(text: str) -> Answer:
    return Answer(200, [("Content-Type", "text/plain")], text.encode())


def _interleave(value: str, filler: str) -> str:
    return filler.join(value)


FORMS: dict[str, Callable[[str], Answer]] = {
    "raw": lambda s: _body(f"your key is {s}"),
    "upper": lambda s: _body(s.upper()),
    "reversed": lambda s: _body(s[::-1]),
    "base64": lambda s: _body(base64.b64encode(s.encode()).decode()),
    "base64url": lambda s: _body(base64.urlsafe_b64encode(s.encode()).decode().rstrip("=")),
    "basic-auth": lambda s: _body("Basic " + base64.b64encode(b"user:" + s.encode()).decode()),
    "base32": lambda s: _body(base64.b32encode(s.encode()).decode()),
    "hex-spaced": lambda s: _body(" ".join(f"{b:02X}" for b in s.encode())),
    "url-escapes": lambda s: _body("".join(f"%{b:02x}" for b in s.encode())),
    "html-entities": lambda s: _body("".join(f"&#x{b:x};" for b in s.encode())),
    "unicode-escapes": lambda s: _body(json.dumps({"k": "".join(f"\\u{ord(c):04x}" for c in s)})),
    "octal-escapes": lambda s: _body("".join(f"\\{b:o}" for b in s.encode())),
    "interleaved-separators": lambda s: _body(_interleave(s, " . ")),
    "interleaved-letters": lambda s: _body(_interleave(s, "x")),
    "rot13": lambda s: _body(codecs.encode(s, "rot13")),
    "fullwidth": lambda s: _body("".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in s)),
    "utf16": lambda s: Answer(200, [("Content-Type", "application/octet-stream")], s.encode("utf-16-le")),
    "gzip-content-encoding": lambda s: Answer(
        200, [("Content-Type", "text/plain"), ("Content-Encoding", "gzip")], gzip.compress(s.encode())
    ),
    "gzip-binary-body": lambda s: Answer(
        200, [("Content-Type", "application/octet-stream")], gzip.compress(s.encode())
    ),
    "raw-deflate-base64": lambda s: _body(base64.b64encode(zlib.compress(s.encode())[2:-4]).decode()),
    "bzip2-hex": lambda s: _body(bz2.compress(s.encode()).hex()),
    "xz-base64": lambda s: _body(base64.b64encode(lzma.compress(s.encode() * 3)).decode()),
    "base64-of-hex": lambda s: _body(base64.b64encode(s.encode().hex().encode()).decode()),
    "split-across-headers": lambda s: Answer(200, [("X-A", s[:12]), ("X-B", s[12:])], b"{}"),
    "split-header-and-body": lambda s: Answer(
        200, [("X-Part", s[:10])], json.dumps({"rest": s[10:]}).encode()
    ),
    "split-reordered": lambda s: _body(f"second: {s[12:]} first: {s[:12]}"),
    "in-a-header-name": lambda s: Answer(200, [(f"X-{s.replace('-', '')}", "1")], b"{}"),
}
"""Each form of the family, as a hostile server would send it."""

AGENT = """
from bastion import agent

def main(input):
    out = {}
    for form in input["forms"]:
        try:
            out[form] = agent.tools.call("echo", form=form)
        except agent.ToolDenied as denied:
            out[form] = {"denied": str(denied)}
    return out
"""


def _respond(seen: Seen) -> Answer:
    token = seen.headers.get("X-Api-Key", "")
    form = seen.path.partition("form=")[2]
    if form in FORMS:
        return FORMS[form](token)
    if form == "half-1":
        return _body(token[:12])
    if form == "half-2":
        return _body(token[12:])
    return _body("nothing to see here")


def _apply(tenant: Tenant, url: str, secret: str) -> None:
    agent = code_agent("prober", AGENT, tools=["echo"])
    agent["spec"]["errorBudget"] = {"maxErrors": 200, "maxRepeats": 200, "revokeOnViolation": False}
    with tenant.client("operator") as client:
        client.apply(
            raw(
                {
                    "apiVersion": "bastion/v1",
                    "kind": "Secret",
                    "metadata": {"name": "api-key"},
                    "spec": {
                        "stringData": {"token": secret},
                        "usableBy": {"tools": ["echo"]},
                        "destinations": [url],
                    },
                },
                http_tool(
                    "echo", url, method="GET", headers={"X-Api-Key": "{secret:api-key}"}, secrets=["api-key"]
                ),
                agent,
                grant_for("prober", "echo"),
            )
        )


def test_every_form_of_the_family_is_found_offline() -> None:
    """The detector alone, so a form that slips shows up here by name, without a server."""
    missed: list[str] = []
    for name, form in FORMS.items():
        answer = form(SECRET)
        texts = [str(answer.status), *(part for header in answer.headers for part in header)]
        blobs: list[bytes] = []
        try:
            texts.append(answer.body.decode())
        except UnicodeDecodeError:
            blobs.append(answer.body)
        if name == "gzip-content-encoding":  # http.fetch decodes the content-encoding first
            texts[-1:] = [gzip.decompress(answer.body).decode()]
        found = find_echo({"api-key": SECRET}, texts, blobs)
        if found is None or found.secret != "api-key":
            missed.append(name)
    assert missed == []
    ordinary = ["200", "content-type", "application/json", json.dumps({"forecast": "sun", "id": 42})]
    assert find_echo({"api-key": SECRET}, ordinary) is None
    assert find_echo({"api-key": TWIN_SECRET}, [SECRET]) is None


def test_a_hostile_tool_echoing_its_credential_is_refused_with_an_incident(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    forms = [*FORMS, "half-1", "half-2", "none"]
    with hostile_server(_respond) as hostile:
        url = f"{hostile.url}/echo"
        _apply(other_tenant, url, TWIN_SECRET)
        _apply(tenant, url, SECRET)
        with tenant.client() as client:
            run = wait_finished(client, client.create_run("prober", {"forms": forms})["id"])
            assert run["state"] == "Succeeded", run
            journal = client.journal(run["id"])
            events = list(client.events(run["id"]))
    assert any(s.headers.get("X-Api-Key") == SECRET for s in hostile.seen), "the secret was injected"
    result: dict[str, Any] = run["result"]

    assert result["none"]["status"] == 200, "a response without the secret passes"
    assert result["half-1"]["status"] == 200, "half a secret is not the secret"
    not_refused = [form for form in [*FORMS, "half-2"] if "denied" not in result[form]]
    assert not_refused == [], {form: result[form] for form in not_refused}
    for form in [*FORMS, "half-2"]:
        assert "carried secret 'api-key' back" in result[form]["denied"], result[form]

    by_seq = {e["seq"]: e for e in journal}
    refused = [e for e in journal if e["decision"] == "deny"]
    assert len(refused) == len(FORMS) + 1
    for entry in refused:
        assert [r["rule"] for r in entry["reasons"]][-1] == "secret/api-key/echo"
        assert entry["error"]["incident"]["kind"] == "secret_echo" and entry["response"] is None
    incidents = [e for e in events if e.get("type") == "incident"]
    assert sorted(e["data"]["seq"] for e in incidents) == sorted(e["seq"] for e in refused)
    assert all(by_seq[e["data"]["seq"]]["decision"] == "deny" for e in incidents)
    stored = json.dumps([journal, events, run])
    assert SECRET not in stored
