"""Fail when requirements.lock no longer pins what is installed, or was made from other dependencies.

The lock (``make lock``) pins every package of every extra; installs use it as pip constraints, so a
new upstream release cannot change what a clean clone installs. This check, run by ``make test`` and
so by CI, catches the two ways the lock goes stale without anyone noticing:

* ``pyproject.toml``'s dependencies changed after the lock was made (its digest line no longer
  matches), so the lock may not cover a new or changed requirement;
* a package is installed in the environment at a version the lock does not pin (a requirement the
  lock has never heard of is installed unpinned).

With ``--stamp`` it writes the digest line instead (``make lock`` calls it after ``uv pip compile``).
It reads only local files: no network, no resolver.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"
DIGEST_PREFIX = "# pyproject-dependencies: sha256:"
# Installers, not dependencies: a venv always has them, at whatever version it was made with.
IGNORED = {"pip", "setuptools", "wheel", "bastion"}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dependencies_digest(pyproject: Path = PYPROJECT) -> str:
    project = tomllib.loads(pyproject.read_text())["project"]
    declared = {
        "requires-python": project.get("requires-python"),
        "dependencies": sorted(project.get("dependencies", [])),
        "optional-dependencies": {k: sorted(v) for k, v in project.get("optional-dependencies", {}).items()},
    }
    return hashlib.sha256(json.dumps(declared, sort_keys=True).encode()).hexdigest()


def read_pins(lock: Path = LOCK) -> tuple[dict[str, str], str | None]:
    pins: dict[str, str] = {}
    digest: str | None = None
    for line in lock.read_text().splitlines():
        if line.startswith(DIGEST_PREFIX):
            digest = line.removeprefix(DIGEST_PREFIX).strip()
        elif match := _PIN.match(line):
            pins[_canonical(match.group(1))] = match.group(2)
    return pins, digest


def problems() -> list[str]:
    if not LOCK.exists():
        return [f"{LOCK.name} is missing: run `make lock`"]
    pins, digest = read_pins()
    found: list[str] = []
    if digest != dependencies_digest():
        found.append(
            f"{LOCK.name} is stale: the dependencies in {PYPROJECT.name} changed since it was made; "
            "run `make lock` and commit both files"
        )
    for dist in importlib.metadata.distributions():
        name = _canonical(dist.metadata["Name"])
        if name in IGNORED:
            continue
        pinned = pins.get(name)
        if pinned is None:
            found.append(f"{name}=={dist.version} is installed but not pinned in {LOCK.name}: run `make lock`")
        elif pinned != dist.version:
            found.append(
                f"{name}=={dist.version} is installed but {LOCK.name} pins {pinned}: "
                "reinstall with `make clean test`, or run `make lock` if the pin should move"
            )
    return found


def stamp() -> None:
    lines = [line for line in LOCK.read_text().splitlines() if not line.startswith(DIGEST_PREFIX)]
    at = 1 if lines and lines[0].startswith("#") else 0
    while at < len(lines) and lines[at].startswith("#"):
        at += 1
    lines.insert(at, f"{DIGEST_PREFIX}{dependencies_digest()}")
    LOCK.write_text("\n".join(lines) + "\n")


def main(argv: list[str]) -> int:
    if argv[1:] == ["--stamp"]:
        stamp()
        return 0
    found = problems()
    for problem in found:
        print(f"lock: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
