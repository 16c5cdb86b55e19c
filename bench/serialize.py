"""Serialization on a tool call's path (issue 23, item 6): ``Journal.prepare``, and orjson against
the standard library's ``json`` for the canonical form the journal hashes.

Rows, each the best p50 of ``--rounds`` rounds of ``--calls`` calls (the machine is shared):

* ``Journal.prepare`` of a typical call (fs.read's request, a 5-byte answer, one reason): the
  entry hashed and its payloads encoded. Run with ``PYTHONPATH=<older checkout>/src`` for the
  before row (payloads encoded twice, once to store and once inside the entry's hash).
* ``canonical(fields)``: the standard library (baseline) against ``orjson.dumps`` with sorted
  keys, on the same entry's hashed fields, when orjson can be imported;
* whether orjson's bytes equal the standard library's on payloads a journal holds (non-ASCII
  text, floats, large integers, U+2028): the chain's hashes are over these bytes, so an encoder
  that differs on any of them cannot replace ``canonical`` without breaking every stored chain.
"""

from __future__ import annotations

import argparse
import importlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from _common import machine_facts
from bastion.observe.journal import Journal, canonical, digest

REQUEST = {"method": "tool.call", "params": {"name": "fs.read", "args": {"path": "hello.txt"}}}
REASONS = [{"rule": "grant/reads", "text": "granted by ToolGrant reads", "policy": "3f2a9c"}]
PROBES: list[Any] = [
    {"text": "é 日本 \u2028 \U0001f600"},
    {"f": 0.1 + 0.2, "g": 1e16, "h": 1e-7, "i": 123456789.125},
    {"n": 10**20},
    {"n": -(2**63)},
    {"nested": [{"b": 1, "a": 2}, [], {}], "s": '"\\\n\t\x00'},
]


def best_p50(fn: Callable[[], Any], calls: int, rounds: int) -> float:
    """Best round's median, in microseconds."""
    best = float("inf")
    for _ in range(rounds):
        durations: list[int] = []
        for _ in range(calls):
            t0 = time.perf_counter_ns()
            fn()
            durations.append(time.perf_counter_ns() - t0)
        durations.sort()
        best = min(best, durations[len(durations) // 2] / 1000)
    return best


def prepare() -> Any:
    return Journal.prepare(
        run_id="0f6f3c1e-7d1c-4c3e-9a51-2d7a3f1b9c10",
        seq=42,
        attempt=1,
        kind="tool",
        request=REQUEST,
        request_hash=digest(canonical(REQUEST)),
        decision="allow",
        reasons=REASONS,
        response={"content": "hello"},
        error=None,
        started_at=datetime(2026, 12, 7, 1, 2, 3, 456789, tzinfo=UTC),
        duration_us=120,
        prev_hash="ab" * 32,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(machine_facts())
    base = best_p50(prepare, args.calls, args.rounds)
    print(f"  Journal.prepare, typical call              p50 {base:7.2f} us")
    fields = prepare().entry.hashed_fields()
    stdlib = best_p50(lambda: canonical(fields), args.calls, args.rounds)
    print(f"  canonical(fields), json (baseline)         p50 {stdlib:7.2f} us  1.00x")
    try:
        orjson: Any = importlib.import_module("orjson")
    except ImportError:
        print("  orjson: not importable here; nothing to compare")
        return
    options = orjson.OPT_SORT_KEYS
    fast = best_p50(lambda: orjson.dumps(fields, option=options), args.calls, args.rounds)
    print(f"  canonical(fields), orjson {orjson.__version__:<16} p50 {fast:7.2f} us  {fast / stdlib:.2f}x")
    for probe in [fields, *PROBES]:
        try:
            same = orjson.dumps(probe, option=options) == canonical(probe)
            verdict = "same bytes" if same else f"DIFFERENT: {orjson.dumps(probe, option=options)[:60]!r}"
        except Exception as exc:  # orjson refuses some values json accepts (ints past 64 bits)
            verdict = f"orjson refuses it: {type(exc).__name__}: {exc}"
        print(f"    {canonical(probe)[:60]!r:<66} {verdict}")


if __name__ == "__main__":
    main()
