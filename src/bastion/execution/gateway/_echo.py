"""Responses to calls that carried a secret, checked for that secret (invariant 2, SECURITY.md).

Redaction alone loses to a hostile tool that echoes its credential back in a form the redactor
does not list. So the response to every call into which the gateway injected a secret (a tool's
header, a provider's API key) is searched for the secrets it carried under the transform family
of ``bastion.secrets.find_echo``; a match is a refusal, journaled as a denial with an incident
(``secret/<name>/echo``), and the agent gets nothing of the response. Responses to calls that
carried no secret are not searched and not redacted on their way back: whether they are changed
must not depend on whether bytes the agent wrote itself equal a secret (the redactor as an
oracle). What is stored is scrubbed regardless (the session's redactor).

Each secret keeps the joined text of the last responses to calls that carried it and were
answered (``HISTORY`` characters), searched in front of the next one, so a secret split across results is refused when the piece
that completes it arrives.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
from collections.abc import Mapping
from typing import Any, cast

from bastion.policy import Decision
from bastion.secrets import find_echo

HISTORY = 16 * 1024
"""Characters of earlier responses kept per secret."""


class EchoGuard:
    """One session's check of responses to secret-carrying calls."""

    def __init__(self) -> None:
        self._history: dict[str, str] = {}

    def check(self, tool: str, carried: Mapping[str, str], value: Any) -> dict[str, Any] | None:
        """An incident record (a ``policy_denied`` error) if ``value`` echoes one of ``carried``
        (label -> secret value), else None."""
        if not carried:
            return None
        texts: list[str] = []
        blobs: list[bytes] = []
        _parts(value, texts, blobs)
        earlier = [self._history[label] for label in carried if label in self._history]
        echo = find_echo(carried, [*earlier, *texts], blobs)
        if echo is None:
            # Only what the agent was given counts towards a secret split across results.
            current = "\n".join(texts)
            for label in carried:
                self._history[label] = (self._history.get(label, "") + "\n" + current)[-HISTORY:]
            return None
        name = echo.secret.partition("/")[0]
        reason = (
            f"the response of {tool!r} carried secret {name!r} back ({echo.form}); it was withheld "
            "and recorded as an incident: a destination that echoes its credential is hostile or broken"
        )
        if not echo.verified:  # fail closed: what could not be searched is not handed over
            reason = (
                f"the response of {tool!r} to a call that carried secret {name!r} could not be searched "
                f"for it within the echo check's bounds ({echo.form}); it was withheld and recorded as "
                "an incident: ask the tool for a smaller or uncompressed response"
            )
        return {
            "type": "policy_denied",
            "tool": tool,
            "reasons": [reason],
            "rule_ids": [f"secret/{name}/echo"],
            "incident": {"kind": "secret_echo", "secret": name, "form": echo.form},
        }


def as_denial(decision: Decision, error: dict[str, Any]) -> Decision:
    """The call's decision once executing it ended in a refusal (a Secret's destination, an
    echo): a deny carrying the refusal's reasons and rules, so the journal records a denial."""
    if error.get("type") != "policy_denied":
        return decision
    reasons = tuple(str(r) for r in cast(list[Any], error.get("reasons", [])))
    rule_ids = tuple(str(r) for r in cast(list[Any], error.get("rule_ids", [])))
    return dataclasses.replace(
        decision,
        effect="deny",
        reasons=(*decision.reasons, *reasons),
        rule_ids=(*decision.rule_ids, *rule_ids),
    )


def _parts(value: Any, texts: list[str], blobs: list[bytes]) -> None:
    """Every string in ``value`` in order (dict keys too), numbers as text; ``body_base64`` decoded."""
    if isinstance(value, str):
        texts.append(value)
    elif isinstance(value, bool | int | float):
        texts.append(str(value))
    elif isinstance(value, dict):
        for key, item in cast(dict[Any, Any], value).items():
            if key == "body_base64" and isinstance(item, str):
                with contextlib.suppress(binascii.Error, ValueError):
                    blobs.append(base64.b64decode(item, validate=True))
            _parts(key, texts, blobs)
            _parts(item, texts, blobs)
    elif isinstance(value, list | tuple):
        for item in cast(list[Any], value):
            _parts(item, texts, blobs)
