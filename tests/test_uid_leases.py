"""A sandbox uid is never shared with what a dead sandbox left running.

A lease is a lock its worker holds: when the worker is killed the kernel frees it at once, while
processes an agent detached from a ``process`` sandbox may still run as that uid. The next tenant's
sandbox that leases the uid would share it with them (ptrace, signals, ``/proc/<pid>/environ``), so
a lease first ends every process of its uid.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from bastion.execution.sandbox._uids import UidLease

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="uid leases are taken by workers running as root")

UID = 1_800_065_432


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state


def test_a_lease_ends_the_orphans_a_dead_sandbox_left_on_its_uid(tmp_path: Path) -> None:
    first = UidLease(tmp_path, range(UID, UID + 1))
    assert first.uid == UID
    # The agent detaches a child of its own; then its worker dies: the lock goes, the child stays.
    orphan = subprocess.Popen(["sleep", "120"], user=UID, group=UID, extra_groups=[], start_new_session=True)
    try:
        first.release()
        assert _alive(orphan.pid)
        # Another tenant's sandbox leases the same uid (the only one in the range).
        second = UidLease(tmp_path, range(UID, UID + 1))
        try:
            assert second.uid == UID
            orphan.wait(timeout=5)
            assert orphan.returncode == -9, "the orphan still runs beside the uid's new sandbox"
        finally:
            second.release()
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


def test_a_lease_leaves_other_uids_processes_alone(tmp_path: Path) -> None:
    other = subprocess.Popen(
        ["sleep", "120"], user=UID + 1, group=UID + 1, extra_groups=[], start_new_session=True
    )
    try:
        lease = UidLease(tmp_path, range(UID, UID + 1))
        lease.release()
        time.sleep(0.1)
        assert other.poll() is None and _alive(other.pid)
    finally:
        other.kill()
        other.wait()
