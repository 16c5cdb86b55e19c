"""Fetch the wheels the demo's agent images need into a wheelhouse, at install time.

``make demo`` runs this right after installing Bastion, while it may use the package index anyway,
so that ``bastion demo`` builds the ``sdk-packer`` image (``openai`` and its dependencies) from these
local wheels only (``pip --no-index``): the demo itself needs no network. Versions are pinned by
``requirements.lock``, as for Bastion's own install; wheels only, for the image's base interpreter.

Usage: ``python scripts/demo_wheelhouse.py MANIFESTS_DIR WHEELHOUSE_DIR``. The wheelhouse is
replaced whole (fetched beside it, then renamed), so it never mixes wheels of two locks.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"


def wanted(manifests: Path) -> dict[str, list[str]]:
    """Requirements by image base (``python3.11`` -> ``3.11``) of every Agent in ``manifests``."""
    by_version: dict[str, set[str]] = {}
    for path in sorted(manifests.glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if not isinstance(doc, dict) or doc.get("kind") != "Agent":
                continue
            spec: dict[str, Any] = doc.get("spec") or {}
            requirements = spec.get("requirements") or []
            if requirements:
                version = str(spec.get("image", "python3.11")).removeprefix("python")
                by_version.setdefault(version, set()).update(str(r) for r in requirements)
    return {version: sorted(reqs) for version, reqs in by_version.items()}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    manifests, dest = Path(argv[0]), Path(argv[1])
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for version, requirements in wanted(manifests).items():
        print(f"  python{version}: {' '.join(requirements)}", flush=True)
        argv_pip = [
            sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--only-binary=:all:", "--python-version", version, "--implementation", "cp",
            "--constraint", str(LOCK), "--dest", str(staging), "--", *requirements,
        ]  # fmt: skip
        done = subprocess.run(argv_pip, capture_output=True, text=True, check=False)  # noqa: S603
        noise = "is ignored: it is neither a file nor a directory"
        for line in (done.stdout + done.stderr).splitlines():
            if line.strip() and noise not in line:
                print(line, file=sys.stderr)
        if done.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            print(f"could not fetch the demo's wheels (pip exited {done.returncode})", file=sys.stderr)
            return 1
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    wheels = sorted(p.name for p in dest.glob("*.whl"))
    size = sum(p.stat().st_size for p in dest.glob("*.whl"))
    print(f"  {len(wheels)} wheels, {size / 1e6:.1f} MB in {dest}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
