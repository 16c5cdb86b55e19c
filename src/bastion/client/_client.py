"""The Python client of Bastion's API (httpx). The CLI uses exactly this; so can you.

Every non-2xx answer is raised as the matching ``bastion.errors`` exception, rebuilt from the
server's problem document, so callers catch ``NotFound`` or ``InvalidManifest`` rather than
inspecting status codes.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import quote

import httpx

from bastion.api import KIND_PLURALS, kind_named
from bastion.errors import NotFound, ServerError, UserError, error_for_problem

if TYPE_CHECKING:
    from bastion.api import RawDocument


def plural_of(kind: str) -> str:
    """The URL plural of a kind given as ``Agent``, ``agents`` or ``agent``."""
    name = kind_named(kind)
    if name is None:
        raise NotFound(f"unknown kind {kind!r}", field="kind", hint="see `bastion explain` for the kinds")
    return KIND_PLURALS[name]


def _tls_context(url: str) -> ssl.SSLContext | bool:
    """The certificates to verify the server with. Over plain HTTP there is no TLS, and loading
    the CA bundle (what ``True`` does) would cost a CLI command a tenth of a second: the context
    given instead trusts no CA at all, so a TLS handshake, were one ever attempted, would fail."""
    if url.lower().startswith("http://"):
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    return True


FULL_RUN_ID = 36
"""The length of a full run id (a UUID); anything shorter is resolved as a prefix."""
CANDIDATES = 10
"""How many runs an ambiguous run id prefix lists."""


class BastionClient:
    """A session with one Bastion server, authenticated by one API key."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"User-Agent": "bastion-client/0.1"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=timeout,
            transport=transport,
            verify=_tls_context(self.url),
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise UserError(
                f"cannot reach the Bastion server at {self.url}: {exc}",
                field="url",
                hint="start it with `bastion up`, or point BASTION_URL at it",
            ) from None
        if response.is_success:
            return response.json()
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            raise error_for_problem(body, response.status_code)  # pyright: ignore[reportUnknownArgumentType]
        if response.status_code >= 500:
            raise ServerError(f"the server answered {response.status_code}")
        raise UserError(
            f"the server answered {response.status_code}: {response.text[:200]}", status=response.status_code
        )

    # --- resources ------------------------------------------------------------------------

    @staticmethod
    def _manifests(documents: Sequence[RawDocument]) -> dict[str, Any]:
        return {"documents": [d.body for d in documents], "sources": [d.source or "" for d in documents]}

    def apply(
        self, documents: Sequence[RawDocument], *, idempotency_key: str | None = None
    ) -> list[dict[str, Any]]:
        """Apply documents all-or-nothing; returns ``{action, resource}`` per document."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._request("POST", "/api/v1/apply", json=self._manifests(documents), headers=headers)[
            "items"
        ]

    def diff(self, documents: Sequence[RawDocument]) -> list[dict[str, Any]]:
        """Per document, what an apply would do and the JSON patch it would make."""
        return self._request("POST", "/api/v1/diff", json=self._manifests(documents))["items"]

    def get(self, kind: str, name: str, *, namespace: str = "default") -> dict[str, Any]:
        path = f"/api/v1/namespaces/{quote(namespace, safe='')}/{plural_of(kind)}/{quote(name, safe='')}"
        return self._request("GET", path)

    def list_page(
        self,
        kind: str,
        *,
        namespace: str | None = "default",
        selector: str | None = None,
        limit: int = 100,
        cont: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        plural = plural_of(kind)
        path = (
            f"/api/v1/namespaces/{quote(namespace, safe='')}/{plural}" if namespace else f"/api/v1/{plural}"
        )
        params: dict[str, Any] = {"limit": limit}
        if selector:
            params["labelSelector"] = selector
        if cont:
            params["continue"] = cont
        page = self._request("GET", path, params=params)
        return page["items"], page.get("continue")

    def list(
        self,
        kind: str,
        *,
        namespace: str | None = "default",
        selector: str | None = None,
        page_size: int = 200,
    ) -> Iterator[dict[str, Any]]:
        """Every matching resource, following continue tokens."""
        cont: str | None = None
        while True:
            items, cont = self.list_page(
                kind, namespace=namespace, selector=selector, limit=page_size, cont=cont
            )
            yield from items
            if not cont:
                return

    def delete(self, kind: str, name: str, *, namespace: str = "default") -> dict[str, Any]:
        path = f"/api/v1/namespaces/{quote(namespace, safe='')}/{plural_of(kind)}/{quote(name, safe='')}"
        return self._request("DELETE", path)

    def schema(self, kind: str) -> dict[str, Any]:
        return self._request("GET", f"/api/v1/schemas/{quote(kind, safe='')}")

    # --- tenancy and keys -----------------------------------------------------------------

    def whoami(self) -> dict[str, Any]:
        return self._request("GET", "/api/v1/whoami")

    def create_tenant(self, name: str) -> dict[str, Any]:
        return self._request("POST", "/api/v1/tenants", json={"name": name})

    def list_tenants(self) -> list[dict[str, Any]]:
        return self._request("GET", "/api/v1/tenants")["items"]

    def create_key(self, name: str, role: str, *, tenant: str | None = None) -> dict[str, Any]:
        path = f"/api/v1/tenants/{quote(tenant, safe='')}/keys" if tenant else "/api/v1/keys"
        return self._request("POST", path, json={"name": name, "role": role})

    def list_keys(self) -> list[dict[str, Any]]:
        return self._request("GET", "/api/v1/keys")["items"]

    def revoke_key(self, key_id: str) -> None:
        self._request("DELETE", f"/api/v1/keys/{quote(key_id, safe='')}")

    def create_namespace(self, name: str) -> dict[str, Any]:
        return self._request("POST", "/api/v1/namespaces", json={"name": name})

    def list_namespaces(self) -> list[dict[str, Any]]:
        return self._request("GET", "/api/v1/namespaces")["items"]

    def delete_namespace(self, name: str) -> None:
        self._request("DELETE", f"/api/v1/namespaces/{quote(name, safe='')}")

    def list_sandboxes(self) -> list[dict[str, Any]]:
        """Every live worker's pooled sandboxes (operators and admins)."""
        return self._request("GET", "/api/v1/sandboxes")["items"]

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/readyz")

    # --- runs -----------------------------------------------------------------------------

    def _run_path(self, run_id: str, namespace: str, suffix: str = "") -> str:
        return f"/api/v1/namespaces/{quote(namespace, safe='')}/runs/{quote(run_id, safe='')}{suffix}"

    def create_run(
        self, agent: str, input: Any = None, *, namespace: str = "default", idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Start a run; returns it (state Scheduled)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        path = f"/api/v1/namespaces/{quote(namespace, safe='')}/runs"
        return self._request("POST", path, json={"agent": agent, "input": input}, headers=headers)

    def get_run(self, run_id: str, *, namespace: str = "default") -> dict[str, Any]:
        return self._request("GET", self._run_path(run_id, namespace))

    def list_runs(
        self,
        *,
        namespace: str | None = "default",
        agent: str | None = None,
        state: str | None = None,
        limit: int = 50,
        id_prefix: str | None = None,
    ) -> list[dict[str, Any]]:
        path = f"/api/v1/namespaces/{quote(namespace, safe='')}/runs" if namespace else "/api/v1/runs"
        params: dict[str, Any] = {"limit": limit}
        if agent:
            params["agent"] = agent
        if state:
            params["state"] = state
        if id_prefix is not None:
            params["idPrefix"] = id_prefix
        return self._request("GET", path, params=params)["items"]

    def resolve_run(self, run_id: str, *, namespace: str = "default") -> str:
        """The full id of the run ``run_id`` names in the namespace: a full id as it is, else the
        one run whose id starts with it (like git's short hashes; the server does the matching,
        among the caller's tenant's runs only). No match is NotFound; several are a UserError
        that lists them."""
        if len(run_id) == FULL_RUN_ID:
            return run_id
        found = self.list_runs(namespace=namespace, id_prefix=run_id, limit=CANDIDATES + 1)
        if not found:
            raise NotFound(
                f"no run in namespace {namespace!r} has an id starting with {run_id!r}",
                field="run",
                hint="list runs with `bastion runs` (or pass -n for another namespace)",
            )
        if len(found) == 1:
            return str(found[0]["id"])
        listed = ", ".join(f"{r['id']} ({r['agent']}, {r['state']})" for r in found[:CANDIDATES])
        more = " and more" if len(found) > CANDIDATES else ""
        raise UserError(
            f"run id {run_id!r} is ambiguous in namespace {namespace!r}: it starts {listed}{more}",
            field="run",
            hint="give more characters of the id",
        )

    def fork_run(self, run_id: str, seq: int, *, namespace: str = "default") -> dict[str, Any]:
        """A new run that replays this one's journal up to ``seq`` and continues live."""
        return self._request("POST", self._run_path(run_id, namespace, "/fork"), json={"seq": seq})

    def cancel_run(self, run_id: str, *, namespace: str = "default") -> dict[str, Any]:
        return self._request("POST", self._run_path(run_id, namespace, "/cancel"))

    def list_approvals(
        self, *, state: str = "pending", namespace: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Approvals in ``state`` (pending, approved, denied, expired or all), oldest first."""
        params: dict[str, Any] = {"state": state, "limit": limit}
        if namespace:
            params["namespace"] = namespace
        return self._request("GET", "/api/v1/approvals", params=params)["items"]

    def get_approval(self, approval_id: str) -> dict[str, Any]:
        return self._request("GET", f"/api/v1/approvals/{quote(approval_id, safe='')}")

    def decide_approval(
        self, approval_id: str, *, approve: bool, reason: str | None = None
    ) -> dict[str, Any]:
        """Approve or deny a waiting call; its run resumes."""
        verb = "approve" if approve else "deny"
        path = f"/api/v1/approvals/{quote(approval_id, safe='')}/{verb}"
        return self._request("POST", path, json={"reason": reason})

    def what_if(
        self, run_id: str, documents: Sequence[RawDocument], *, namespace: str = "default"
    ) -> dict[str, Any]:
        """The decisions of a finished run that other Policies/ToolGrants would change (nothing runs)."""
        return self._request(
            "POST", self._run_path(run_id, namespace, "/what-if"), json=self._manifests(documents)
        )

    def trust(self, agent: str, *, namespace: str = "default") -> dict[str, Any]:
        """The agent's earned tier, whether it is revoked, and the journal of every change."""
        return self._request("GET", self._trust_path(agent, namespace))

    def change_trust(
        self, agent: str, action: str, *, reason: str, tier: str | None = None, namespace: str = "default"
    ) -> dict[str, Any]:
        """promote, demote, revoke or restore an agent (role operator); journaled with the reason."""
        body: dict[str, Any] = {"action": action, "reason": reason}
        if tier is not None:
            body["tier"] = tier
        return self._request("POST", self._trust_path(agent, namespace), json=body)

    @staticmethod
    def _trust_path(agent: str, namespace: str) -> str:
        return f"/api/v1/namespaces/{quote(namespace, safe='')}/agents/{quote(agent, safe='')}/trust"

    def journal(self, run_id: str, *, namespace: str = "default") -> list[dict[str, Any]]:
        return self._request("GET", self._run_path(run_id, namespace, "/journal"))["items"]

    def verify_run(self, run_id: str, *, namespace: str = "default") -> dict[str, Any]:
        return self._request("GET", self._run_path(run_id, namespace, "/verify"))

    def export_record(self, run_id: str, *, namespace: str = "default") -> dict[str, Any]:
        """The run's signed ExecutionRecord (verify it offline with ``bastion.observe.record``)."""
        return self._request("GET", self._run_path(run_id, namespace, "/record"))

    def record_key(self) -> dict[str, Any]:
        """The tenant's record-signing public key: ``{alg, keyId, publicKey}``."""
        return self._request("GET", "/api/v1/record-key")

    def verify_all(self) -> dict[str, Any]:
        return self._request("GET", "/api/v1/audit/verify")

    def events(
        self, run_id: str, *, namespace: str = "default", follow: bool = True, after: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """The run's events (Server-Sent Events), resuming after event ``after``; ends when the run does.

        Event ids number each run's events 1, 2, 3, ... (an event's ``id`` is where to resume)."""
        params: dict[str, Any] = {"follow": "true" if follow else "false"}
        if after is not None:
            params["after"] = after
        try:
            with self._http.stream(
                "GET", self._run_path(run_id, namespace, "/events"), params=params, timeout=None
            ) as response:
                if not response.is_success:
                    response.read()
                    body: dict[str, Any] = (
                        response.json() if response.headers.get("content-type", "").endswith("json") else {}
                    )
                    raise error_for_problem(body, response.status_code)
                event_type, data = "", ""
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        event_type = line[6:].strip()
                    elif line.startswith("data:"):
                        data += line[5:].strip()
                    elif not line:
                        if event_type == "end":
                            return
                        if data:
                            yield json.loads(data)
                        event_type, data = "", ""
        except httpx.TransportError as exc:
            raise UserError(
                f"lost the event stream from {self.url}: {exc}",
                hint="retry; events resume where they stopped",
            ) from None
