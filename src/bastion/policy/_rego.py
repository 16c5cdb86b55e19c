"""Rego modules through regopy (rego-cpp): compiled once per policy version, evaluated per call.

The contract: the module is ``package bastion`` and defines ``allow``, which must evaluate to
the boolean ``true`` for the call to pass; ``reasons`` (a set or array of strings), if defined,
says why not. Everything else is a deny carrying what went wrong, because an engine that
cannot answer must never be read as "nothing objected":

* a module that does not parse or compile (the policy denies every call, with the error);
* an error while evaluating, including a builtin's error. regopy's default turns a builtin's
  error into an *undefined* value, so ``not blocked`` over a ``regex.match("(?i)...")`` that
  fails would silently allow; we switch ``strict_built_in_errors`` on so it is an error;
* an unknown or unsupported builtin (rego-cpp reports these in the output, not as exceptions);
* ``allow`` undefined, or anything but a boolean.

What "compile" means in regopy: ``Interpreter.build`` parses, checks and plans the module into
a ``Bundle``; ``query_bundle_entrypoint`` evaluates a plan against an input. Building costs
milliseconds, evaluating tens of microseconds, so the bundle is built once here and reused.
Interpreters are not thread-safe: each evaluation holds this module's lock.

Time budget: Rego always terminates, but a module (or an input an agent chose) can make it
take minutes, and rego-cpp cannot be interrupted. Each evaluation therefore runs on its own
daemon thread (regopy calls through ctypes, which releases the GIL, so it slows nobody else)
and the caller waits at most ``budget`` seconds (``BUDGET_SECONDS``): past it the call is denied
(fail closed). The abandoned evaluation keeps the module's lock until it finishes; meanwhile
every call to the same module waits at most its budget for the lock and is denied too. So one
pathological input costs its policy's calls a deny each (never an allow, never a hang) until
the evaluation ends; other modules and the rest of the gateway are unaffected.
"""

# regopy ships no type information: its calls are typed here, at the one place we use them.
# pyright: reportUnknownMemberType=false, reportUnknownVariableType=false, reportMissingTypeStubs=false
# pyright: reportUnknownArgumentType=false, reportAttributeAccessIssue=false

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PACKAGE = "bastion"
ALLOW = f"{PACKAGE}/allow"
REASONS = f"{PACKAGE}/reasons"
_ERROR_KINDS = frozenset({"error", "errorseq", "rego-errorseq"})
BUDGET_SECONDS = 2.0
"""How long one evaluation may take (a typical one takes tens of microseconds)."""


@dataclass(frozen=True, slots=True)
class RegoVerdict:
    allowed: bool
    reason: str


class RegoModule:
    """One Policy's Rego module, built into a bundle. ``error`` is set when it does not build."""

    def __init__(self, name: str, source: str, *, budget: float | None = None) -> None:
        self.name = name
        self.budget = budget if budget is not None else BUDGET_SECONDS
        self.error: str | None = None
        self._lock = threading.Lock()
        self._bundle: Any = None
        self._runner: Any = None
        try:
            import regopy

            builder = regopy.Interpreter()
            builder.log_level = regopy.LogLevel.NONE
            builder.add_module(f"{name}.rego", source)
            bundle = builder.build(None, [ALLOW, REASONS])
            if not bundle.ok():
                self.error = "the module did not compile"
                return
            runner = regopy.Interpreter()
            runner.log_level = regopy.LogLevel.NONE
            runner.strict_built_in_errors = True
            self._bundle, self._runner = bundle, runner
        except Exception as exc:  # regopy raises RegoError, or ImportError when missing
            self.error = _one_line(str(exc)) or type(exc).__name__

    def evaluate(self, document: Mapping[str, Any]) -> RegoVerdict:
        """``allow`` for this input; any failure is a refusal naming the failure."""
        if self.error is not None:
            return RegoVerdict(False, f"the Rego module did not compile: {self.error}")
        if not self._lock.acquire(timeout=self.budget):
            return RegoVerdict(
                False,
                f"the Rego module is still busy with an evaluation that ran past its {self.budget:g} s budget",
            )
        done = threading.Event()
        box: list[RegoVerdict] = []

        def work() -> None:  # releases the lock when the evaluation ends, however late
            try:
                box.append(self._evaluate_locked(document))
            finally:
                self._lock.release()
                done.set()

        threading.Thread(target=work, name=f"rego-{self.name}", daemon=True).start()
        if not done.wait(self.budget) or not box:
            return RegoVerdict(False, f"the Rego module ran out of its {self.budget:g} s time budget")
        return box[0]

    def _evaluate_locked(self, document: Mapping[str, Any]) -> RegoVerdict:
        try:
            value, error = self._query(ALLOW, document)
            if error is None and value is False:
                reasons, _ = self._query(REASONS, document)
            else:
                reasons = None
        except Exception as exc:
            return RegoVerdict(False, f"the Rego engine failed: {_one_line(str(exc)) or type(exc).__name__}")
        if error is not None:
            return RegoVerdict(False, f"the Rego engine failed: {error}")
        if value is _UNDEFINED:
            return RegoVerdict(False, "the Rego rule 'allow' is undefined for this call")
        if value is True:
            return RegoVerdict(True, "the Rego module allows this call")
        if value is False:
            return RegoVerdict(False, _reasons(reasons) or "the Rego module does not allow this call")
        return RegoVerdict(False, f"the Rego rule 'allow' is {json.dumps(value)[:80]}, not a boolean")

    def _query(self, entrypoint: str, document: Mapping[str, Any]) -> tuple[Any, str | None]:
        """(value, None) or (None, error text). Caller holds the lock."""
        from regopy import Input
        from regopy.rego_shared import (
            rego_bundle_query_entrypoint,
            rego_free_output,
            rego_output_node,
            rego_output_ok,
            rego_output_string,
        )

        runner = self._runner
        runner.set_input(Input(dict(document)))
        out = rego_bundle_query_entrypoint(runner._impl, self._bundle._impl, entrypoint)
        try:
            text = rego_output_string(out)
            if not rego_output_ok(out) or text.lstrip().startswith("(error"):
                return None, _errors(rego_output_node(out)) or _one_line(text)
            if text.strip() == "undefined":
                return _UNDEFINED, None
            parsed = json.loads(text)
        finally:
            rego_free_output(out)
        results = parsed if isinstance(parsed, list) else [parsed]
        if len(results) != 1 or not isinstance(results[0], dict):
            return None, f"unexpected output {text[:120]!r}"
        expressions = results[0].get("expressions")
        if not isinstance(expressions, list) or len(expressions) != 1:
            return None, f"unexpected output {text[:120]!r}"
        return expressions[0], None


class _Undefined:
    def __repr__(self) -> str:
        return "undefined"


_UNDEFINED = _Undefined()


def _reasons(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = sorted(str(v) for v in value if isinstance(v, str))
        return "; ".join(texts)
    return ""


def _errors(node: Any) -> str:
    """The ``errormsg`` texts under an error node (rego-cpp's errors are a small tree)."""
    from regopy.rego_shared import rego_node_get, rego_node_json, rego_node_size, rego_node_value

    found: list[str] = []

    def walk(impl: Any, depth: int) -> None:
        if depth > 6 or len(found) >= 5:
            return
        try:
            label = rego_node_json(impl)
        except Exception:
            label = ""
        if label.startswith("errormsg"):
            with contextlib.suppress(Exception):
                found.append(rego_node_value(impl))
            return
        for i in range(rego_node_size(impl)):
            walk(rego_node_get(impl, i), depth + 1)

    walk(node, 0)
    return "; ".join(_one_line(f) for f in found)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]
