"""Exceptions raised by Bastion.

* BastionError
  x UserError         -- Bastion was configured or called wrongly; the message says the fix
    x InvalidManifest -- a manifest failed validation; carries one Problem per fault
    x NotFound        -- no such resource (also what another tenant's resource looks like)
    x Conflict        -- a stale resourceVersion, a name taken, an Idempotency-Key reused
    x Unauthorized    -- no valid API key
    x Forbidden       -- the key's role may not do this
    x PayloadTooLarge -- a request body over the limit
  x RunError          -- a run failed (filled in by the run engine)
    x ToolCallFailed  -- a tool failed
      x SecretRefused -- a Secret was about to go where its spec.destinations do not allow
    x ModelCallFailed -- every target of a ModelPolicy failed, or a stream broke mid-answer
    x BudgetExceeded  -- a model call's reservation would not fit a token or cost budget
  x ServerError       -- Bastion itself failed; never carries internals to the caller

Every error maps onto an RFC 9457 problem document with a stable ``type``; the server's one
handler does that mapping and the client turns problem documents back into these classes, so
code on both sides of the wire catches the same exceptions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, cast

PROBLEM_BASE = "urn:bastion:problem:"


@dataclass(frozen=True, kw_only=True)
class Problem:
    """One fault in a request, placed as precisely as we can."""

    message: str
    """What was wrong, in one sentence."""
    field: str | None = None
    """The dotted path of the offending field, e.g. ``spec.limits.cpuSeconds``."""
    hint: str | None = None
    """How to fix it."""
    document: int | None = None
    """The 0-based index of the manifest document, for multi-document requests."""
    source: str | None = None
    """Where the document came from (a file name and document number), when the client knows."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"message": self.message}
        for key in ("field", "hint", "document", "source"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Problem:
        return cls(
            message=str(data.get("message", "")),
            field=data.get("field"),
            hint=data.get("hint"),
            document=data.get("document"),
            source=data.get("source"),
        )

    def located(self) -> str:
        """The problem as one line: where, what, and the fix."""
        where: list[str] = []
        if self.source is not None:
            where.append(self.source)
        elif self.document is not None:
            where.append(f"document {self.document + 1}")
        if self.field:
            where.append(self.field)
        text = f"{': '.join(where)}: {self.message}" if where else self.message
        return f"{text} (hint: {self.hint})" if self.hint else text


class BastionError(Exception):
    """The root of every error Bastion raises on purpose."""

    slug: ClassVar[str] = "error"
    status: int = 500
    """The HTTP status; a class default, overridable per instance."""
    title: ClassVar[str] = "Bastion error"

    def __init__(
        self,
        detail: str,
        *,
        field: str | None = None,
        hint: str | None = None,
        problems: list[Problem] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(detail)
        if status is not None:
            self.status = status
        self.detail = detail
        self.field = field
        self.hint = hint
        self.problems: list[Problem] = problems or []

    @classmethod
    def type_uri(cls) -> str:
        return PROBLEM_BASE + cls.slug

    def to_problem(self) -> dict[str, Any]:
        """This error as an RFC 9457 problem document (without ``instance``)."""
        body: dict[str, Any] = {
            "type": self.type_uri(),
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.field is not None:
            body["field"] = self.field
        if self.hint is not None:
            body["hint"] = self.hint
        if self.problems:
            body["errors"] = [p.to_dict() for p in self.problems]
        return body

    def __str__(self) -> str:
        lines = [self.detail]
        lines.extend(f"  - {p.located()}" for p in self.problems)
        if self.hint and not self.problems:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)


class UserError(BastionError):
    """Bastion was configured or called wrongly; the message names the field and the fix."""

    slug = "bad-request"
    status = 400
    title = "Bad request"


class InvalidManifest(UserError):
    """A manifest or request body failed validation."""

    slug = "invalid-manifest"
    status = 422
    title = "Invalid manifest"


class NotFound(UserError):
    slug = "not-found"
    status = 404
    title = "Not found"


class Conflict(UserError):
    slug = "conflict"
    status = 409
    title = "Conflict"


class IdempotencyKeyReused(UserError):
    slug = "idempotency-key-reused"
    status = 422
    title = "Idempotency-Key reused with a different request"


class MethodNotAllowed(UserError):
    slug = "method-not-allowed"
    status = 405
    title = "Method not allowed"


class Unauthorized(UserError):
    slug = "unauthorized"
    status = 401
    title = "Unauthorized"


class Forbidden(UserError):
    slug = "forbidden"
    status = 403
    title = "Forbidden"


class PayloadTooLarge(UserError):
    slug = "payload-too-large"
    status = 413
    title = "Payload too large"


class UnsupportedMediaType(UserError):
    slug = "unsupported-media-type"
    status = 415
    title = "Unsupported media type"


class RateLimited(UserError):
    slug = "rate-limited"
    status = 429
    title = "Too many requests"


class RunError(BastionError):
    """A run failed; ``detail`` is the reason recorded on the run."""

    slug = "run-failed"
    status = 500
    title = "Run failed"


class LimitExceeded(RunError):
    """The agent hit a sandbox limit; ``limit`` names it (cpu, memory, wall_time, output, ...)."""

    slug = "limit-exceeded"
    title = "Limit exceeded"

    def __init__(self, limit: str, detail: str) -> None:
        super().__init__(f"limit exceeded: {limit}: {detail}", field=limit)
        self.limit = limit


class SandboxError(RunError):
    """The sandbox failed or the agent broke the channel protocol (exited mid-call, wrote garbage)."""

    slug = "sandbox-error"
    title = "Sandbox error"


class NonDeterministic(RunError):
    """A resumed attempt asked for something other than what the journal recorded at ``seq``."""

    slug = "non-deterministic"
    title = "Non-deterministic agent"

    def __init__(self, seq: int, detail: str) -> None:
        super().__init__(f"non-deterministic at seq {seq}: {detail}", field="seq")
        self.seq = seq


class LeaseLost(RunError):
    """This attempt no longer holds the run's lease (a zombie); it must not write or act."""

    slug = "lease-lost"
    title = "Lease lost"


class RunSuspended(RunError):
    """The attempt ends cleanly to wait for something (an approval): the sandbox is released and the
    run waits, holding no lease; the event re-queues it and the next attempt replays to here."""

    slug = "run-suspended"
    status = 409
    title = "Run suspended"

    def __init__(self, detail: str, *, approval_id: str) -> None:
        super().__init__(detail, field="approval")
        self.approval_id = approval_id


class ErrorBudgetExceeded(RunError):
    """The run's errors exceeded its agent's error budget; ``rule_id`` names the budget's rule."""

    slug = "error-budget-exceeded"
    title = "Error budget exceeded"

    def __init__(self, detail: str, *, rule_id: str) -> None:
        super().__init__(detail, field="errorBudget")
        self.rule_id = rule_id


class ToolCallFailed(RunError):
    """A tool failed; journaled, and raised again on replay with the same fields."""

    slug = "tool-call-failed"
    title = "Tool call failed"

    def __init__(self, tool: str, reason: str, retryable: bool = False) -> None:
        super().__init__(f"tool {tool!r} failed: {reason}", field="tool")
        self.tool, self.reason, self.retryable = tool, reason, retryable

    def to_record(self) -> dict[str, Any]:
        return {
            "type": "tool_call_failed",
            "tool": self.tool,
            "reason": self.reason,
            "retryable": self.retryable,
        }


class SecretRefused(ToolCallFailed):
    """A Secret was about to be sent somewhere its ``spec.destinations`` do not name: a denial,
    journaled with the Secret and the destination, never a silent drop."""

    def __init__(self, tool: str, secret: str, destination: str, declared: bool = True) -> None:
        self.secret, self.destination = secret, destination
        super().__init__(tool, _refusal_reason(secret, destination, declared))

    @property
    def rule_id(self) -> str:
        return f"secret/{self.secret}/destinations"

    def to_record(self) -> dict[str, Any]:
        return {
            "type": "policy_denied",
            "tool": self.tool,
            "reasons": [self.reason],
            "rule_ids": [self.rule_id],
            "secret": self.secret,
            "destination": self.destination,
        }


def _refusal_reason(secret: str, destination: str, declared: bool = True) -> str:
    """Why Secret ``secret`` was not sent to ``destination``, and the fix."""
    if not declared:
        return (
            f"secret {secret!r} may not be sent to {destination!r}: Secret {secret!r} declares no "
            "spec.destinations, so it may be sent nowhere; an operator adds the hosts or URL "
            "prefixes it is for to its spec.destinations"
        )
    return (
        f"secret {secret!r} may not be sent to {destination!r}: that is not among its "
        f"spec.destinations; if it should go there, an operator adds it to Secret {secret!r} "
        "spec.destinations"
    )


class ModelCallFailed(RunError):
    """A model call failed on every target it may use; journaled, raised again on replay."""

    slug = "model-call-failed"
    title = "Model call failed"

    def __init__(self, reason: str, attempts: list[dict[str, Any]] | None = None) -> None:
        super().__init__(f"the model call failed: {reason}")
        self.reason = reason
        self.attempts: list[dict[str, Any]] = attempts or []
        """One ``{provider, model, error}`` per provider request that failed, in order."""

    def to_record(self) -> dict[str, Any]:
        return {"type": "model_call_failed", "reason": self.reason, "attempts": self.attempts}


class BudgetExceeded(RunError):
    """A model call was refused before it was made: its reservation would not fit a budget."""

    slug = "budget-exceeded"
    status = 429
    title = "Budget exceeded"

    def __init__(self, budget: str, reason: str) -> None:
        super().__init__(f"budget {budget!r} exceeded: {reason}", field=budget)
        self.budget, self.reason = budget, reason

    def to_record(self) -> dict[str, Any]:
        return {"type": "budget_exceeded", "budget": self.budget, "reason": self.reason}


class RunKilled(BaseException):
    """An operator or a policy ended this run. Not an Exception: ``except Exception`` in a tool
    adapter or plugin cannot swallow it. Clean up in ``finally``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ServerError(BastionError):
    """Bastion failed; the detail never carries a stack trace or internals."""

    slug = "internal"
    status = 500
    title = "Internal server error"


class Unavailable(ServerError):
    slug = "unavailable"
    status = 503
    title = "Service unavailable"


def _all_error_classes() -> list[type[BastionError]]:
    seen: list[type[BastionError]] = []
    stack: list[type[BastionError]] = [BastionError]
    while stack:
        cls = stack.pop()
        seen.append(cls)
        stack.extend(cls.__subclasses__())
    return seen


def error_for_problem(body: dict[str, Any], status: int) -> BastionError:
    """Rebuild the exception a problem document stands for (used by the client)."""
    by_uri = {cls.type_uri(): cls for cls in _all_error_classes()}
    cls = by_uri.get(str(body.get("type", "")))
    if cls is None:
        cls = UserError if 400 <= status < 500 else ServerError
    errors: Any = body.get("errors")
    problems = (
        [Problem.from_dict(cast(dict[str, Any], p)) for p in cast(list[Any], errors) if isinstance(p, dict)]
        if isinstance(errors, list)
        else []
    )
    return cls(
        str(body.get("detail") or body.get("title") or f"HTTP {status}"),
        field=body.get("field"),
        hint=body.get("hint"),
        problems=problems,
        status=status,
    )


__all__ = [
    "PROBLEM_BASE",
    "BastionError",
    "BudgetExceeded",
    "Conflict",
    "ErrorBudgetExceeded",
    "Forbidden",
    "IdempotencyKeyReused",
    "InvalidManifest",
    "LeaseLost",
    "LimitExceeded",
    "MethodNotAllowed",
    "ModelCallFailed",
    "NonDeterministic",
    "NotFound",
    "PayloadTooLarge",
    "Problem",
    "RateLimited",
    "RunError",
    "RunKilled",
    "RunSuspended",
    "SandboxError",
    "SecretRefused",
    "ServerError",
    "ToolCallFailed",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
    "UserError",
    "error_for_problem",
]
