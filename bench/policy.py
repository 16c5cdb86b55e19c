"""Policy benchmark: one tool-call decision, Bastion's built-ins against three peers, same run.

The policy everywhere: 100 grants (agent ``agentN`` may call ``kb.search`` and ``fs.read``) and
50 blocked substrings. Each call is a different agent and a different query string, so no
answer is remembered from an earlier call (constant keys like ``"query"`` are, as in life).

* ``bastion built-ins``: ``CompiledPolicy.decide`` on a prebuilt ``CallContext`` (the gateway
  builds its subject once per attempt); ``+ context`` also builds the ``CallContext`` per call;
  ``+ decoding`` asks for percent and base64 decoding on every pattern.
* ``AGT PolicyInterceptor.intercept``: Microsoft's Agent Governance Toolkit with the same
  patterns (``blocked_patterns``) and tools (``allowed_tools``; it has no per-agent grants).
* ``regopy (compiled bundle)``: a Rego module over data (grants, patterns) built once into a
  bundle; per call ``set_input`` and ``query_bundle_entrypoint``. It walks every string of the
  arguments and lowercases it.
* ``cedarpy (pre-parsed PolicySet)``: 100 ``permit`` policies and one ``forbid`` whose ``when``
  has 50 ``like "*pattern*"`` clauses over ``context.text``, the arguments as JSON text.

Then the evasion probe table (``bastion.policy.EVASION_PROBES``): each engine judges every probe
and every benign argument set; an allowed probe is an evasion, a denied benign set a false alarm.

Target (issue 6): Bastion's built-ins p50 <= 2 us with zero evasions. The machine is shared (2
cores, other jobs): rows are measured in interleaved rounds, and the figures are noisy.
Run: ``.venv/bin/python bench/policy.py [--calls N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from bastion.policy import (
    BENIGN,
    EVASION_PROBES,
    PROBE_PATTERNS,
    CallContext,
    Subject,
    ToolInfo,
    compile_policy,
)

EXTRA = (
    "truncate table", "delete from", "shutdown -h", "format c:", "mkfs.", "dd if=", "/etc/shadow",
    "private key", "aws_secret_access_key", "password=", "exec(", "eval(", "__import__", "os.system",
    "subprocess", "powershell -enc", "invoke-expression", "cmd.exe /c", "/bin/sh -c", "bash -i",
    "union select", "or 1=1", "xp_cmdshell", "<script", "javascript:", "onerror=", "document.cookie",
    "169.254.169.254", "metadata.google.internal", "file://", "gopher://", "jailbreak", "dan mode",
    "reveal the system prompt", "developer mode", "disregard all", "exfiltrate", "chmod 777",
    "curl http", "wget http", "nc -e", "base64 -d", "sudo su", "/proc/self/environ", "~/.ssh/id_rsa",
    "kubectl delete",
)  # fmt: skip
PATTERNS = (*PROBE_PATTERNS, *EXTRA)
assert len(PATTERNS) == 50
AGENTS = [f"agent{i}" for i in range(100)]
TOOLS = ["kb.search", "fs.read"]
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _manifests(decode: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    grants = [
        {
            "apiVersion": "bastion/v1",
            "kind": "ToolGrant",
            "metadata": {"name": f"g{i:03d}"},
            "spec": {"subjects": {"agents": [name]}, "tools": TOOLS},
        }
        for i, name in enumerate(AGENTS)
    ]
    items = [
        {"match": "substring", "pattern": p, **({"decode": ["percent", "base64"]} if decode else {})}
        for p in PATTERNS
    ]
    policy = {
        "apiVersion": "bastion/v1",
        "kind": "Policy",
        "metadata": {"name": "guard"},
        "spec": {"rules": [{"id": "block", "blockedPatterns": items}]},
    }
    return [policy], grants


def _workload(n: int, start: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """``n`` calls whose query strings no other call uses (numbered from ``start``)."""
    return [
        (AGENTS[i % 100], {"query": f"quarterly revenue for region {i} by product", "limit": 10})
        for i in range(start, start + n)
    ]


# --- the engines, each as (agent, args) -> allowed? -------------------------------------------


class BastionEngine:
    def __init__(self, decode: bool) -> None:
        policies, grants = _manifests(decode)
        self.policy = compile_policy(policies, grants, strict=True)
        self.subjects = {a: Subject(name=a, tools=TOOLS) for a in AGENTS}
        self.tool = ToolInfo(name="kb.search")

    def context(self, agent: str, args: dict[str, Any]) -> CallContext:
        return CallContext(subject=self.subjects[agent], tool=self.tool, args=args, now=NOW)

    def judge(self, agent: str, args: dict[str, Any]) -> bool:
        return self.policy.decide(self.context(agent, args)).allowed


def agt_engine() -> Callable[[str, dict[str, Any]], bool]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # its own module-rename notice
        from agent_os.integrations.base import GovernancePolicy, PolicyInterceptor, ToolCallRequest

    interceptor = PolicyInterceptor(
        GovernancePolicy(
            name="bench", max_tool_calls=10**9, allowed_tools=list(TOOLS), blocked_patterns=list(PATTERNS)
        )
    )

    def judge(agent: str, args: dict[str, Any]) -> bool:
        return interceptor.intercept(
            ToolCallRequest(tool_name="kb.search", arguments=args, agent_id=agent)
        ).allowed

    return judge


REGO = """
package bastion
import rego.v1
default allow := false
allow if {
  input.tool in data.grants[input.agent]
  not blocked
}
blocked if {
  walk(input.args, [_, value])
  is_string(value)
  some p in data.patterns
  contains(lower(value), p)
}
blocked if {
  walk(input.args, [path, _])
  count(path) > 0
  key := path[count(path) - 1]
  is_string(key)
  some p in data.patterns
  contains(lower(key), p)
}
"""


def rego_engine() -> Callable[[str, dict[str, Any]], bool]:
    import regopy

    builder = regopy.Interpreter()
    builder.add_data({"grants": dict.fromkeys(AGENTS, TOOLS), "patterns": list(PATTERNS)})
    builder.add_module("bench.rego", REGO)
    bundle = builder.build(None, ["bastion/allow"])
    runner = regopy.Interpreter()

    def judge(agent: str, args: dict[str, Any]) -> bool:
        runner.set_input(regopy.Input({"agent": agent, "tool": "kb.search", "args": args}))
        out = runner.query_bundle_entrypoint(bundle, "bastion/allow")
        return str(out) == '{"expressions":[true]}'

    return judge


def cedar_engine() -> Callable[[str, dict[str, Any]], bool]:
    import cedarpy

    permits = "\n".join(
        f'permit(principal == Agent::"{a}", action == Action::"call", resource) '
        'when { [Tool::"kb.search", Tool::"fs.read"].contains(resource) };'
        for a in AGENTS
    )
    likes = " || ".join(f"context.text like {json.dumps('*' + p + '*')}" for p in PATTERNS)
    policies = cedarpy.PolicySet.from_str(
        f"{permits}\nforbid(principal, action, resource) when {{ {likes} }};"
    )
    entities = cedarpy.Entities.from_json_str("[]")

    def judge(agent: str, args: dict[str, Any]) -> bool:
        request = {
            "principal": f'Agent::"{agent}"',
            "action": 'Action::"call"',
            "resource": 'Tool::"kb.search"',
            "context": {"text": json.dumps(args, ensure_ascii=False)},
        }
        return cedarpy.is_authorized(request, policies, entities).allowed

    return judge


# --- measurement ------------------------------------------------------------------------------


def _time(fn: Callable[[Any], Any], items: list[Any]) -> list[int]:
    out: list[int] = []
    clock = time.perf_counter_ns
    for item in items:
        t0 = clock()
        fn(item)
        out.append(clock() - t0)
    return out


def _row(name: str, samples: list[int], total_s: float, n: int) -> str:
    samples.sort()
    p50 = samples[len(samples) // 2] / 1000
    p99 = samples[int(len(samples) * 0.99)] / 1000
    return f"{name:<40} {p50:>9.2f} {p99:>9.2f} {n / total_s:>14,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000, help="decisions per row per round")
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args()

    plain, decoding = BastionEngine(decode=False), BastionEngine(decode=True)
    peers: dict[str, Callable[[str, dict[str, Any]], bool]] = {}
    for name, make in (
        ("AGT PolicyInterceptor.intercept", agt_engine),
        ("regopy (compiled bundle)", rego_engine),
        ("cedarpy (pre-parsed PolicySet)", cedar_engine),
    ):
        try:
            peers[name] = make()
        except ImportError as exc:
            print(f"{name}: not installed ({exc}); pip install -e '.[bench]'")

    n, slow = opts.calls, max(1, opts.calls // 20)  # regopy is ~50x slower: fewer calls, same kind
    samples: dict[str, list[int]] = {}
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    fresh = iter(range(10**6, 10**9, max(n, 200)))  # each row of each round gets query strings of its own

    def pair(agent: str, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return agent, args

    rows: list[tuple[str, Callable[[Any], Any], Callable[[str, dict[str, Any]], Any], int]] = [
        ("bastion built-ins", plain.policy.decide, plain.context, n),
        ("bastion built-ins + context", lambda item: plain.judge(*item), pair, n),
        ("bastion built-ins + decoding", decoding.policy.decide, decoding.context, n),
    ]
    for name, judge in peers.items():
        rows.append((name, lambda item, j=judge: j(*item), pair, slow if "rego" in name else n))
    for _ in range(opts.rounds):
        for name, fn, make, count in rows:
            for agent, args in _workload(200, next(fresh)):
                fn(make(agent, args))  # warm-up
            items = [make(agent, args) for agent, args in _workload(count, next(fresh))]
            t0 = time.perf_counter()
            s = _time(fn, items)
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - t0
            counts[name] = counts.get(name, 0) + len(items)
            samples.setdefault(name, []).extend(s)

    print(
        f"policy decision, 100 grants x 50 patterns, {n} calls x {opts.rounds} rounds (regopy: {slow} per round)"
    )
    print(f"{'engine':<40} {'p50 us':>9} {'p99 us':>9} {'decisions/s':>14}")
    for name, values in samples.items():
        print(_row(name, values, totals[name], counts[name]))

    print("\nevasion probes (each must be denied) and benign arguments (each must be allowed)")
    judges: dict[str, Callable[[str, dict[str, Any]], bool]] = {
        "bastion built-ins + decoding": decoding.judge,
        "bastion built-ins (no decoding asked)": plain.judge,
        **peers,
    }
    for name, judge in judges.items():
        evaded = [probe for probe, args in EVASION_PROBES if _allowed(judge, "agent1", args)]
        false_alarms = sum(1 for args in BENIGN if not _allowed(judge, "agent1", args))
        shown = ", ".join(evaded[:5]) + (" ..." if len(evaded) > 5 else "")
        print(
            f"{name:<40} {len(evaded):>2}/{len(EVASION_PROBES)} evade  "
            f"{false_alarms}/{len(BENIGN)} false alarms  {shown}"
        )


def _allowed(judge: Callable[[str, dict[str, Any]], bool], agent: str, args: dict[str, Any]) -> bool:
    try:
        return judge(agent, args)
    except Exception:
        return False  # an engine that raises has not allowed the call


if __name__ == "__main__":
    main()
