"""Provenance benchmark: what labeling values and checking where arguments came from adds per call.

A run whose agent has already been handed 100 tool results of 10 KB each (prose with IBANs,
addresses and URLs in it; each result different) makes a payment call ``{recipient, amount,
memo}``. Rows, measured in interleaved rounds in one process:

* ``decide, no provenance rule``: ``CompiledPolicy.decide`` for the call, the namespace's grant
  alone (the baseline);
* ``decide + provenance``: the same grant and a Policy rule holding every argument of
  consequential tools to ``[input, trusted, agent]``, plus the grant's ``requireProvenance`` on
  ``recipient`` ``[input]``: with the recipient from the run's input (allowed), and from one of
  the results (refused, naming the seq);
* ``label a result``: what the gateway does per delivered result (``RunLabels.handed``: a list
  append) plus indexing it when the next check needs it (``significant`` + grams), per 10 KB.

Then memory per run for the labels (tracemalloc, the index after 100 results) and its entries.
Target (issue 20): at most 20 us p50 added per call with 100 results of 10 KB in the run.
Run: ``.venv/bin/python bench/provenance.py [--calls N] [--rounds R] [--results K]``.
"""

from __future__ import annotations

import argparse
import random
import string
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from bastion.execution.gateway._provenance import RunLabels
from bastion.policy import CallContext, Subject, ToolInfo, compile_policy

NOW = datetime(2026, 1, 1, tzinfo=UTC)
USER_IBAN = "DE89 3704 0044 0532 0130 00"
WORDS = [
    "invoice",
    "rent",
    "notice",
    "payment",
    "due",
    "please",
    "transfer",
    "amount",
    "account",
    "reference",
    "customer",
    "service",
    "thank",
    "you",
    "for",
    "your",
    "order",
    "shipping",
    "address",
    "contact",
    "support",
    "meeting",
    "agenda",
    "schedule",
    "review",
]


def _iban(rnd: random.Random) -> str:
    return (
        "GB" + "".join(rnd.choices(string.digits, k=2)) + "BUKB" + "".join(rnd.choices(string.digits, k=14))
    )


def _result(rnd: random.Random, size: int) -> dict[str, Any]:
    parts: list[str] = []
    length = 0
    while length < size:
        pick = rnd.random()
        if pick < 0.03:
            word = rnd.choice([_iban(rnd), f"https://x{rnd.randrange(1 << 30)}.example/pay"])
        elif pick < 0.5:  # words of its own: results are not all the same vocabulary
            word = "".join(rnd.choices(string.ascii_lowercase, k=rnd.randrange(3, 10)))
        else:
            word = rnd.choice(WORDS)
        parts.append(word)
        length += len(word) + 1
    return {"content": " ".join(parts)[:size], "id": rnd.randrange(1 << 30)}


