"""Workspace file tools: ``fs.read``, ``fs.write`` and ``fs.list``, confined to ``ctx.workspace``.

Paths are relative POSIX paths; absolute paths, ``..`` and NUL bytes are refused. Confinement
walks the path from a descriptor of the workspace one component at a time, each opened with
``O_NOFOLLOW`` relative to its parent's descriptor (``openat``), and opens the last component with
``O_NOFOLLOW`` too, so no symlink is ever followed. Checking ``realpath`` and then opening the path
would leave a window in which a symlink swapped in is followed; walking by descriptors leaves none.
The price is that symlinks are refused even when they point inside the workspace (``fs.list``
shows them). Errors name workspace-relative paths only.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import heapq
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bastion.errors import ToolCallFailed

from ._base import ToolContext

MAX_ENTRIES = 10_000
"""Entries fs.list returns at most (the first ones by name); more sets ``truncated``."""
_MAX_PATH = 4096
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_REASONS = {
    errno.ENOENT: "does not exist",
    errno.ENOTDIR: "is not a directory",
    errno.EISDIR: "is a directory",
    errno.EACCES: "is not accessible (permission denied)",
    errno.EPERM: "is not accessible (operation not permitted)",
    errno.ENAMETOOLONG: "has a name that is too long",
    errno.ENOSPC: "cannot be written: no space left in the workspace",
    errno.EDQUOT: "cannot be written: the workspace quota is exhausted",
    errno.EFBIG: "cannot be written: the file is too large",
    errno.EROFS: "cannot be written: the workspace is read-only",
    errno.ENXIO: "is not a regular file",
}


def _check_args(
    tool: str, args: dict[str, Any], types: Mapping[str, type], required: tuple[str, ...]
) -> None:
    for key in args:
        if key not in types:
            raise ToolCallFailed(tool, f"unknown argument {key!r}; expected {sorted(types)}")
    for key in required:
        if key not in args:
            raise ToolCallFailed(tool, f"missing argument {key!r}")
    for key, kind in types.items():
        if key in args and not isinstance(args[key], kind):
            raise ToolCallFailed(
                tool, f"argument {key!r} must be a {'boolean' if kind is bool else 'string'}"
            )


def _parts(tool: str, path: str, *, root_ok: bool = False) -> list[str]:
    if "\0" in path:
        raise ToolCallFailed(tool, "argument 'path' contains a NUL byte")
    if path.startswith("/"):
        raise ToolCallFailed(tool, "argument 'path' must be relative to the workspace, not absolute")
    if len(path) > _MAX_PATH:
        raise ToolCallFailed(tool, f"argument 'path' is longer than {_MAX_PATH} characters")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ToolCallFailed(tool, "argument 'path' must not contain '..'")
    if not parts and not root_ok:
        raise ToolCallFailed(tool, "argument 'path' must name a file in the workspace")
    return parts


def _failure(tool: str, exc: OSError, rel: str, parent: int | None = None, name: str = "") -> ToolCallFailed:
    """Explain ``exc`` for the agent; never quotes ``exc`` itself, which carries host paths."""
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK) and parent is not None:
        try:
            if stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
                return ToolCallFailed(tool, f"path {rel!r} is a symlink; file tools do not follow symlinks")
        except OSError:
            pass
    reason = _REASONS.get(exc.errno or 0) or f"failed: {os.strerror(exc.errno or errno.EIO)}"
    return ToolCallFailed(tool, f"path {rel!r} {reason}")


def _open_dir(tool: str, workspace: Path, parts: list[str], *, create: bool = False) -> int:
    """A descriptor of the directory ``parts`` names, reached without following any symlink."""
    try:
        fd = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        raise ToolCallFailed(tool, "the run's workspace is not available") from None
    try:
        for i, part in enumerate(parts):
            rel = "/".join(parts[: i + 1])
            try:
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    # Made meanwhile? Then the O_NOFOLLOW open below decides whether it will do.
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, dir_fd=fd)
                        created = os.open(part, _DIR_FLAGS, dir_fd=fd)
                        _same_owner(created, fd)
                        os.close(created)
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise _failure(tool, exc, rel, fd, part) from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _same_owner(fd: int, directory: int) -> None:
    """Give what a tool creates to the owner of the directory it is in. A worker running as root
    writes into a workspace owned by the sandbox's unprivileged uid: without this, the agent could
    read the files its tools wrote but not change or replace them."""
    if os.geteuid() != 0:
        return
    owner = os.fstat(directory)
    with contextlib.suppress(OSError):
        os.fchown(fd, owner.st_uid, owner.st_gid)


def _read_all(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = os.read(fd, min(1 << 20, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class FsRead:
    """``fs.read {"path"}`` -> ``{"path", "content", "size"}``; ``content_base64`` instead of
    ``content`` for a file that is not UTF-8. Files over ``max_file_bytes`` are refused."""

    name = "fs.read"
    workspace_only = True

    def invoke(self, args: dict[str, Any], ctx: ToolContext) -> Any:
        _check_args(self.name, args, {"path": str}, ("path",))
        parts = _parts(self.name, args["path"])
        rel = "/".join(parts)
        limit = ctx.limits.max_file_bytes
        parent = _open_dir(self.name, ctx.workspace, parts[:-1])
        try:
            # O_NONBLOCK: opening a FIFO must not hang the call; regular files ignore it.
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
            fd = os.open(parts[-1], flags, dir_fd=parent)
        except OSError as exc:
            raise _failure(self.name, exc, rel, parent, parts[-1]) from None
        finally:
            os.close(parent)
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise ToolCallFailed(self.name, f"path {rel!r} is a directory; use fs.list")
            if not stat.S_ISREG(mode):
                raise ToolCallFailed(self.name, f"path {rel!r} is not a regular file")
            data = _read_all(fd, limit)
        except OSError as exc:
            raise _failure(self.name, exc, rel) from None
        finally:
            os.close(fd)
        if len(data) > limit:
            raise ToolCallFailed(self.name, f"path {rel!r} is larger than the limit of {limit} bytes")
        result: dict[str, Any] = {"path": rel, "size": len(data)}
        try:
            result["content"] = data.decode("utf-8")
        except UnicodeDecodeError:
            result["content_base64"] = base64.b64encode(data).decode("ascii")
        return result


class FsWrite:
    """``fs.write {"path", "content" | "content_base64", "append"=false, "create_dirs"=true}``
    -> ``{"path", "size"}`` (the file's size afterwards).

    A plain write goes to a temporary file renamed over the target, so readers see the old file or
    the new one, never half of one; a symlink at the target is replaced, not followed. An append
    refuses a symlink. Neither may leave the file larger than ``max_file_bytes``.
    """

    name = "fs.write"
    workspace_only = True
    _types: Mapping[str, type] = {
        "path": str,
        "content": str,
        "content_base64": str,
        "append": bool,
        "create_dirs": bool,
    }

    def invoke(self, args: dict[str, Any], ctx: ToolContext) -> Any:
        _check_args(self.name, args, self._types, ("path",))
        if ("content" in args) == ("content_base64" in args):
            raise ToolCallFailed(
                self.name, "give exactly one of the arguments 'content' and 'content_base64'"
            )
        if "content" in args:
            try:
                data = args["content"].encode("utf-8")
            except UnicodeEncodeError:
                raise ToolCallFailed(
                    self.name, "argument 'content' is not valid Unicode (lone surrogate)"
                ) from None
        else:
            try:
                data = base64.b64decode(args["content_base64"], validate=True)
            except (binascii.Error, ValueError):
                raise ToolCallFailed(self.name, "argument 'content_base64' is not valid base64") from None
        limit = ctx.limits.max_file_bytes
        if len(data) > limit:
            raise ToolCallFailed(
                self.name, f"argument 'content' is {len(data)} bytes, over the limit of {limit}"
            )
        parts = _parts(self.name, args["path"])
        rel = "/".join(parts)
        parent = _open_dir(self.name, ctx.workspace, parts[:-1], create=args.get("create_dirs", True))
        try:
            if args.get("append", False):
                size = self._append(parent, parts[-1], rel, data, limit)
            else:
                size = self._replace(parent, parts[-1], rel, data)
        finally:
            os.close(parent)
        return {"path": rel, "size": size}

    def _append(self, parent: int, name: str, rel: str, data: bytes, limit: int) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(name, flags, 0o666, dir_fd=parent)
        except OSError as exc:
            raise _failure(self.name, exc, rel, parent, name) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ToolCallFailed(self.name, f"path {rel!r} is not a regular file")
            if info.st_size == 0:
                _same_owner(fd, parent)
            if info.st_size + len(data) > limit:
                raise ToolCallFailed(
                    self.name, f"appending would make {rel!r} larger than the limit of {limit} bytes"
                )
            _write_all(fd, data)
            return os.fstat(fd).st_size
        except OSError as exc:
            raise _failure(self.name, exc, rel) from None
        finally:
            os.close(fd)

    def _replace(self, parent: int, name: str, rel: str, data: bytes) -> int:
        try:
            existing = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        except OSError as exc:
            raise _failure(self.name, exc, rel) from None
        if existing is not None and stat.S_ISDIR(existing.st_mode):
            raise ToolCallFailed(self.name, f"path {rel!r} is a directory")
        # A short random name: the target's own name may already be as long as names can be.
        temp = f".bastion-{secrets.token_hex(8)}.tmp"
        try:
            fd = os.open(
                temp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o666,
                dir_fd=parent,
            )
            try:
                _same_owner(fd, parent)
                _write_all(fd, data)
                if existing is not None and stat.S_ISREG(existing.st_mode):
                    os.fchmod(fd, stat.S_IMODE(existing.st_mode))  # keep the file's permissions
            finally:
                os.close(fd)
            os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except OSError as exc:
            with contextlib.suppress(OSError):  # never created, or already renamed
                os.unlink(temp, dir_fd=parent)
            raise _failure(self.name, exc, rel) from None
        return len(data)


def _kind(entry: os.DirEntry[str]) -> str:
    if entry.is_symlink():
        return "symlink"
    if entry.is_dir(follow_symlinks=False):
        return "dir"
    return "file" if entry.is_file(follow_symlinks=False) else "other"


class FsList:
    """``fs.list {"path"="."}`` -> ``{"path", "entries": [{"name", "type", "size"}], "truncated"}``.

    Entries are sorted by name, at most ``MAX_ENTRIES`` of them; ``type`` is ``file``, ``dir``,
    ``symlink`` or ``other``; ``size`` is the byte size of a file and null for anything else.
    """

    name = "fs.list"
    workspace_only = True

    def invoke(self, args: dict[str, Any], ctx: ToolContext) -> Any:
        _check_args(self.name, args, {"path": str}, ())
        parts = _parts(self.name, args.get("path", "."), root_ok=True)
        rel = "/".join(parts) or "."
        fd = _open_dir(self.name, ctx.workspace, parts)
        try:
            with os.scandir(fd) as listing:
                # The first entries by name, without holding a huge directory in memory.
                found = heapq.nsmallest(MAX_ENTRIES + 1, ((e.name, _kind(e)) for e in listing))
            entries: list[dict[str, Any]] = []
            for name, kind in found[:MAX_ENTRIES]:
                size: int | None = None
                if kind == "file":
                    try:
                        size = os.stat(name, dir_fd=fd, follow_symlinks=False).st_size
                    except FileNotFoundError:
                        continue  # removed while we listed
                # Names that are not UTF-8 arrive with surrogate escapes, which JSON cannot carry.
                shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                entries.append({"name": shown, "type": kind, "size": size})
        except OSError as exc:
            raise _failure(self.name, exc, rel) from None
        finally:
            os.close(fd)
        return {"path": rel, "entries": entries, "truncated": len(found) > MAX_ENTRIES}
