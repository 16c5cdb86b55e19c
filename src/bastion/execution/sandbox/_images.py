"""Agent images: the read-only Python environment an agent runs in, built once per distinct set.

An Agent names a base (``spec.image``, e.g. ``python3.11``: Debian's interpreter under ``/usr``,
the only host tree a bwrap sandbox sees) and optionally ``spec.requirements``. The sandbox has no
network, so the requirements are installed before it starts, by the worker's own pip with
``--target``, from whatever registries pip is configured to reach (pip's configuration, never a
host name here). Wheels only (``--only-binary=:all:``): installing a wheel unpacks it, while
building an sdist would run the package's code on the worker's host.

With a wheelhouse (a directory of wheels, ``Settings.image_wheelhouse``), pip installs from it
alone (``--no-index``, every package pinned to the wheelhouse's version of it): a worker without
network builds images from wheels fetched beforehand, and the digest covers those wheels too.

One environment per digest of (base, requirements[, wheels]), under ``root/<digest>/site-packages``:
built in a staging directory, made read-only, renamed into place (a reader sees a whole image or
none), with one build at a time per digest across threads and processes (a file lock). When the
builder may (root, on a filesystem that supports it), every file and directory is also made
immutable, so that even a root ``process`` sandbox cannot change an image; ``remove`` undoes that.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from bastion.api import IMAGE_BASES
from bastion.errors import SandboxError

from ._base import Image

BASES: dict[str, Path] = {"python3.11": Path("/usr/bin/python3.11")}
"""Each base's interpreter: a host path the backends can mount read-only (under ``/usr``)."""
assert set(BASES) == set(IMAGE_BASES), "api.IMAGE_BASES and the interpreters here must agree"

_FORMAT = 1
"""Part of every digest: bump it when the layout or the way of building changes."""
_MANIFEST = "image.json"
_TAIL_LINES = 12
"""pip's last lines kept for a failure's reason."""

Phase = Literal["started", "waiting", "output", "cached", "done", "failed"]


@dataclass(frozen=True, kw_only=True)
class BuildProgress:
    """One step of resolving an image, for the run's events."""

    phase: Phase
    digest: str
    message: str
    seconds: float | None = None
    """For ``done`` and ``failed``: how long the build took."""
    size_bytes: int | None = None
    """For ``done`` and ``cached``: the installed size."""


Progress = Callable[[BuildProgress], None]


class ImageBuildFailed(SandboxError):
    """The requirements could not be installed; the reason quotes pip's error."""


def normalized_requirements(requirements: Sequence[str]) -> tuple[str, ...]:
    """Requirements with runs of whitespace made one space, duplicates dropped, sorted: equal sets, equal digests."""
    return tuple(sorted({" ".join(r.split()) for r in requirements if r.strip()}))