def _manifests(provenance: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    spec: dict[str, Any] = {"subjects": {"agents": ["payer"]}, "tools": ["pay", "read"]}
    if provenance:
        spec["requireProvenance"] = {"pay": [{"paths": ["recipient"], "from": ["input"]}]}
    grants = [{"apiVersion": "bastion/v1", "kind": "ToolGrant", "metadata": {"name": "g"}, "spec": spec}]
    rules = [{"id": "trusted-actions", "provenance": {"effects": ["payment"]}}] if provenance else []
    policies = [
        {"apiVersion": "bastion/v1", "kind": "Policy", "metadata": {"name": "ifc"}, "spec": {"rules": rules}}
    ]
    return policies, grants


def _labels(results: list[dict[str, Any]]) -> RunLabels:
    labels = RunLabels({"task": f"Pay the rent of 1200 EUR to {USER_IBAN}"}, {}, lambda: ())
    labels.index()  # a namespace with provenance rules: the labels are kept call by call
    for seq, result in enumerate(results, start=1):
        labels.handed(seq, "read", "allow", (), result, None)
    labels.index().origins_of("warm")  # index what was handed, as the first check would
    return labels


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--results", type=int, default=100)
    parser.add_argument("--size", type=int, default=10_000)
    opts = parser.parse_args()
    rnd = random.Random(20)
    results: list[dict[str, Any]] = [_result(rnd, opts.size) for _ in range(opts.results)]
    middle: int = opts.results // 2
    injected = str(results[middle]["content"])
    stolen = next(w for w in injected.split() if w.startswith("GB"))

    labels = _labels(results)
    subject = Subject(name="payer", tools=("pay", "read"))
    pay = ToolInfo(name="pay", effect="payment")
    plain = compile_policy(*_manifests(False))
    guarded = compile_policy(*_manifests(True))
    benign = {"recipient": USER_IBAN, "amount": 1200, "memo": "rent for March"}
    attack = {"recipient": stolen.lower(), "amount": 1200, "memo": "rent for March"}
    assert plain.decide(CallContext(subject=subject, tool=pay, args=benign, now=NOW)).effect == "allow"
    ok = guarded.decide(
        CallContext(subject=subject, tool=pay, args=benign, now=NOW, provenance=labels.index())
    )
    assert ok.effect == "allow", ok.reasons
    refused = guarded.decide(
        CallContext(subject=subject, tool=pay, args=attack, now=NOW, provenance=labels.index())
    )
    assert refused.effect == "deny" and "seq" in refused.reasons[0], refused.reasons

    rows: dict[str, list[float]] = {}

    def measure(name: str, fn: Callable[[], object], calls: int) -> None:
        out = rows.setdefault(name, [])
        for _ in range(calls):
            t0 = time.perf_counter_ns()
            fn()
            out.append((time.perf_counter_ns() - t0) / 1000)

    def per_result() -> None:
        fresh = RunLabels({"task": "x"}, {}, lambda: ())
        fresh.index()
        fresh.handed(1, "read", "allow", (), results[rnd.randrange(len(results))], None)
        fresh.index().origins_of("warm")

    memos = iter(range(1 << 60))

    def args(recipient: str) -> dict[str, Any]:  # each call its own memo, as in life
        return {"recipient": recipient, "amount": 1200, "memo": f"rent for March, ref {next(memos)}"}

    for _ in range(opts.rounds):
        measure(
            "decide, no provenance rule",
            lambda: plain.decide(CallContext(subject=subject, tool=pay, args=args(USER_IBAN), now=NOW)),
            opts.calls,
        )
        measure(
            "decide + provenance, recipient from the input",
            lambda: guarded.decide(
                CallContext(
                    subject=subject, tool=pay, args=args(USER_IBAN), now=NOW, provenance=labels.index()
                )
            ),
            opts.calls,
        )
        measure(
            "decide + provenance, recipient from a result",
            lambda: guarded.decide(
                CallContext(subject=subject, tool=pay, args=args(stolen), now=NOW, provenance=labels.index())
            ),
            opts.calls,
        )
        measure(
            f"label one result of {opts.size // 1000} KB (hand + index)",
            per_result,
            max(20, opts.calls // 50),
        )

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = _labels(results)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()

    base = _p(rows["decide, no provenance rule"], 0.5)
    print(f"provenance: {opts.results} results of {opts.size} bytes in the run; {opts.rounds} rounds")
    print(f"{'row':58} {'p50 us':>8} {'p95 us':>8} {'added p50':>10}")
    for name, values in rows.items():
        added = _p(values, 0.5) - base if name.startswith("decide +") else float("nan")
        print(f"{name:58} {_p(values, 0.5):8.1f} {_p(values, 0.95):8.1f} {added:10.1f}")
    print(
        f"labels' memory per run: {(after - before) / 1e6:.1f} MB for {opts.results * opts.size / 1e6:.1f} MB "
        f"of results ({kept.index().size} entries; results themselves not counted)"
    )
    print("target: <= 20 us p50 added per call (issue 20)")


if __name__ == "__main__":
    main()
