"""Invariant 2, what a Secret's destinations mean: no more than the operator wrote. A URL prefix
is not escaped by a path a server resolves elsewhere than the check reads it (percent-encoded dot
segments, encoded slashes, ``..;/``); a host destination without a scheme sends the credential
over https only, never in cleartext.

End to end, a listener resolves percent-decoded dot segments as common servers do. A second tenant
holds a Secret and Tools of the same names whose operator bound them to the whole host: the rule
is each Secret's own, not a global refusal."""

from __future__ import annotations

import posixpath
import urllib.parse

import pytest

from bastion.policy import destination_allows, parse_target

from ._agents import builtin_tool, code_agent, grant_for, wait_finished
from ._docs import raw
from ._hostile_server import Answer, Seen, hostile_server
from .conftest import Tenant

TOKEN = "tok-9Fq2-Lm4x-Pz7c-Wd3k"
TWIN_TOKEN = "twin-4Rt6-Yh8j-Kl2z-Xc5v"

NOT_ADMITTED = [
    # a host destination means https: the agent must not get cleartext by writing http://
    ("api.example.com", "http://api.example.com/v1/chat"),
    ("api.example.com:8443", "http://api.example.com:8443/"),
    ("*.example.com", "http://api.example.com/"),
    ("http://*.example.com", "https://api.example.com/"),
    # a prefix escaped by what servers resolve: encoded dots, slashes, backslashes, ;-parameters
    ("https://api.example.com/v1/", "https://api.example.com/v1/%2e%2e/admin/keys"),
    ("https://api.example.com/v1/", "https://api.example.com/v1/%2E%2E/%2E%2E/internal"),
    ("https://api.example.com/v1/", "https://api.example.com/v1/.%2e/admin"),
    ("https://api.example.com/v1/", "https://api.example.com/v1/..;/admin"),
    ("https://api.example.com/v1/", "https://api.example.com/v1;x=1/../admin"),
    ("https://api.example.com/v1/", "https://api.example.com/v1/chat%2F..%2F..%2Fadmin"),
    ("https://api.example.com/v1/", "https://api.example.com/v1/chat%5C..%5Cadmin"),
    ("https://api.example.com/v1/", "https://api.example.com/v1/%252e%252e/admin"),
]

ADMITTED = [
    ("api.example.com", "https://api.example.com/v1/chat"),
    ("api.example.com:8443", "https://api.example.com:8443/"),
    ("*.example.com", "https://a.b.example.com/"),
    ("http://api.example.com", "http://api.example.com/anything"),
    ("http://api.example.com:8080", "http://api.example.com:8080/x"),
    ("http://*.example.com", "http://api.example.com/"),
    ("https://api.example.com/v1/", "https://api.example.com/v1/chat/completions"),
    ("https://api.example.com/v1/", "https://api.example.com/v1/files/a%20b.txt"),
    ("https://api.example.com/", "https://api.example.com/v1/%2e%2e/admin"),  # the whole host anyway
]


@pytest.mark.parametrize(("destination", "url"), NOT_ADMITTED)
def test_not_admitted(destination: str, url: str) -> None:
    target = parse_target(url)
    assert not isinstance(target, str), target
    assert not destination_allows(destination, target), f"{destination} admits {url} (path {target.path})"


@pytest.mark.parametrize(("destination", "url"), ADMITTED)
def test_admitted(destination: str, url: str) -> None:
    target = parse_target(url)
    assert not isinstance(target, str), target
    assert destination_allows(destination, target), f"{destination} refuses {url}"


AGENT = """
from bastion import agent

def main(input):
    out = {}
    for label, url in input.items():
        try:
            out[label] = agent.tools.call("fetch", url=url)["body"]
        except agent.ToolDenied as exc:
            out[label] = "denied: " + str(exc)
    return out
"""


def _respond(seen: Seen) -> Answer:
    """Serve the path as a normalising server would: percent-decoded, dot segments resolved."""
    path = posixpath.normpath(urllib.parse.unquote(seen.path.partition("?")[0]).split(";")[0])
    carried = any(v in (TOKEN, TWIN_TOKEN) for v in seen.headers.values())
    return Answer(200, [("Content-Type", "text/plain")], f"served {path} credential={carried}".encode())


def _apply(tenant: Tenant, token: str, destinations: list[str], egress: str) -> None:
    fetch = builtin_tool("fetch", "http.fetch", headers={"X-Api-Key": "{secret:api-key}"})
    fetch["spec"]["secrets"] = ["api-key"]
    with tenant.client("operator") as op:
        op.apply(
            raw(
                {
                    "apiVersion": "bastion/v1",
                    "kind": "Secret",
                    "metadata": {"name": "api-key"},
                    "spec": {
                        "stringData": {"token": token},
                        "usableBy": {"tools": ["fetch"]},
                        "destinations": destinations,
                    },
                },
                fetch,
                code_agent("walker", AGENT, tools=["fetch"]),
                grant_for("walker", "fetch", egress=[egress]),
            )
        )


def test_a_prefix_is_not_escaped_and_a_host_is_not_cleartext(tenant: Tenant, other_tenant: Tenant) -> None:
    with hostile_server(_respond) as api:
        urls = {
            "inside": f"{api.url}/v1/forecast",
            "encoded-dotdot": f"{api.url}/v1/%2e%2e/admin",
            "semicolon-dotdot": f"{api.url}/v1/..;/admin",
            "encoded-slash": f"{api.url}/v1/x%2f..%2f..%2fadmin",
        }
        # The twin: same names, its operator binds the key to the whole host over http.
        _apply(other_tenant, TWIN_TOKEN, [f"http://{api.host}"], api.host)
        _apply(tenant, TOKEN, [f"{api.url}/v1/"], api.host)
        with other_tenant.client() as client:
            twin = wait_finished(client, client.create_run("walker", urls)["id"])
        with tenant.client() as client:
            run = wait_finished(client, client.create_run("walker", urls)["id"])
        # A host-only destination, with the listener's port: https only, so http is refused.
        _apply(tenant, TOKEN, [api.host], api.host)
        with tenant.client() as client:
            cleartext = wait_finished(client, client.create_run("walker", {"http": f"{api.url}/v1/x"})["id"])
    assert twin["result"]["encoded-dotdot"] == "served /admin credential=True", "the twin's own rule holds"
    result = run["result"]
    assert result["inside"] == "served /v1/forecast credential=True", result
    for case in ("encoded-dotdot", "semicolon-dotdot", "encoded-slash"):
        assert result[case].startswith("denied: "), (case, result[case])
        assert "secret 'api-key' may not be sent to" in result[case], result[case]
    assert cleartext["result"]["http"].startswith("denied: "), cleartext["result"]
    assert not [s for s in api.seen if s.carries(TOKEN) and not s.path.startswith("/v1/forecast")]
