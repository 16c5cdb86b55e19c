"""Replay: re-execute an agent offline against its ExecutionRecord (DESIGN §3, Observe).

The agent runs afresh in a sandbox; every call it makes is answered from the record, after
checking that the request is byte for byte the recorded one (canonical JSON). Calls to
workspace-only tools are also re-executed in the replay's own workspace, so an agent that reads
back its files from disk sees them as it did. The first divergence stops the replay and names the
seq with a readable diff; ``until`` stops it after that seq.

A replay ends as its run did or it diverges: a run that succeeded must return the recorded result;
a run that failed must fail again with the recorded reason, worded as the worker words it (``the
agent raised ...``), and no result. A failure replayed faithfully is a clean verdict; a replay that
fails differently, or succeeds where the run failed, is not.
"""

from __future__ import annotations

import base64
import difflib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from bastion.errors import LimitExceeded, RunError, RunKilled, SandboxError
from bastion.execution.llm import answer
from bastion.execution.sandbox import (
    DENIED,
    INVALID,
    TOOL_FAILED,
    CallError,
    Image,
    SandboxBackend,
    SandboxLimits,
    SandboxSpec,
)
from bastion.execution.tools import Tool, ToolContext
from bastion.observe.journal import canonical

from ._llm_loop import run_llm_agent

_KINDS = {"tool.call", "llm.chat", "time.now", "random.random", "random.uuid"}


@dataclass(kw_only=True)
class ReplayReport:
    verified: list[int] = field(default_factory=list[int])
    """Seqs whose request matched the record."""
    divergence: int | None = None
    """The seq where the agent asked for something else (or more, or less)."""
    diff: str = ""
    reason: str = ""
    result: Any = None
    state: str | None = None
    """How the replayed agent ended: ``Succeeded`` or ``Failed`` (None: stopped before the end)."""
    error: str | None = None
    """Why the replayed agent failed, worded as the run's recorded ``reason``."""
    result_matches: bool | None = None
    """Whether the replay ended as the run did: the same result, or the same failure."""
    stopped_at: int | None = None

    @property
    def ok(self) -> bool:
        return self.divergence is None and self.result_matches is not False


class _Stop(RunKilled):
    """Ends the agent: a divergence was found, or ``until`` was reached."""


_SUCCEEDED, _FAILED = "Succeeded", "Failed"


def _ending(state: Any, reason: Any, result: Any) -> dict[str, Any]:
    """What a run's end is judged by: its result if it succeeded, its reason if it failed (a
    failed run has no result), and its state whatever it was."""
    if state == _SUCCEEDED:
        return {"state": state, "result": result}
    return {"state": state, "reason": reason, "result": result}


def _why(ending: dict[str, Any]) -> str:
    return f" ({ending['reason']})" if ending.get("reason") else ""


def _pretty(value: Any) -> list[str]:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False).splitlines()


