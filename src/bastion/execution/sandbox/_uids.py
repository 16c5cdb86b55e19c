"""Host uids leased one per sandbox, for backends that run agent code as root's worker.

A worker running as root never runs agent code as root: each sandbox gets a host uid (and the gid
of the same number) of its own from ``DEFAULT_UIDS``, held by an exclusive lock on
``UID_LOCKS/<uid>.lock`` while the sandbox lives. The lock is the host's, whichever backend and
state directory: ``bwrap`` and ``process`` draw from the same range without colliding, and several
workers share it safely. No account needs to exist for these uids.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import stat
import subprocess
from pathlib import Path

from bastion.errors import SandboxError

DEFAULT_UIDS = range(1_800_000_000, 1_800_000_000 + 65536)
"""Host uids (and gids) leased one per sandbox when running as root; no account needs to exist."""
UID_LOCKS = Path("/run/bastion/uids")
"""Where the uid leases are held: one place per host, whatever each backend's state directory, since
the uids, and the cgroups and mounts named after them, are the host's (``/run`` is emptied at boot,
and a lease is a lock held by a live process)."""


def unreachable(path: Path) -> Path | None:
    """The first directory from ``/`` down to ``path`` that other users cannot traverse."""
    for directory in [*reversed(path.parents), path]:
        try:
            if not directory.stat().st_mode & stat.S_IXOTH:
                return directory
        except OSError:
            return directory
    return None


def reap(uid: int) -> bool:
    """Kill every process still running as ``uid``; whether none is left.

    A lease is a lock its worker holds, so the kernel frees it when the worker dies; processes an
    agent detached from its sandbox (the ``process`` backend has no pid namespace) may still run as
    that uid. Whoever leases the uid next must not share it with them (they could ptrace or signal
    the next tenant's agent), so every lease starts by sending SIGKILL to all of the uid's
    processes: ``kill -9 -1`` run as that uid reaches exactly those, in one system call.
    """
    if os.geteuid() != 0:
        return True  # unprivileged workers lease no uids of the host's (they run as themselves)
    for _ in range(5):  # a process forking in the instant of the kill: once more
        if not _running_as(uid):
            return True
        subprocess.run(  # a fixed command, no shell
            ["/bin/kill", "-9", "-1"],
            user=uid,
            group=uid,
            extra_groups=[],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
    return not _running_as(uid)


def _running_as(uid: int) -> bool:
    """Whether any process (not yet reaped zombie) has ``uid`` as its real, effective or saved uid."""
    wanted = str(uid)
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
        except OSError:
            continue  # gone meanwhile
        if fields.get("State", "").strip().startswith("Z"):
            continue
        if wanted in fields.get("Uid", "").split()[:3]:
            return True
    return False


class UidLease:
    """An exclusive host uid for one sandbox: a lock on ``<dir>/<uid>.lock`` held while it lives."""

    _start = itertools.count()

    def __init__(self, directory: Path, uids: range) -> None:
        offset = next(self._start)
        for index in range(len(uids)):
            uid = uids[(offset + index) % len(uids)]
            fd = os.open(directory / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            if not reap(uid):  # an orphan of a dead sandbox we cannot end: never share its uid
                os.close(fd)
                continue
            self.uid, self._fd = uid, fd
            return
        raise SandboxError(f"all {len(uids)} sandbox uids are in use")

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
