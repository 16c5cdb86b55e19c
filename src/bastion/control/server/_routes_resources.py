"""Resource routes: apply and diff of manifests, and get/list/put/delete per kind."""

from __future__ import annotations

from typing import Annotated, Any, cast

from fastapi import APIRouter, Path, Query, Request, Response
from sqlalchemy import Connection

from bastion.api import (
    KINDS,
    NAME_HINT,
    RawDocument,
    Resource,
    kind_schema,
    parse_selector,
    parse_yaml,
    resolve_kind,
    validate_document,
    validate_documents,
)
from bastion.control._resources import public_manifest
from bastion.errors import InvalidManifest, NotFound, UnsupportedMediaType, UserError

from ._deps import BastionDep, IdempotencyKey, PrincipalDep, require, run_idempotent
from ._inputs import check_value

router = APIRouter(prefix="/api/v1")

NamePath = Annotated[str, Path(description=f"The resource name: {NAME_HINT}.", max_length=253)]
NamespacePath = Annotated[str, Path(description="The namespace inside the caller's tenant.", max_length=253)]

Selector = Annotated[
    str | None,
    Query(alias="labelSelector", max_length=4096, description="e.g. 'app=web,tier in (a,b),!legacy'"),
]
Limit = Annotated[int, Query(ge=1, le=10_000, description="Page size (capped by the server).")]
Continue = Annotated[
    str | None, Query(alias="continue", max_length=1024, description="Token from the previous page.")
]

_MANIFESTS_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["documents"],
                    "properties": {
                        "documents": {"type": "array", "items": {"type": "object"}, "maxItems": 1000},
                        "sources": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "Where each document came from, echoed in errors (e.g. 'agents.yaml, document 2').",
                        },
                    },
                    "additionalProperties": False,
                }
            },
            "application/yaml": {
                "schema": {"type": "string", "description": "A multi-document YAML stream."}
            },
        },
    }
}


async def read_documents(request: Request) -> list[RawDocument]:
    """The manifests of an apply or diff body, JSON (``{documents: [...]}``) or YAML."""
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    body = await request.body()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError("the request body is not UTF-8", hint="send UTF-8 text") from None
    if content_type in {"application/yaml", "application/x-yaml", "text/yaml"}:
        docs = parse_yaml(text, "request body")
        for index, doc in enumerate(docs):  # JSON bodies were checked by InputGuard
            check_value(doc.body, "request body", f"documents[{index}]")
        return docs
    if content_type != "application/json":
        raise UnsupportedMediaType(
            f"content type {content_type!r} is not accepted here",
            field="Content-Type",
            hint='send application/json ({"documents": [...]}) or application/yaml',
        )
    docs = parse_yaml(text, "request body") if text.strip() else []
    payload: Any = docs[0].body if len(docs) == 1 else None
    if not isinstance(payload, dict) or not isinstance(cast(dict[str, Any], payload).get("documents"), list):
        raise InvalidManifest(
            "the body must be a JSON object with a 'documents' list",
            field="documents",
            hint='send {"documents": [{"apiVersion": "bastion/v1", "kind": "Agent", ...}]}',
        )
    data = cast(dict[str, Any], payload)
    extra = set(data) - {"documents", "sources"}
    if extra:
        raise InvalidManifest(f"unknown field {sorted(extra)[0]!r}", field=sorted(extra)[0], hint="remove it")
    documents = cast(list[Any], data["documents"])
    sources = data.get("sources")
    names: list[Any] = cast(list[Any], sources) if isinstance(sources, list) else []
    if len(documents) > 1000:
        raise UserError("more than 1000 documents in one request", field="documents", hint="split the apply")
    return [
        RawDocument(body=doc, source=names[i] if i < len(names) and isinstance(names[i], str) else None)
        for i, doc in enumerate(documents)
    ]


def validated_resources(docs: list[RawDocument]) -> list[Resource]:
    if not docs:
        raise InvalidManifest(
            "the request holds no documents", field="documents", hint="send at least one manifest"
        )
    return validate_documents(docs)


@router.post(
    "/apply", tags=["resources"], summary="Apply manifests, all or nothing", openapi_extra=_MANIFESTS_BODY
)
async def apply(
    request: Request, bastion: BastionDep, principal: PrincipalDep, idempotency_key: IdempotencyKey = None
) -> Response:
    """Create or update every document in one transaction; an invalid document applies nothing."""
    resources = validated_resources(await read_documents(request))

    def operation(conn: Connection) -> tuple[int, dict[str, Any]]:
        applied = bastion.resources.apply(conn, principal, resources)
        items = [{"action": a.action, "resource": public_manifest(a.row)} for a in applied]
        return 200, {"items": items}

    def authorize(conn: Connection) -> None:
        bastion.resources.authorize(conn, principal, resources)

    return await run_idempotent(request, bastion, principal, idempotency_key, operation, authorize=authorize)