class Replayer:
    def __init__(
        self,
        record: dict[str, Any],
        backend: SandboxBackend,
        tools: dict[str, Tool],
        *,
        image: Image | None = None,
    ) -> None:
        """``image``: the agent's image (``spec.image``/``requirements``), which the caller resolves;
        an agent that imports its requirements cannot be replayed without it."""
        self.image = image
        self.record = record
        self.backend = backend
        self.tools = tools
        self.entries = cast(list[dict[str, Any]], record["entries"])
        self.blobs = {k: base64.b64decode(v) for k, v in cast(dict[str, str], record["blobs"]).items()}
        self.tool_manifests = cast(dict[str, dict[str, Any]], record.get("tools", {}))

    def _resolve(self, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        ref = cast(dict[str, Any], value)
        return json.loads(self.blobs[str(ref["$blob"])]) if "$blob" in ref else ref

    def run(
        self, workspace: Path, *, until: int | None = None, on_step: Callable[[int, str], None] | None = None
    ) -> ReplayReport:
        spec: dict[str, Any] = self.record["agent"]["spec"]
        if spec.get("entrypoint"):
            module = str(spec["entrypoint"]).split(":")[0]
            (workspace / (module.replace(".", "/") + ".py")).parent.mkdir(parents=True, exist_ok=True)
            (workspace / (module.replace(".", "/") + ".py")).write_text(
                spec.get("source", ""), encoding="utf-8"
            )
        report = ReplayReport()
        seq = 0

        def handle(method: str, params: dict[str, Any]) -> Any:
            nonlocal seq
            if method not in _KINDS:
                raise CallError(INVALID, f"unknown method {method!r}")
            seq += 1
            # Out-of-band context (the shim's trace) is not part of the request, as in the gateway.
            params = {k: v for k, v in params.items() if k != "_meta"}
            request = {"method": method, "params": params}
            if seq > len(self.entries):
                report.divergence, report.reason = seq, "the agent made a call the record does not have"
                report.diff = "\n".join(_pretty(request))
                raise _Stop(report.reason)
            entry = self.entries[seq - 1]
            recorded = self._resolve(entry["request"])
            if canonical(request) != canonical(recorded):
                report.divergence, report.reason = seq, "the request differs from the recorded one"
                report.diff = "\n".join(
                    difflib.unified_diff(
                        _pretty(recorded), _pretty(request), "recorded", "replayed", lineterm=""
                    )
                )
                raise _Stop(report.reason)
            report.verified.append(seq)
            if on_step is not None:
                on_step(seq, str(params.get("name") or method))
            self._redo_workspace_effect(entry, params, workspace, seq)
            if until is not None and seq >= until:
                report.stopped_at = seq
                raise _Stop(f"stopped after seq {seq}")
            error = cast(dict[str, Any] | None, entry["error"])
            if error is not None:
                code = {"policy_denied": DENIED, "budget_exceeded": DENIED, "invalid_request": INVALID}.get(
                    str(error.get("type")), TOOL_FAILED
                )
                message = str(error.get("reason") or "; ".join(error.get("reasons", [])) or "failed")
                if error.get("type") == "model_call_failed":  # worded as the gateway words them
                    message = f"the model call failed: {message}"
                elif error.get("type") == "budget_exceeded":
                    message = f"budget {error.get('budget')!r} exceeded: {message}"
                raise CallError(code, message, error)
            response = self._resolve(entry["response"])
            return answer(params, response) if method == "llm.chat" else response

        if spec.get("runtime") == "llm":
            return self._run_loop(report, handle, spec)
        if spec.get("runtime") == "completion":  # an API client's one model call
            try:
                report.result = handle("llm.chat", self.record["run"].get("input"))
            except _Stop:
                return report
            except CallError as exc:  # the completion's run records the gateway's refusal as is
                report.state, report.error = _FAILED, exc.message
            else:
                report.state = _SUCCEEDED
            return self._finish(report)

        sandbox = self.backend.start(
            SandboxSpec(
                workspace=workspace,
                limits=SandboxLimits(wall_seconds=300, memory_mib=1024),
                # The model endpoint starts as in the run, so SDK code reaches the record too.
                env={"BASTION_RUN_TOKEN": f"bst-replay-{secrets.token_urlsafe(16)}"},
                image=self.image,
            ),
            on_log=lambda _: None,
        )
        try:
            report.result = sandbox.call(
                "run",
                {"entrypoint": spec["entrypoint"], "input": self.record["run"].get("input")},
                handler=handle,
            )
        except _Stop:
            return report
        except CallError as exc:  # the agent raised: worded as the worker records it
            report.state, report.error = _FAILED, f"the agent raised {exc.message}"
        except (LimitExceeded, SandboxError) as exc:
            report.state, report.error = _FAILED, exc.detail
        else:
            report.state = _SUCCEEDED
        finally:
            sandbox.stop()
        return self._finish(report)

    def _finish(self, report: ReplayReport) -> ReplayReport:
        if report.divergence is None and len(report.verified) < len(self.entries):
            report.divergence = len(report.verified) + 1
            report.reason = (
                f"the agent finished after {len(report.verified)} calls; the record has {len(self.entries)}"
            )
        run: dict[str, Any] = self.record["run"]
        recorded = _ending(run.get("state"), run.get("reason"), run.get("result"))
        replayed = _ending(report.state, report.error, report.result)
        report.result_matches = canonical(replayed) == canonical(recorded)
        if not report.result_matches and report.divergence is None:
            if recorded["state"] == replayed["state"] == _SUCCEEDED:
                report.reason = "the result differs from the recorded one"
                before, after = recorded["result"], replayed["result"]
            else:
                report.reason = (
                    f"the run ended {recorded['state']}{_why(recorded)}; the replay ended "
                    f"{replayed['state']}{_why(replayed)}"
                )
                before, after = recorded, replayed
            report.diff = "\n".join(
                difflib.unified_diff(_pretty(before), _pretty(after), "recorded", "replayed", lineterm="")
            )
        return report

    def _run_loop(
        self, report: ReplayReport, handle: Callable[[str, dict[str, Any]], Any], spec: dict[str, Any]
    ) -> ReplayReport:
        """``runtime: llm``: Bastion's loop again, every call answered from the record."""
        try:
            report.result = run_llm_agent(
                spec=spec, input=self.record["run"].get("input"), tools=self.tool_manifests, handle=handle
            )
        except _Stop:
            return report
        except RunError as exc:  # the worker records the loop's failure as its detail
            report.state, report.error = _FAILED, exc.detail
        else:
            report.state = _SUCCEEDED
        return self._finish(report)

    def _redo_workspace_effect(
        self, entry: dict[str, Any], params: dict[str, Any], workspace: Path, seq: int
    ) -> None:
        if entry["kind"] != "tool" or entry["decision"] != "allow":
            return
        manifest = self.tool_manifests.get(str(params.get("name")))
        impl: dict[str, Any] = (manifest or {}).get("spec", {}).get("implementation", {})
        tool = self.tools.get(str(impl.get("name"))) if impl.get("type") == "builtin" else None
        if tool is not None and tool.workspace_only:
            try:
                tool.invoke(
                    dict(params.get("args", {})),
                    ToolContext(run_id=str(self.record["run"]["id"]), seq=seq, workspace=workspace),
                )
            except Exception:  # the recorded answer is what the agent gets either way
                return
