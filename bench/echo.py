"""The echo check's cost per response: ``find_echo`` on 1 KB, 10 KB and 100 KB responses of a
few realistic shapes (JSON text, base64 of random bytes, random binary), none carrying the
secret, so every decoding is tried. Prints the median of a few runs in milliseconds.

Usage: ``python bench/echo.py [--repeat N]``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import statistics
import time
from collections.abc import Callable

from bastion.secrets import find_echo

SECRET = "Zk4q-Tw9p-Lx2m-Rb7v-Hs3n"  # noqa: S105 (a made-up value the bench searches for)
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
]


def _json(size: int) -> tuple[list[str], list[bytes]]:
    rng = random.Random(size)
    items: list[dict[str, object]] = []
    while len(json.dumps(items)) < size:
        items.append({"id": rng.randrange(10**9), "name": " ".join(rng.choices(WORDS, k=6)), "ok": True})
    return [json.dumps(items)[:size]], []


def _base64(size: int) -> tuple[list[str], list[bytes]]:
    return [base64.b64encode(os.urandom(size * 3 // 4)).decode()], []


def _binary(size: int) -> tuple[list[str], list[bytes]]:
    return [], [os.urandom(size)]


SHAPES: dict[str, Callable[[int], tuple[list[str], list[bytes]]]] = {
    "json": _json,
    "base64": _base64,
    "binary": _binary,
}


def main() -> None:
    parser = argparse.ArgumentParser(description="the echo check's cost per response")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"{'shape':<8} {'size':>7} {'median ms':>10} {'max ms':>8}")
    for name, shape in SHAPES.items():
        for size in (1_000, 10_000, 100_000):
            texts, blobs = shape(size)
            times: list[float] = []
            found = None
            for _ in range(args.repeat):
                started = time.perf_counter()
                found = find_echo({"api-key": SECRET}, texts, blobs)
                times.append((time.perf_counter() - started) * 1000)
            note = "" if found is None else f"  (found: {found.form})"
            print(f"{name:<8} {size:>7} {statistics.median(times):>10.1f} {max(times):>8.1f}{note}")


if __name__ == "__main__":
    main()
