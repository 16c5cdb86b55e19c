"""Fields that operators' grants trust, and so only operators may set.

A ToolGrant names its subjects by agent name, label or tier. An Agent is written by developers,
so without this check a developer could give their agent ``tier: T4`` or any label and satisfy
every grant an operator wrote for T4 or for that label. Two fields are therefore operator-owned:

* ``spec.tier`` of an Agent above ``DEFAULT_TIER`` (T0, the tier an Agent gets when it names
  none). A developer may keep the tier an operator already set, or lower it; raising it needs
  the operator role. Automatic promotion (``Policy.spec.trust``) is not affected: it is recorded
  by the trust service, not written into the manifest.
* labels whose key is under ``OPERATOR_LABEL_DOMAIN`` (``bastion.io/team``,
  ``grants.bastion.io/pci``, …), on any kind. A developer may carry them unchanged, but may not
  add, change or remove one. Grants that should not be satisfiable by a developer's own labels
  name such keys in ``subjects.labels``; any other label key is developer-owned.
* ``spec.trusted`` of a Tool: a trusted tool's results carry no ``untrusted`` provenance label,
  so a developer who could declare one could launder any value an injected document holds into a
  consequential call. A developer may clear it; while it is set, the whole spec of the Tool is the
  operator's (re-pointing a trusted tool's URL at a server of one's own would launder as well).
* ``spec.effect`` of a Tool, once set: it makes the tool *consequential* for Policy rules, so a
  developer may add one but not remove or change one an operator's rules rely on.
* ``spec.sandbox: process`` of an Agent. The ``process`` backend isolates little (the host's
  network and filesystem view): choosing it for an agent is the operator's decision, not the
  developer's whose code it runs. A developer may keep it where an operator set it.

A developer's attempt is a 403 problem+json naming the field and the fix.
"""

from __future__ import annotations

from bastion.api import TIERS, Agent, Resource, Tool, ToolSpec
from bastion.errors import Forbidden, Problem

from .store import Principal, ResourceRow

DEFAULT_TIER = "T0"
OPERATOR_ROLE = "operator"
OPERATOR_LABEL_DOMAIN = "bastion.io"
UNISOLATED_BACKEND = "process"


def operator_owned_label(key: str) -> bool:
    """``bastion.io/x`` and ``sub.bastion.io/x`` are operator-owned; ``x`` and ``example.com/x`` are not."""
    prefix, slash, _ = key.rpartition("/")
    if not slash:
        return False
    prefix = prefix.lower()
    return prefix == OPERATOR_LABEL_DOMAIN or prefix.endswith("." + OPERATOR_LABEL_DOMAIN)


def _tier_index(tier: object) -> int:
    return TIERS.index(tier) if tier in TIERS else 0  # pyright: ignore[reportArgumentType]


def check_privileged_fields(
    principal: Principal, index: int, resource: Resource, existing: ResourceRow | None
) -> None:
    """Refuse a non-operator's write that sets an operator-owned field to a new value."""
    if principal.at_least(OPERATOR_ROLE):
        return
    meta = resource.metadata
    where = f"{resource.kind_name} {meta.namespace}/{meta.name}"
    stored = existing.labels if existing is not None else {}
    keys = {k for k in (*meta.labels, *stored) if operator_owned_label(k)}
    for key in sorted(keys):
        if meta.labels.get(key) != stored.get(key):
            raise Forbidden(
                f"{where}: label {key!r} is operator-owned; role {principal.role!r} may not add, change or remove it",
                field=f"metadata.labels.{key}",
                hint=f"ask an operator to set it, or use a label key outside {OPERATOR_LABEL_DOMAIN}/",
                problems=[
                    Problem(message="operator-owned label", field=f"metadata.labels.{key}", document=index)
                ],
            )
    if isinstance(resource, Tool):
        _check_tool(principal, index, resource, existing, where)
    if isinstance(resource, Agent):
        sandbox = resource.spec.sandbox
        was = existing.spec.get("sandbox") if existing is not None else None
        if sandbox == UNISOLATED_BACKEND and was != UNISOLATED_BACKEND:
            raise Forbidden(
                f"{where}: role {principal.role!r} may not choose sandbox {sandbox!r}, "
                "which shares the host's network and filesystem view",
                field="spec.sandbox",
                hint="leave spec.sandbox out (the worker's isolating default) or choose bwrap or gvisor; "
                "an operator may choose 'process' for development",
                problems=[
                    Problem(
                        message="sandbox 'process' needs role 'operator'",
                        field="spec.sandbox",
                        document=index,
                    )
                ],
            )
        tier = resource.spec.tier
        current = existing.spec.get("tier", DEFAULT_TIER) if existing is not None else DEFAULT_TIER
        if _tier_index(tier) > max(_tier_index(DEFAULT_TIER), _tier_index(current)):
            raise Forbidden(
                f"{where}: role {principal.role!r} may not set tier {tier} (above the default {DEFAULT_TIER}"
                + (f"; it is {current} now)" if existing is not None else ")"),
                field="spec.tier",
                hint=f"leave spec.tier at {current} and ask an operator to raise it "
                "(`bastion trust promote`, or an operator's apply)",
                problems=[Problem(message="tier needs role 'operator'", field="spec.tier", document=index)],
            )


def _check_tool(
    principal: Principal, index: int, tool: Tool, existing: ResourceRow | None, where: str
) -> None:
    was_trusted = bool(existing.spec.get("trusted", False)) if existing is not None else False
    if tool.spec.trusted and not was_trusted:
        raise Forbidden(
            f"{where}: role {principal.role!r} may not declare the tool trusted: a trusted tool's "
            "results carry no 'untrusted' provenance label",
            field="spec.trusted",
            hint="leave spec.trusted out (false) and ask an operator to declare the tool trusted",
            problems=[Problem(message="trusted needs role 'operator'", field="spec.trusted", document=index)],
        )
    if was_trusted and tool.spec.trusted and existing is not None:
        try:
            unchanged = ToolSpec.model_validate(existing.spec) == tool.spec
        except ValueError:  # a stored spec this release no longer reads: a change all the same
            unchanged = False
        if not unchanged:
            raise Forbidden(
                f"{where}: the tool is declared trusted, so its spec is operator-owned; role "
                f"{principal.role!r} may not change it",
                field="spec",
                hint="ask an operator to change it, or set spec.trusted: false in the same write",
                problems=[
                    Problem(
                        message="a trusted tool's spec needs role 'operator'", field="spec", document=index
                    )
                ],
            )
    was_effect = existing.spec.get("effect") if existing is not None else None
    if was_effect is not None and tool.spec.effect != was_effect:
        raise Forbidden(
            f"{where}: role {principal.role!r} may not change the tool's effect {was_effect!r} "
            f"to {tool.spec.effect!r}: Policy rules for consequential tools rely on it",
            field="spec.effect",
            hint=f"keep spec.effect: {was_effect} and ask an operator to change it",
            problems=[
                Problem(message="changing effect needs role 'operator'", field="spec.effect", document=index)
            ],
        )