@router.post("/diff", tags=["resources"], summary="What an apply would change", openapi_extra=_MANIFESTS_BODY)
async def diff(request: Request, bastion: BastionDep, principal: PrincipalDep) -> dict[str, Any]:
    """A dry-run apply: per document, the action and the JSON patch (RFC 6902) it would make."""
    resources = validated_resources(await read_documents(request))
    bastion.resources.check_writable(principal, resources)
    with bastion.store.read() as conn:
        plans = bastion.resources.plan(conn, principal, resources)
    return {
        "items": [
            {"kind": p.kind, "namespace": p.namespace, "name": p.name, "action": p.action, "patch": p.patch}
            for p in plans
        ]
    }


@router.get("/schemas/{kind}", tags=["resources"], summary="JSON Schema of a kind")
def schema(kind: Annotated[str, Path(max_length=64)], principal: PrincipalDep) -> dict[str, Any]:
    cls = _kind(kind)
    return kind_schema(cls.kind_name)


def _kind(text: str) -> type[Resource]:
    cls = resolve_kind(text)
    if cls is None:
        raise NotFound(f"unknown kind {text!r}", field="kind", hint=f"use one of {', '.join(KINDS)}")
    return cls


def _add_kind_routes(cls: type[Resource]) -> None:
    kind, plural = cls.kind_name, cls.plural
    item = f"/namespaces/{{namespace}}/{plural}/{{name}}"

    def list_page(
        bastion: BastionDep,
        principal: PrincipalDep,
        namespace: str | None,
        label_selector: str | None,
        limit: int,
        cont: str | None,
    ) -> dict[str, Any]:
        selector = parse_selector(label_selector or "")
        limit = min(limit, bastion.settings.max_page_size)
        with bastion.store.read() as conn:
            page = bastion.resources.list(
                conn, principal, kind, namespace, selector, limit=limit, cursor=cont
            )
        return {"items": [public_manifest(r) for r in page.items], "continue": page.next_cursor}

    @router.get(
        f"/namespaces/{{namespace}}/{plural}",
        tags=[plural],
        summary=f"List {kind} resources in a namespace",
        name=f"list_{plural}",
    )
    def list_in_namespace(
        bastion: BastionDep,
        principal: PrincipalDep,
        namespace: NamespacePath,
        label_selector: Selector = None,
        limit: Limit = 100,
        cont: Continue = None,
    ) -> dict[str, Any]:
        return list_page(bastion, principal, namespace, label_selector, limit, cont)

    @router.get(
        f"/{plural}",
        tags=[plural],
        summary=f"List {kind} resources in every namespace",
        name=f"list_all_{plural}",
    )
    def list_everywhere(
        bastion: BastionDep,
        principal: PrincipalDep,
        label_selector: Selector = None,
        limit: Limit = 100,
        cont: Continue = None,
    ) -> dict[str, Any]:
        return list_page(bastion, principal, None, label_selector, limit, cont)

    @router.get(item, tags=[plural], summary=f"Get one {kind}", name=f"get_{plural}")
    def get(
        bastion: BastionDep, principal: PrincipalDep, namespace: NamespacePath, name: NamePath
    ) -> dict[str, Any]:
        with bastion.store.read() as conn:
            return public_manifest(bastion.resources.get(conn, principal, kind, namespace, name))

    @router.put(item, tags=[plural], summary=f"Create or update one {kind}", name=f"put_{plural}")
    def put(
        bastion: BastionDep,
        principal: PrincipalDep,
        namespace: NamespacePath,
        name: NamePath,
        body: dict[str, Any],
    ) -> dict[str, Any]:
        resource = validate_document(body)
        if resource.kind_name != kind:
            raise InvalidManifest(
                f"the body is a {resource.kind_name}, the path names {kind}",
                field="kind",
                hint=f"PUT it to /{resource.plural}",
            )
        if (resource.metadata.namespace, resource.metadata.name) != (namespace, name):
            raise InvalidManifest(
                "metadata.namespace and metadata.name must match the path",
                field="metadata.name",
                hint=f"send metadata.namespace={namespace!r} and metadata.name={name!r}",
            )
        with bastion.store.write() as conn:
            applied = bastion.resources.apply(conn, principal, [resource])[0]
        return {"action": applied.action, "resource": public_manifest(applied.row)}

    @router.delete(item, tags=[plural], summary=f"Delete one {kind}", name=f"delete_{plural}")
    def delete(
        bastion: BastionDep, principal: PrincipalDep, namespace: NamespacePath, name: NamePath
    ) -> dict[str, Any]:
        require(principal, cls.write_role, f"delete {kind} resources")
        with bastion.store.write() as conn:
            row = bastion.resources.delete(conn, principal, kind, namespace, name)
        return {"deleted": {"kind": kind, "namespace": namespace, "name": name, "uid": row.uid}}


for _cls in KINDS.values():
    _add_kind_routes(_cls)
