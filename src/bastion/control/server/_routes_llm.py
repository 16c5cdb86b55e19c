"""``POST /llm/v1/chat/completions``: an OpenAI-compatible endpoint for clients outside sandboxes.

Authenticated by an API key like the rest of the API. ``model`` names a ModelPolicy (``NAME`` in
the ``default`` namespace, or ``NAMESPACE/NAME``): the policy's targets, budgets and prices apply,
whatever model the policy routes to. Each call is a run of kind ``completion`` with one journal
entry, so it is budgeted, audited, exported and replayable like an agent's call. Streaming works:
the answer is journaled whole, then sent as the provider's server-sent events.

Errors carry both shapes a client may look for: RFC 9457 problem+json fields, and OpenAI's
``error`` object, which the official SDKs read.
"""

from __future__ import annotations

from typing import Any, cast

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from bastion.api import NonFiniteNumber, check_name, parse_json
from bastion.errors import BastionError, NotFound, PayloadTooLarge, RateLimited, ServerError, UserError
from bastion.execution.sandbox import DENIED, INVALID, CallError

from ._deps import BastionDep, PrincipalDep, require
from ._inputs import non_finite
from ._problems import PROBLEM_JSON

router = APIRouter(prefix="/llm/v1", tags=["llm"])
MAX_BODY = 1024 * 1024
_OPENAI_KINDS = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def _openai_error(error: BastionError, kind: str) -> JSONResponse:
    body = error.to_problem()
    body["error"] = {"message": error.detail, "type": kind, "param": error.field, "code": error.slug}
    headers = {"x-should-retry": "false"} if error.status < 500 else {}
    return JSONResponse(body, status_code=error.status, media_type=PROBLEM_JSON, headers=headers)


def _model_policy(model: Any) -> tuple[str, str]:
    if not isinstance(model, str) or not model:
        raise UserError(
            "'model' must name a ModelPolicy",
            field="model",
            hint="send model: POLICY (namespace default) or NAMESPACE/POLICY",
        )
    namespace, _, name = model.rpartition("/")
    namespace = namespace or "default"
    try:
        check_name(name)
        check_name(namespace)
    except ValueError as exc:
        raise UserError(
            f"model {model!r}: {exc}", field="model", hint="send model: POLICY or NAMESPACE/POLICY"
        ) from None
    return namespace, name


@router.post("/chat/completions", summary="OpenAI-compatible chat completions, governed by a ModelPolicy")
async def chat_completions(request: Request, bastion: BastionDep, principal: PrincipalDep) -> Any:
    try:
        require(principal, "developer", "call models")
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise PayloadTooLarge(f"the request body is over {MAX_BODY} bytes", field="body")
        try:
            body: Any = parse_json(raw or b"null")
        except NonFiniteNumber as exc:
            raise non_finite(exc) from None
        except (ValueError, RecursionError) as exc:
            raise UserError(f"the request body is not JSON: {exc}", field="body") from None
        if not isinstance(body, dict):
            raise UserError("the request body must be a JSON object", field="body")
        body = cast(dict[str, Any], body)
        namespace, policy = _model_policy(body.get("model"))
        caller = principal.key_name or principal.key_id
        params = {"format": "openai", "request": body}
        run_id, answer = await run_in_threadpool(
            bastion.completions.complete,
            tenant_id=principal.tenant_id,
            namespace=namespace,
            caller=caller,
            model_policy=policy,
            params=params,
        )
    except BastionError as error:
        return _openai_error(
            error,
            _OPENAI_KINDS.get(error.status, "invalid_request_error" if error.status < 500 else "api_error"),
        )
    except CallError as refusal:
        return _refused(refusal)
    headers = {"x-bastion-run": run_id}
    answer = cast(dict[str, Any], answer)
    events = answer.get("events")
    if isinstance(events, list):

        def stream() -> Any:
            for event in cast(list[dict[str, Any]], events):
                head = f"event: {event['event']}\n" if event.get("event") else ""
                yield f"{head}data: {event.get('data', '')}\n\n".encode()

        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)
    return JSONResponse(answer.get("body"), headers=headers)


def _refused(refusal: CallError) -> JSONResponse:
    kind = str(refusal.data.get("type", ""))
    detail = refusal.message
    if refusal.code == DENIED and kind == "budget_exceeded":
        return _openai_error(
            RateLimited(
                detail, field="budget", hint="raise the ModelPolicy's budgets or wait for the day to turn"
            ),
            "rate_limit_error",
        )
    if refusal.code == DENIED and "model/no-policy" in refusal.data.get("rule_ids", []):
        missing = NotFound(detail, field="model", hint="list them with `bastion get modelpolicies -A`")
        return _openai_error(missing, "not_found_error")
    if refusal.code == DENIED:
        return _openai_error(UserError(detail, field="model", status=403), "permission_error")
    if refusal.code == INVALID:
        return _openai_error(
            UserError(detail, field=str(refusal.data.get("field") or "body")), "invalid_request_error"
        )
    failed = ServerError(
        detail,
        field="model",
        hint="every target of the ModelPolicy failed; the run's journal says how",
        status=502,
    )
    return _openai_error(failed, "api_error")
