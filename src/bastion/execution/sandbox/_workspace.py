"""A size-capped workspace for isolating backends: a tmpfs per sandbox, synced with the caller's
directory.

Why a tmpfs and a copy rather than binding the caller's directory: ext4 here has no quotas, so a
bound host directory cannot be capped by the kernel, and the caller's directory may sit under a path
the sandbox's unprivileged uid cannot traverse. So the backend mounts a tmpfs of
``SandboxLimits.workspace_mib`` (``size=`` and ``nr_inodes=``, owned by the sandbox uid, ``nosuid,
nodev``) in its own runtime directory and binds that as ``/workspace``. The kernel enforces the cap:
a write past it fails with ENOSPC, and the host reports the ``workspace`` limit when it finds the
tmpfs full.

The caller's directory stays the host's view of the workspace:

* ``sync_in`` (at start and before every call) copies what the host put there and the tmpfs does not
  have yet or has older; a warm sandbox is thus given its agent after it started. The directory is
  held by an open descriptor, so it may be renamed meanwhile.
* ``close`` (on stop, also after a kill) copies the tmpfs back over it, so the host can inspect what
  the agent left; then unmounts the tmpfs and removes its mountpoint.

The copy never follows a symlink and copies only directories, regular files and symlinks (as
symlinks): the agent controls the tree, and a FIFO or a link to a host path cannot make the host
block or write outside the directory. Copying back, every link is judged by what it resolves to,
not by its text: it is followed component by component through the copied tree, through the other
links it meets (``s -> .`` makes ``s/s/s/../../..`` climb three levels), with the workspace as the
root it may not leave; a link that is absolute, climbs above the workspace at any step, or loops
is removed (on the host it would name the host's files). A component that does not exist is taken
as a directory, so a dangling link is kept only if it would stay inside whatever is created later.
Host code that reads what an agent left still never follows a link (``read_agent_file``): the
``process`` backend and ``bwrap`` without root have the agent write the caller's directory itself.

Tmpfs pages are charged to the memory cgroup of the process that writes them: what the agent keeps
in its workspace counts against its memory limit.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

_MS_NOSUID, _MS_NODEV = 0x2, 0x4
_MNT_DETACH = 0x2
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_COPY_CHUNK = 1024 * 1024
_MAX_LINK_HOPS = 40
"""Links followed while resolving one path, as the kernel's ELOOP limit."""
MAX_DEPTH = 128
"""Directories nested deeper than this in a workspace are not copied back (an agent can nest
thousands; copying them would exhaust the host's recursion and descriptors)."""


def mount_tmpfs(target: Path, *, size: int, inodes: int, uid: int, gid: int, mode: int = 0o700) -> None:
    options = f"size={size},nr_inodes={inodes},mode={mode:o},uid={uid},gid={gid}"
    if _libc.mount(b"tmpfs", os.fsencode(target), b"tmpfs", _MS_NOSUID | _MS_NODEV, options.encode()) != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"mount tmpfs on {target}: {os.strerror(number)}")


def unmount(target: Path) -> None:
    if _libc.umount2(os.fsencode(target), _MNT_DETACH) != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"umount {target}: {os.strerror(number)}")


def is_mountpoint(path: Path) -> bool:
    try:
        return os.path.ismount(path)
    except OSError:
        return False


