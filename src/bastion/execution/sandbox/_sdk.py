"""The read-only copy of ``bastion.agent`` every sandbox imports (the SDK is stdlib-only, so a copy of
its modules is all an interpreter without site-packages needs)."""

from __future__ import annotations

import hashlib
import shutil
import stat
import tempfile
from pathlib import Path


def copy_sdk(root: Path) -> None:
    """Copy ``bastion/__init__.py`` and ``bastion/agent/*.py`` under ``root``, read-only."""
    source = Path(__file__).resolve().parents[2]
    target = root / "bastion"
    (target / "agent").mkdir(parents=True)
    shutil.copyfile(source / "__init__.py", target / "__init__.py")
    for module in (source / "agent").glob("*.py"):
        shutil.copyfile(module, target / "agent" / module.name)
    for path in [*target.rglob("*.py")]:
        path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    for path in (target / "agent", target, root):
        path.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)


def sdk_sources() -> list[Path]:
    source = Path(__file__).resolve().parents[2]
    return [source / "__init__.py", *sorted((source / "agent").glob("*.py"))]


def shared_sdk(cache: Path) -> Path:
    """The cache's copy of this SDK version, made once (built aside, then renamed into place)."""
    version = hashlib.sha256(b"".join(p.read_bytes() for p in sdk_sources())).hexdigest()[:16]
    target = cache / version
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache))
    copy_sdk(staging)
    try:
        staging.rename(target)
    except OSError:  # another process put the same version in place first
        remove_tree(staging)
    return target


def remove_tree(root: Path) -> None:
    # Directories are read-only; make them writable again so the files in them can be removed.
    for path in (root, *[p for p in root.rglob("*") if p.is_dir()]):
        path.chmod(stat.S_IRWXU)
    shutil.rmtree(root, ignore_errors=True)
