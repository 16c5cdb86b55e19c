"""Nothing is left behind: a stopped sandbox's tmpfs, `bastion up` stopped by SIGTERM, `bastion serve`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bastion.execution.sandbox._workspace import Workspace, is_mountpoint


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_workspace_whose_host_directory_was_removed_still_unmounts(tmp_path: Path) -> None:
    """A zombie's sandbox stops after its successor removed the zombie's attempt directory: the
    copy back fails, and the tmpfs must be unmounted anyway."""
    source = tmp_path / "attempt-1"
    source.mkdir()
    (source / "notes.txt").write_text("kept")
    mountpoint = tmp_path / "live"
    workspace = Workspace(source, mountpoint, size=1 << 20, uid=os.getuid(), gid=os.getgid())
    try:
        assert is_mountpoint(mountpoint)
        (mountpoint / "more.txt").write_text("written by the agent")
        shutil.rmtree(source)  # the successor's fresh start
        with pytest.raises(OSError):
            workspace.close()
        assert not is_mountpoint(mountpoint), "the tmpfs outlived its workspace"
        assert not mountpoint.exists()
    finally:
        if is_mountpoint(mountpoint):
            os.system(f"umount -l {mountpoint}")  # noqa: S605 - cleanup of a failed test only