def read_agent_file(root: Path, relative: str, *, limit: int = 1024 * 1024) -> bytes | None:
    """The first ``limit`` bytes of the regular file ``relative`` under ``root``, a directory an
    agent wrote; None when it is missing, not a regular file, or reached through a symlink. Every
    component is opened with ``O_NOFOLLOW`` from its parent's descriptor, so no link is followed,
    not even one swapped in while this reads."""
    parts = [part for part in relative.split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        return None
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        for part in parts[:-1]:
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = child
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        reader = os.open(parts[-1], flags, dir_fd=fd)
        try:
            if not stat.S_ISREG(os.fstat(reader).st_mode):
                return None
            chunks: list[bytes] = []
            size = 0
            while size < limit and (chunk := os.read(reader, min(_COPY_CHUNK, limit - size))):
                chunks.append(chunk)
                size += len(chunk)
            return b"".join(chunks)
        finally:
            os.close(reader)
    except OSError:
        return None
    finally:
        os.close(fd)


class Workspace:
    """The caller's workspace directory mirrored into a size-capped tmpfs at ``mountpoint``."""

    def __init__(self, source: Path, mountpoint: Path, *, size: int, uid: int, gid: int) -> None:
        self.mountpoint, self.size, self._uid, self._gid = mountpoint, size, uid, gid
        self._source = os.open(source, os.O_RDONLY | os.O_DIRECTORY)
        self._seen: dict[str, tuple[int, int]] = {}
        self._mounted = False
        try:
            mountpoint.mkdir(mode=0o700)
            mount_tmpfs(mountpoint, size=size, inodes=max(1024, size // 4096), uid=uid, gid=gid)
            self._mounted = True
            self.sync_in()
        except BaseException:
            self.close(copy_back=False)
            raise

    def sync_in(self) -> None:
        """Copy what the host added or changed in its directory since the last sync."""
        target = os.open(self.mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            _copy_tree(self._source, target, "", self._seen, owner=(self._uid, self._gid))
        finally:
            os.close(target)

    def full(self) -> bool:
        """True when the tmpfs has no block or no inode left: the agent hit the cap."""
        try:
            usage = os.statvfs(self.mountpoint)
        except OSError:
            return False
        return usage.f_bavail == 0 or usage.f_favail == 0

    def _capacity(self) -> int:
        """The tmpfs's size in bytes (its cap)."""
        usage = os.statvfs(self.mountpoint)
        return usage.f_blocks * usage.f_frsize

    def used_bytes(self) -> int:
        usage = os.statvfs(self.mountpoint)
        return (usage.f_blocks - usage.f_bfree) * usage.f_frsize

    def close(self, *, copy_back: bool = True) -> None:
        """Copy the tmpfs back to the host's directory (replacing its content), unmount, remove."""
        try:
            if self._mounted and copy_back:
                source = os.open(self.mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                try:
                    _clear(self._source)
                    # What the agent wrote is bounded by the tmpfs it wrote it in, by apparent
                    # size too: sparse files and hard links must not grow past it on the host.
                    budget = [self._capacity(), 0]
                    try:
                        _copy_tree(source, self._source, "", None, owner=None, budget=budget)
                    finally:  # a copy that broke off leaves no link that escapes either
                        drop_escaping_links(self._source)
                    if budget[1]:
                        log.warning(
                            "workspace copy-back left out %d files past the workspace's size", budget[1]
                        )
                finally:
                    os.close(source)
        finally:
            # The copy fails when the host's directory is gone (a zombie's, removed by the
            # attempt that took its run over): the tmpfs must not outlive it anyway.
            if self._mounted:
                unmount(self.mountpoint)
                self._mounted = False
            with contextlib.suppress(FileNotFoundError):
                self.mountpoint.rmdir()
            if self._source >= 0:
                os.close(self._source)
                self._source = -1


def _copy_tree(
    source: int,
    target: int,
    prefix: str,
    seen: dict[str, tuple[int, int]] | None,
    *,
    owner: tuple[int, int] | None,
    budget: list[int] | None = None,
    depth: int = 0,
) -> None:
    """Copy directories, regular files and symlinks from the directory fd ``source`` into
    ``target`` without following any link; with ``seen``, skip files whose (size, mtime) it has.
    With ``budget`` (``[bytes left, files left out]``, shared by the recursive calls), a file whose
    apparent size no longer fits is left out and counted; directories deeper than ``MAX_DEPTH``
    are left out."""
    for entry in list(os.scandir(source)):  # read whole: a failed copy leaves no open iterator
        name, key = entry.name, prefix + entry.name
        info = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(info.st_mode):
            if depth >= MAX_DEPTH:
                continue
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o755, dir_fd=target)
                if owner is not None:
                    os.chown(name, *owner, dir_fd=target, follow_symlinks=False)
            child_source = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=source)
            try:
                child_target = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=target)
            except OSError:
                os.close(child_source)
                continue  # the agent replaced the directory by something else: leave it
            try:
                _copy_tree(
                    child_source, child_target, key + "/", seen, owner=owner, budget=budget, depth=depth + 1
                )
            finally:
                os.close(child_source)
                os.close(child_target)
        elif stat.S_ISREG(info.st_mode):
            version = (info.st_size, info.st_mtime_ns)
            if seen is not None and seen.get(key) == version:
                continue
            if budget is not None:
                if info.st_size > budget[0]:
                    budget[1] += 1  # left out: it would not fit
                    continue
                budget[0] -= info.st_size
            _copy_file(source, target, name, info.st_mode & 0o755, owner)
            if seen is not None:
                seen[key] = version
        elif stat.S_ISLNK(info.st_mode):
            link = os.readlink(name, dir_fd=source)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=target)
            with contextlib.suppress(OSError):
                os.symlink(link, name, dir_fd=target)
                if owner is not None:
                    os.chown(name, *owner, dir_fd=target, follow_symlinks=False)


def drop_escaping_links(root: int) -> None:
    """Remove every symlink under the directory fd ``root`` that resolves outside it (see the
    module's docstring); never follows a link while walking."""
    escaping: list[str] = []  # all judged first, on the tree as the agent left it
    for parent, _, _, fd in os.fwalk(".", dir_fd=root, follow_symlinks=False):
        where = [part for part in parent.split("/") if part not in ("", ".")]
        for entry in os.scandir(fd):
            if entry.is_symlink() and not _stays_inside(root, where, os.readlink(entry.name, dir_fd=fd)):
                escaping.append("/".join([*where, entry.name]))
    for path in escaping:
        os.unlink(path, dir_fd=root)


def _stays_inside(root: int, where: list[str], link: str) -> bool:
    """Whether ``link``, found in the directory ``where`` (components from ``root``), resolves to a
    path inside ``root`` when every link on the way is followed as the kernel would."""
    pending = link.split("/")
    if link.startswith("/"):
        return False
    where, hops = list(where), 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not where:
                return False
            where.pop()
            continue
        try:
            info = os.stat("/".join([*where, part]), dir_fd=root, follow_symlinks=False)
        except OSError:
            where.append(part)  # missing: judged as a directory someone may create later
            continue
        if stat.S_ISLNK(info.st_mode):
            hops += 1
            target = os.readlink("/".join([*where, part]), dir_fd=root)
            if hops > _MAX_LINK_HOPS or target.startswith("/"):
                return False
            pending = target.split("/") + pending
        else:
            where.append(part)
    return True


def _copy_file(source: int, target: int, name: str, mode: int, owner: tuple[int, int] | None) -> None:
    reader = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=source)
    try:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            os.unlink(name, dir_fd=target)
        writer = os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode | 0o600, dir_fd=target
        )
        try:
            if owner is not None:
                os.fchown(writer, *owner)
            while chunk := os.read(reader, _COPY_CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(writer, view) :]
        finally:
            os.close(writer)
    finally:
        os.close(reader)


def _clear(directory: int) -> None:
    """Remove everything inside the directory fd (never following a link)."""
    for entry in list(os.scandir(directory)):
        if entry.is_dir(follow_symlinks=False):
            child = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=directory)
            try:
                _clear(child)
            finally:
                os.close(child)
            os.rmdir(entry.name, dir_fd=directory)
        else:
            os.unlink(entry.name, dir_fd=directory)
