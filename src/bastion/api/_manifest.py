"""Manifests: YAML or JSON documents in, validated resources out, every fault placed precisely.

A fault names the source (file and document number), the field path, what was wrong and the fix.
Nothing here does I/O: callers hand in text and a name for where it came from.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from bastion.errors import InvalidManifest, Problem

from ._kinds import KINDS, Resource
from ._meta import API_VERSION, DEFAULT_NAMESPACE
from ._schema import field_names_at

MAX_EXPANDED_NODES = 200_000
"""YAML aliases can make a small text expand into a huge tree; refuse past this many nodes."""


@dataclass(frozen=True, kw_only=True)
class RawDocument:
    """One manifest document before validation, with where it came from."""

    body: Any
    source: str | None = None


def _loader() -> type[yaml.SafeLoader]:
    return cast(type[yaml.SafeLoader], getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _count_nodes(value: Any, budget: int) -> int:
    """Walk the loaded tree (aliases expanded) and stop as soon as it exceeds ``budget``."""
    stack = [value]
    seen = 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > budget:
            return seen
        if isinstance(item, dict):
            mapping = cast(dict[Any, Any], item)
            stack.extend(mapping.keys())
            stack.extend(mapping.values())
        elif isinstance(item, list):
            stack.extend(cast(list[Any], item))
    return seen


def parse_yaml(text: str, source: str) -> list[RawDocument]:
    """Split a YAML (or JSON) stream into documents; empty documents are skipped.

    Raises:
        InvalidManifest: the text is not YAML, or expands past ``MAX_EXPANDED_NODES``.
    """
    docs: list[RawDocument] = []
    try:
        for number, body in enumerate(yaml.load_all(text, Loader=_loader()), start=1):
            if body is None:
                continue
            where = f"{source}, document {number}"
            if _count_nodes(body, MAX_EXPANDED_NODES) > MAX_EXPANDED_NODES:
                raise InvalidManifest(
                    f"{where} expands to more than {MAX_EXPANDED_NODES} nodes",
                    hint="YAML anchors and aliases are expanded; write the document out plainly",
                )
            docs.append(RawDocument(body=body, source=where))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise InvalidManifest(
            f"{source} is not valid YAML{at}: {reason}",
            hint="check the indentation and quoting around that line",
            problems=[Problem(message=f"not valid YAML{at}: {reason}", source=source)],
        ) from None
    return docs


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(choices)}"


_UNION_TAGS = frozenset({"builtin", "http", "mcp", "python"})


def _error_problem(kind: str, err: ErrorDetails, index: int, source: str | None) -> Problem:
    loc = [str(p) for p in err["loc"]]
    # Discriminated unions put the tag into the location; users never wrote it.
    path = [p for p in loc if p not in _UNION_TAGS]
    field = ".".join(path) or None
    kind_of_error = err["type"]
    message = err["msg"].removeprefix("Value error, ")
    hint: str | None = None
    if kind_of_error == "extra_forbidden":
        allowed = field_names_at(kind, path[:-1])
        message = f"unknown field {path[-1]!r}"
        hint = f"remove it; {_suggest(path[-1], allowed)}" if allowed else "remove it"
    elif kind_of_error == "missing":
        message = "required field is missing"
        hint = f"add {path[-1]!r}" if path else None
    elif kind_of_error == "literal_error":
        ctx = err.get("ctx") or {}
        hint = f"use one of {ctx.get('expected')}"
    elif kind_of_error.endswith(("_type", "_parsing")):
        hint = f"write a value of the right type ({kind_of_error.split('_')[0]})"
    elif kind_of_error in {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}:
        hint = f"use a number {message.removeprefix('Input should be ')}"
    elif kind_of_error == "string_pattern_mismatch":
        hint = f"match the pattern {(err.get('ctx') or {}).get('pattern')}"
    elif kind_of_error == "union_tag_invalid":
        hint = "set 'type' to one of: builtin, http, mcp, python"
    return Problem(message=message, field=field, hint=hint, document=index, source=source)


def validate_document(body: Any, index: int = 0, source: str | None = None) -> Resource:
    """One document in, one typed resource out.

    Raises:
        InvalidManifest: naming the document, each bad field, what was wrong and the fix.
    """

    def fail(message: str, *, field: str | None = None, hint: str | None = None) -> InvalidManifest:
        problem = Problem(message=message, field=field, hint=hint, document=index, source=source)
        return InvalidManifest(
            f"{source or f'document {index + 1}'}: {message}", field=field, hint=hint, problems=[problem]
        )

    if not isinstance(body, dict):
        raise fail(
            f"a manifest document must be a mapping, not {type(body).__name__}",
            hint="start the document with 'apiVersion: bastion/v1' and 'kind: ...'",
        )
    doc = cast(dict[str, Any], body)
    api_version = doc.get("apiVersion")
    if api_version != API_VERSION:
        raise fail(
            f"unknown apiVersion {api_version!r}" if api_version is not None else "apiVersion is missing",
            field="apiVersion",
            hint=f"use 'apiVersion: {API_VERSION}'",
        )
    kind = doc.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise fail(
            f"unknown kind {kind!r}" if kind is not None else "kind is missing",
            field="kind",
            hint=_suggest(str(kind), list(KINDS))
            if isinstance(kind, str)
            else f"use one of {', '.join(KINDS)}",
        )
    try:
        return KINDS[kind].model_validate(doc, by_alias=True)
    except ValidationError as exc:
        problems = [_error_problem(kind, e, index, source) for e in exc.errors(include_url=False)]
        where = source or f"document {index + 1}"
        first = problems[0]
        raise InvalidManifest(
            f"{where}: {kind} {_doc_name(doc)!s}is invalid ({len(problems)} problem{'s' if len(problems) > 1 else ''})",
            field=first.field,
            hint=first.hint,
            problems=problems,
        ) from None


def _doc_name(doc: dict[str, Any]) -> str:
    meta = doc.get("metadata")
    name = cast(dict[str, Any], meta).get("name") if isinstance(meta, dict) else None
    return f"{name!r} " if isinstance(name, str) else ""


def validate_documents(docs: Sequence[RawDocument]) -> list[Resource]:
    """Validate every document; report all faults of all documents at once, or none.

    Two documents naming the same kind, namespace and name are a fault too: an apply is one
    change, and which of the two should win would be a guess.
    """
    problems: list[Problem] = []
    resources: list[Resource] = []
    seen: dict[tuple[str, str, str], int] = {}
    for index, doc in enumerate(docs):
        try:
            resource = validate_document(doc.body, index, doc.source)
        except InvalidManifest as exc:
            problems.extend(exc.problems)
            continue
        key = (resource.kind_name, resource.metadata.namespace or DEFAULT_NAMESPACE, resource.metadata.name)
        if key in seen:
            first = docs[seen[key]].source or f"document {seen[key] + 1}"
            problems.append(
                Problem(
                    message=f"{key[0]} {key[2]!r} in namespace {key[1]!r} is declared twice (first in {first})",
                    field="metadata.name",
                    hint="rename one of them or remove the duplicate",
                    document=index,
                    source=doc.source,
                )
            )
            continue
        seen[key] = index
        resources.append(resource)
    if problems:
        count = len(problems)
        raise InvalidManifest(
            f"{count} problem{'s' if count > 1 else ''} in the manifest; nothing was applied",
            field=problems[0].field,
            hint=problems[0].hint,
            problems=problems,
        )
    return resources
