"""JSON Schema per kind, and walking it by a field path (for ``explain`` and error hints)."""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any, cast

PACKAGED = Path(__file__).with_name("kinds.schema.json")
"""Every kind's schema as ``kind_schema`` makes it, written by ``python -m bastion.api._schema``:
``bastion explain`` reads this, and so does not import the models (a test keeps it current)."""
MODEL_SOURCES = ("_kinds.py", "_meta.py", "_names.py")
"""The modules the schemas are made from: the packaged file names their digest."""


@cache
def kind_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of one kind's manifest, camelCase, as editors and ``explain`` use it."""
    from ._kinds import KINDS

    schema = KINDS[kind].model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def _models_digest() -> str:
    digest = hashlib.sha256()
    for name in MODEL_SOURCES:
        digest.update(Path(__file__).with_name(name).read_bytes())
    return digest.hexdigest()


@cache
def _packaged(path: Path = PACKAGED) -> dict[str, Any] | None:
    try:
        document: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict):
        return None
    fields = cast(dict[str, Any], document)
    if fields.get("modelsDigest") != _models_digest():
        return None  # written from other models: not to be trusted
    return cast(dict[str, Any], fields["kinds"])


def packaged_schema(kind: str) -> dict[str, Any]:
    """``kind_schema(kind)``, read from the packaged file without importing the models when the
    file was written from these models' sources (else made from the models)."""
    packaged = _packaged()
    return cast(dict[str, Any], packaged[kind]) if packaged is not None else kind_schema(kind)


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """Follow ``$ref`` and peel single-branch wrappers (``anyOf`` with null)."""
    while True:
        if "$ref" in node:
            name = str(node["$ref"]).rsplit("/", 1)[-1]
            node = root.get("$defs", {}).get(name, {})
            continue
        branches = [b for b in node.get("anyOf", []) if b.get("type") != "null"]
        if len(branches) == 1:
            merged = {k: v for k, v in node.items() if k != "anyOf"}
            node = {**branches[0], **merged}
            continue
        return node


def schema_at(kind: str, path: list[str]) -> dict[str, Any] | None:
    """The schema node at a field path like ``["spec", "limits"]``, or None if there is none.

    List indexes and map keys in the path step into ``items`` and ``additionalProperties``.
    """
    return walk_schema(kind_schema(kind), path)


def walk_schema(root: dict[str, Any], path: list[str]) -> dict[str, Any] | None:
    """The node of the schema ``root`` at a field path (see ``schema_at``), or None."""
    node = _resolve(root, root)
    for step in path:
        props = node.get("properties", {})
        if step in props:
            node = _resolve(props[step], root)
        elif step.isdigit() and "items" in node:
            node = _resolve(node["items"], root)
        elif isinstance(node.get("additionalProperties"), dict):
            node = _resolve(node["additionalProperties"], root)
        elif "oneOf" in node or "anyOf" in node:
            for branch in node.get("oneOf", node.get("anyOf", [])):
                candidate = _resolve(branch, root)
                if step in candidate.get("properties", {}):
                    node = _resolve(candidate["properties"][step], root)
                    break
            else:
                return None
        else:
            return None
    return node


def field_names_at(kind: str, path: list[str]) -> list[str]:
    """The field names a mapping at ``path`` accepts (all branches of a union)."""
    node = schema_at(kind, path)
    if node is None:
        return []
    names = list(node.get("properties", {}))
    root = kind_schema(kind)
    for branch in node.get("oneOf", node.get("anyOf", [])):
        names.extend(n for n in _resolve(branch, root).get("properties", {}) if n not in names)
    return names


def write_packaged() -> None:
    """Write ``kinds.schema.json`` from the models (after changing them)."""
    from ._names import KIND_PLURALS

    document = {
        "modelsDigest": _models_digest(),
        "kinds": {kind: kind_schema(kind) for kind in KIND_PLURALS},
    }
    PACKAGED.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write_packaged()
