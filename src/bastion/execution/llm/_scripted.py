"""The ``scripted`` provider: deterministic answers, no network, no key.

A target's ``script`` is a list of turns, each ``{text}``, ``{toolCalls: [{name, arguments}]}`` or
both. The answer to a request depends on the request alone: the n-th turn answers a conversation
that already holds n-1 assistant messages. So the same conversation always gets the same answer,
a replay sends the same requests, and a multi-turn agent walks through the script. Without a
script the model echoes the last user message. ``load_script`` reads a script from a JSON or
YAML file, for users' tests.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import yaml

from bastion.api import ScriptTurn

from ._provider import Call, ProviderFailure
from ._types import Message, Reply, ToolCall, Usage, estimate_text_tokens, estimate_tokens


class ScriptedProvider:
    name = "scripted"

    def complete(self, call: Call) -> Reply:
        request = call.request
        turns = call.target.script
        index = sum(1 for m in request.messages if m.role == "assistant")
        if not turns:
            last = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
            message = Message(role="assistant", content=f"(scripted {call.target.model}) {last[:2000]}")
        elif index >= len(turns):
            raise ProviderFailure(
                f"the script of scripted/{call.target.model} has {len(turns)} turns; this conversation "
                f"asks for turn {index + 1}",
                retryable=False,
            )
        else:
            message = _message(turns[index], index)
        output = min(estimate_text_tokens(message), call.max_tokens)
        return Reply(
            message=message,
            finish_reason="tool_calls" if message.tool_calls else "stop",
            usage=Usage(input_tokens=estimate_tokens(request), output_tokens=output),
            model=call.target.model,
        )


def _message(turn: Mapping[str, Any], index: int) -> Message:
    calls = tuple(
        ToolCall(id=f"call_{index + 1}_{j + 1}", name=str(c["name"]), arguments=c.get("arguments", {}))
        for j, c in enumerate(cast(Sequence[Mapping[str, Any]], turn.get("toolCalls") or []))
    )
    return Message(role="assistant", content=str(turn.get("text") or ""), tool_calls=calls)


def load_script(path: Path) -> tuple[dict[str, Any], ...]:
    """A script from a JSON or YAML file holding a list of turns (validated like a ModelPolicy's).

    Raises:
        ValueError: the file does not hold a valid list of turns; the message names the turn.
    """

    text = path.read_text(encoding="utf-8")
    raw: Any = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(raw, list):
        raise ValueError(f"{path}: a script is a list of turns, like [{{text: hello}}]")
    turns: list[dict[str, Any]] = []
    for i, item in enumerate(cast(list[Any], raw)):
        try:
            turns.append(ScriptTurn.model_validate(item).wire())
        except ValueError as exc:
            raise ValueError(f"{path}: turn {i + 1}: {exc}") from None
    return tuple(turns)