def image_digest(base: str, requirements: Sequence[str], *, wheels: Sequence[str] = ()) -> str:
    """sha256 of the base and the exact (normalized) requirements, and of the wheels (``name:sha256``
    of each file) an image is built from when it is built from a wheelhouse alone."""
    key: dict[str, object] = {
        "format": _FORMAT,
        "base": base,
        "requirements": normalized_requirements(requirements),
    }
    if wheels:
        key["wheels"] = sorted(wheels)
    canonical = json.dumps(key, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _wheelhouse_listing(wheelhouse: Path) -> list[Path]:
    try:
        return sorted(p for p in wheelhouse.iterdir() if p.name.endswith(".whl") and p.is_file())
    except OSError as exc:
        raise SandboxError(
            f"the image wheelhouse {wheelhouse} cannot be read: {exc.strerror or exc}",
            hint="point BASTION_IMAGE_WHEELHOUSE at a directory of wheels (`make demo` fills .venv/wheelhouse)",
        ) from None


_WHEEL_DIGESTS: dict[tuple[str, int, int, int, int, int], str] = {}
"""sha256 of each wheel read, by (path, device, inode, size, mtime, ctime): a wheel is hashed once
per change, not on every resolve (ctime moves with any write, whatever the writer does to mtime)."""
_WHEEL_DIGESTS_LOCK = threading.Lock()


def _wheel_digest(wheel: Path) -> str:
    """The wheel's content digest: wheelhouses whose wheels share names and sizes but not bytes
    (a rebuilt or swapped wheel) must not give one image digest (hosts may share an image root)."""
    st = wheel.stat()
    key = (str(wheel), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _WHEEL_DIGESTS_LOCK:
        known = _WHEEL_DIGESTS.get(key)
    if known is not None:
        return known
    sha = hashlib.sha256()
    with wheel.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    found = sha.hexdigest()
    with _WHEEL_DIGESTS_LOCK:
        if len(_WHEEL_DIGESTS) > 4096:
            _WHEEL_DIGESTS.clear()
        _WHEEL_DIGESTS[key] = found
    return found


def _pins(wheels: Sequence[Path]) -> list[str]:
    """``name==version`` of each package the wheelhouse holds in one version (its file names'
    first two fields, PEP 427). A package held in several versions (two agents pinning different
    ones) is not pinned: two pins of one name would make every build that needs it unsatisfiable,
    and pip, reading no configuration and no index, can only choose among the wheelhouse's."""
    versions: dict[str, set[str]] = {}
    for wheel in wheels:
        name, version, *_ = wheel.name.split("-")
        versions.setdefault(re.sub(r"[-_.]+", "_", name).lower(), set()).add(version)
    return [f"{name}=={next(iter(found))}" for name, found in sorted(versions.items()) if len(found) == 1]


class ImageCache:
    """Builds and keeps images under ``root``; safe to share between threads, workers and hosts
    that share the directory."""

    def __init__(
        self,
        root: Path,
        *,
        pip: Sequence[str] | None = None,
        timeout_seconds: float = 900.0,
        wheelhouse: Path | None = None,
    ) -> None:
        """Args:
        root: the cache directory (created, mode 0755: sandboxes of other uids read images).
        pip: the pip command; default the worker's own (``python -m pip``).
        timeout_seconds: a build running longer is killed and fails.
        wheelhouse: build from the wheels in this directory only, never from an index.
        """
        self.root = root
        self.wheelhouse = wheelhouse
        self._pip = list(pip) if pip is not None else [sys.executable, "-m", "pip"]
        self._timeout = timeout_seconds
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def path(self, digest: str) -> Path:
        return self.root / digest

    def digest(self, base: str, requirements: Sequence[str]) -> str:
        """The digest ``resolve`` gives this base and these requirements (with this wheelhouse)."""
        wanted = normalized_requirements(requirements)
        if not wanted or self.wheelhouse is None:
            return image_digest(base, wanted)
        wheels = _wheelhouse_listing(self.wheelhouse)
        return image_digest(base, wanted, wheels=[f"{w.name}:{_wheel_digest(w)}" for w in wheels])

    def resolve(
        self, base: str, requirements: Sequence[str] = (), *, progress: Progress | None = None
    ) -> Image:
        """The image for ``base`` with ``requirements``, built first if it is not cached.

        Raises:
            SandboxError: the base is unknown or its interpreter is missing.
            ImageBuildFailed: pip could not install the requirements.
        """
        report: Progress = progress or (lambda _: None)
        interpreter = BASES.get(base)
        if interpreter is None:
            raise SandboxError(
                f"unknown image base {base!r}", field="spec.image", hint=f"use one of {', '.join(BASES)}"
            )
        if not interpreter.exists():
            raise SandboxError(
                f"image base {base!r} needs {interpreter}, which this machine does not have",
                field="spec.image",
                hint=f"install it on the worker's host (Debian: apt-get install {interpreter.name})",
            )
        wanted = normalized_requirements(requirements)
        digest = self.digest(base, wanted)
        if not wanted:
            return Image(name=base, digest=digest, interpreter=interpreter)
        image = Image(
            name=base,
            digest=digest,
            interpreter=interpreter,
            site_packages=self.path(digest) / "site-packages",
        )
        if (size := self._cached_size(digest)) is not None:
            report(BuildProgress(phase="cached", digest=digest, message="cached", size_bytes=size))
            return image
        with self._exclusive(digest, report):
            if (size := self._cached_size(digest)) is not None:
                report(
                    BuildProgress(
                        phase="cached", digest=digest, message="built by another run", size_bytes=size
                    )
                )
                return image
            self._build(base, wanted, digest, report)
        return image

    def remove(self, digest: str) -> None:
        """Delete one image (clearing the immutable flags first); a missing one is no error."""
        _remove_tree(self.path(digest))

    def remove_all(self) -> None:
        """Delete every image and every leftover of an interrupted build."""
        if self.root.exists():
            for child in self.root.iterdir():
                _remove_tree(child)

    # --- building ---------------------------------------------------------------------

    def _cached_size(self, digest: str) -> int | None:
        try:
            manifest = json.loads((self.path(digest) / _MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        size: object = (
            cast(dict[str, object], manifest).get("sizeBytes") if isinstance(manifest, dict) else None
        )
        return size if isinstance(size, int) else 0

    @contextlib.contextmanager
    def _exclusive(self, digest: str, report: Progress) -> Generator[None]:
        """One build per digest: a thread lock here, a file lock for other processes."""
        with self._locks_lock:
            lock = self._locks.setdefault(digest, threading.Lock())
        if not lock.acquire(blocking=False):
            report(
                BuildProgress(phase="waiting", digest=digest, message="waiting for a build of the same image")
            )
            lock.acquire()
        try:
            locks = self.root / ".locks"
            locks.mkdir(parents=True, exist_ok=True)
            self.root.chmod(0o755)
            fd = os.open(locks / f"{digest}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    report(
                        BuildProgress(
                            phase="waiting", digest=digest, message="waiting for another worker's build"
                        )
                    )
                    fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)
        finally:
            lock.release()

    def _build(self, base: str, requirements: tuple[str, ...], digest: str, report: Progress) -> None:
        started = time.monotonic()
        report(
            BuildProgress(
                phase="started", digest=digest, message=f"building {base} with {', '.join(requirements)}"
            )
        )
        staging = Path(tempfile.mkdtemp(prefix=".build-", dir=self.root))
        try:
            tail = self._pip_install(base, requirements, staging / "site-packages", digest, report)
            if tail is not None:
                seconds = time.monotonic() - started
                reason = f"pip could not install {', '.join(requirements)}: {tail}"
                report(BuildProgress(phase="failed", digest=digest, message=reason, seconds=seconds))
                raise ImageBuildFailed(
                    f"image build failed: {reason}",
                    field="spec.requirements",
                    hint="check the requirement names and versions (wheels only), and that the registries pip uses have them",
                )
            size = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file() and not p.is_symlink())
            manifest = {"digest": digest, "base": base, "requirements": list(requirements), "sizeBytes": size}
            (staging / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            _make_read_only(staging)
            try:
                staging.rename(self.path(digest))
            except OSError:  # the same image was put in place by a builder that ignored our lock
                _remove_tree(staging)
            _make_immutable(self.path(digest))
        except BaseException:
            _remove_tree(staging)
            raise
        seconds = time.monotonic() - started
        report(
            BuildProgress(
                phase="done",
                digest=digest,
                message=f"built in {seconds:.1f} s, {size / (1024 * 1024):.1f} MiB",
                seconds=seconds,
                size_bytes=size,
            )
        )

    def _pip_install(
        self, base: str, requirements: tuple[str, ...], target: Path, digest: str, report: Progress
    ) -> str | None:
        """Run pip; None on success, else the tail of its output."""
        version = base.removeprefix("python")
        source: list[str] = []
        env: dict[str, str] | None = None
        if self.wheelhouse is not None:
            # No index, every package at the wheelhouse's version, and none of pip's own
            # configuration (PIP_* variables, pip.conf files): its find-links would otherwise
            # supply any requirement the wheelhouse lacks.
            inherited = os.environ.items()  # noqa: TID251 -- pip's environment, not Bastion's configuration
            env = {k: v for k, v in inherited if not k.upper().startswith("PIP_")}
            env["PIP_CONFIG_FILE"] = os.devnull  # pip then reads no configuration file at all
            pins = target.parent / "wheelhouse-pins.txt"
            pins.write_text("".join(f"{pin}\n" for pin in _pins(_wheelhouse_listing(self.wheelhouse))))
            source = ["--no-index", "--find-links", str(self.wheelhouse), "--constraint", str(pins)]
        argv = [
            *self._pip,
            "install",
            *source,
            "--target",
            str(target),
            "--only-binary=:all:",
            "--python-version",
            version,
            "--implementation",
            "cp",
            "--no-input",
            "--disable-pip-version-check",
            "--no-warn-script-location",
            "--progress-bar",
            "off",
            "--",
            *requirements,
        ]
        tail: list[str] = []
        try:
            process = subprocess.Popen(  # noqa: S603 -- pip with validated requirement strings
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                env=env,
                text=True,
                errors="replace",
            )
        except OSError as exc:
            return f"pip could not be started: {exc}"
        timer = threading.Timer(self._timeout, process.kill)
        timer.start()
        try:
            assert process.stdout is not None
            for raw in process.stdout:
                line = raw.rstrip("\n")
                if not line.strip():
                    continue
                tail = [*tail[-(_TAIL_LINES - 1) :], line]
                report(BuildProgress(phase="output", digest=digest, message=line))
            code = process.wait()
        finally:
            timer.cancel()
            if process.poll() is None:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
        if source:
            (target.parent / "wheelhouse-pins.txt").unlink(missing_ok=True)
        if code == 0:
            return None
        if code < 0 and not timer.is_alive():
            return f"the build took longer than {self._timeout:g} s and was stopped"
        errors = [line for line in tail if line.startswith("ERROR")] or tail[-3:]
        return " ".join(errors) or f"pip exited with code {code}"


# --- read-only trees --------------------------------------------------------------------

_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_IMMUTABLE_FL = 0x00000010


def _walk(root: Path) -> list[Path]:
    """Every path under ``root`` (not following symlinks), deepest first, ``root`` last."""
    return [*sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True), root]


def _make_read_only(root: Path) -> None:
    for path in _walk(root):
        if path.is_symlink():
            continue
        mode = 0o555 if path.is_dir() else (0o555 if path.stat().st_mode & stat.S_IXUSR else 0o444)
        path.chmod(mode)


def _set_immutable(path: Path, on: bool) -> bool:
    """Set or clear FS_IMMUTABLE_FL; False where the filesystem or our privileges do not allow it."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags)
    except OSError:
        return False
    try:
        current = struct.unpack("i", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, struct.pack("i", 0)))[0]
        wanted = current | _FS_IMMUTABLE_FL if on else current & ~_FS_IMMUTABLE_FL
        if wanted != current:
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("i", wanted))
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _make_immutable(root: Path) -> None:
    # Children first would not matter for the flag, but a failure on the first one means the
    # filesystem or our privileges do not support it: stop there instead of trying every file.
    for path in reversed(_walk(root)):
        if path.is_symlink():
            continue
        if not _set_immutable(path, True):
            return


def _remove_tree(root: Path) -> None:
    if not root.exists() and not root.is_symlink():
        return
    if root.is_dir() and not root.is_symlink():
        for path in _walk(root):
            if not path.is_symlink():
                _set_immutable(path, False)
                with contextlib.suppress(OSError):
                    path.chmod(stat.S_IRWXU)
        shutil.rmtree(root, ignore_errors=True)
    else:
        _set_immutable(root, False)
        with contextlib.suppress(OSError):
            root.unlink()


__all__ = [
    "BASES",
    "BuildProgress",
    "ImageBuildFailed",
    "ImageCache",
    "image_digest",
    "normalized_requirements",
]
