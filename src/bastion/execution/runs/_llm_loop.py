"""Bastion's own agent loop for ``runtime: llm`` (DESIGN §3: declarative agents).

instructions + input → model → tool calls → results → model … → final answer. Every model call
and every tool call goes through the gateway session's ``handle``, exactly as a code agent's
would, so both produce the same journal, and a resumed attempt replays this loop like any agent:
given the same journal answers it makes the same requests in the same order (nothing here reads
a clock, a random source or a dict in an unspecified order).

* Several tool calls in one model turn run one after another, in the order the model gave them.
* Arguments that are not an object matching the tool's JSON Schema are not executed: the model
  gets an error message naming the fault, and may try again.
* A refused or failed tool call goes back to the model as an error message too; a failed model
  call ends the run.
* ``maxTurns`` model calls without a final answer end the run with that reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, cast

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match  # pyright: ignore[reportUnknownVariableType]

from bastion.api import schema_validator
from bastion.errors import RunError
from bastion.execution.sandbox import CallError

Handle = Callable[[str, dict[str, Any]], Any]
MAX_TOOL_RESULT_CHARS = 100_000
"""A tool result longer than this is cut before it goes back to the model."""


class AgentLoopFailed(RunError):
    """A declarative agent's loop ended without an answer."""

    slug = "agent-loop-failed"
    title = "Agent loop failed"


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def tool_definitions(
    spec: Mapping[str, Any], manifests: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The tools the agent lists that exist, in the agent's order, as the model sees them."""
    defs: list[dict[str, Any]] = []
    for name in cast(list[str], spec.get("tools") or []):
        manifest = manifests.get(name)
        if manifest is None:
            continue
        tool: Mapping[str, Any] = manifest["spec"]
        defs.append(
            {
                "name": name,
                "description": str(tool.get("description", "")),
                "parameters": tool.get("parameters") or {"type": "object"},
            }
        )
    return defs


def run_llm_agent(
    *,
    spec: Mapping[str, Any],
    input: Any,
    tools: Mapping[str, Mapping[str, Any]],
    handle: Handle,
    check: Callable[[], None] = lambda: None,
) -> str:
    """Run the loop to its final answer (the run's result).

    Args:
        spec: the Agent's spec (instructions, tools, maxTurns).
        tools: Tool manifests by name (those the agent does not list are ignored).
        handle: the gateway session's ``handle`` (or a replay's).
        check: called before each step; raises to stop the loop (cancel, lost lease, wall time).

    Raises:
        AgentLoopFailed: the model call failed, or ``maxTurns`` passed without an answer.
    """
    defs = tool_definitions(spec, tools)
    validators = {d["name"]: _validator(d["parameters"]) for d in defs}
    max_turns = int(spec.get("maxTurns", 20))
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": str(spec.get("instructions") or "")},
        {"role": "user", "content": _text(input)},
    ]
    for turn in range(1, max_turns + 1):
        check()
        request: dict[str, Any] = {"messages": messages}
        if defs:
            request["tools"] = defs
        try:
            result = handle("llm.chat", {"format": "bastion", "request": request})
        except CallError as exc:
            raise AgentLoopFailed(f"model turn {turn}: {exc.message}") from None
        message: dict[str, Any] = result["message"]
        messages.append(message)
        calls = cast(list[dict[str, Any]], message.get("toolCalls") or [])
        if not calls:
            return str(message.get("content") or "")
        for call in calls:
            check()
            messages.append(_tool_message(call, validators, handle))
    raise AgentLoopFailed(
        f"the model was still calling tools after maxTurns={max_turns} turns without a final answer; "
        "raise spec.maxTurns or tell the model when to stop in spec.instructions"
    )


def _validator(schema: dict[str, Any]) -> Draft202012Validator | None:
    """The Tool's schema with its patterns matched by RE2; None when it cannot be enforced (the
    gateway then refuses the call, saying why)."""
    try:
        return schema_validator(schema)
    except ValueError:
        return None


def _tool_message(
    call: Mapping[str, Any], validators: Mapping[str, Draft202012Validator | None], handle: Handle
) -> dict[str, Any]:
    name, args = str(call.get("name")), call.get("arguments")

    def error(text: str) -> dict[str, Any]:
        return {"role": "tool", "toolCallId": call["id"], "content": f"error: {text}", "isError": True}

    if name not in validators:
        return error(f"there is no tool named {name!r}; the tools are: {', '.join(validators) or 'none'}")
    validator = validators[name]
    if not isinstance(args, dict):
        return error(f"the arguments of {name!r} must be a JSON object; got {_text(args)[:200]}")
    fault = _schema_fault(validator, cast(dict[str, Any], args)) if validator is not None else None
    if fault is not None:
        return error(f"the arguments of {name!r} do not match its JSON Schema at {fault}")
    try:
        value = handle("tool.call", {"name": name, "args": args})
    except CallError as exc:
        return error(exc.message)
    text = _text(value)
    if len(text) > MAX_TOOL_RESULT_CHARS:
        text = text[:MAX_TOOL_RESULT_CHARS] + f"… [cut: {len(text)} characters]"
    return {"role": "tool", "toolCallId": call["id"], "content": text}


def _schema_fault(validator: Draft202012Validator, args: dict[str, Any]) -> str | None:
    """``path: message`` of the most relevant schema violation, or None if the arguments fit."""
    errors: list[ValidationError] = list(validator.iter_errors(args))  # pyright: ignore[reportUnknownMemberType]
    if not errors:
        return None
    fault: ValidationError = best_match(errors)  # pyright: ignore[reportUnknownVariableType]
    path: list[Any] = list(fault.absolute_path)  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType]
    message: str = fault.message  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
    return f"{'/'.join(str(p) for p in path) or '(the arguments)'}: {message}"
