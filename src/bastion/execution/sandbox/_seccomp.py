"""A seccomp filter for sandboxes: the system calls an agent never needs fail with ``EPERM``.

The filter is a classic BPF program (an array of ``struct sock_filter``) in the form ``bwrap
--seccomp FD`` reads. It is a deny list on top of the namespaces, not an allow list: it closes the
kernel interfaces that container escapes and kernel exploits go through (``ptrace``, mounts,
modules, ``kexec``, ``bpf``, ``perf_event_open``, ``io_uring``, keyrings, namespace changes, handle
based opens, the clock) and leaves the rest of Linux to an ordinary Python program.

Only x86_64 is supported: a call made through another ABI (i386 through ``int 0x80``, x32) kills the
process, so the numbers below cannot be bypassed by switching ABI.
"""

from __future__ import annotations

import errno
import platform
import struct

# BPF instruction classes and fields (linux/bpf_common.h, linux/seccomp.h, linux/audit.h).
_BPF_LD, _BPF_W, _BPF_ABS = 0x00, 0x00, 0x20
_BPF_JMP, _BPF_JEQ, _BPF_JGE, _BPF_K = 0x05, 0x10, 0x30, 0x00
_BPF_RET = 0x06
_SECCOMP_RET_KILL_PROCESS = 0x80000000
_SECCOMP_RET_ERRNO = 0x00050000
_SECCOMP_RET_ALLOW = 0x7FFF0000
_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_SYSCALL_BIT = 0x40000000
_OFFSET_NR, _OFFSET_ARCH = 0, 4  # struct seccomp_data

BLOCKED: dict[str, int] = {
    # Debugging and reading other processes.
    "ptrace": 101,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "kcmp": 312,
    "pidfd_getfd": 438,
    # Mounts and the filesystem tree.
    "mount": 165,
    "umount2": 166,
    "pivot_root": 155,
    "chroot": 161,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "mount_setattr": 442,
    "name_to_handle_at": 303,
    "open_by_handle_at": 304,
    "quotactl": 179,
    "swapon": 167,
    "swapoff": 168,
    # Namespaces.
    "unshare": 272,
    "setns": 308,
    # Kernel modules and replacing the kernel.
    "init_module": 175,
    "finit_module": 313,
    "delete_module": 176,
    "create_module": 174,
    "get_kernel_syms": 177,
    "query_module": 178,
    "kexec_load": 246,
    "kexec_file_load": 320,
    "reboot": 169,
    # Large kernel attack surfaces an agent has no use for.
    "bpf": 321,
    "perf_event_open": 298,
    "userfaultfd": 323,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "fanotify_init": 300,
    "lookup_dcookie": 212,
    # Keyrings.
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    # The machine's identity, clock, logs and hardware.
    "sethostname": 170,
    "setdomainname": 171,
    "settimeofday": 164,
    "clock_settime": 227,
    "clock_adjtime": 305,
    "adjtimex": 159,
    "syslog": 103,
    "acct": 163,
    "iopl": 172,
    "ioperm": 173,
    "vhangup": 153,
    "uselib": 134,
    "_sysctl": 156,
    "nfsservctl": 180,
}
"""Blocked system calls and their x86_64 numbers (asm/unistd_64.h)."""


def _statement(code: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, 0, 0, k)


def _jump(code: int, k: int, true: int, false: int) -> bytes:
    return struct.pack("=HBBI", code, true, false, k)


def supported() -> str | None:
    """None when this machine can use the filter, else why not."""
    machine = platform.machine()
    if machine not in ("x86_64", "AMD64"):
        return f"the seccomp filter is written for x86_64; this machine is {machine}"
    return None


def program(blocked: dict[str, int] | None = None) -> bytes:
    """The filter as ``bwrap --seccomp`` reads it: a ``struct sock_filter`` array, native order."""
    numbers = sorted(set((blocked if blocked is not None else BLOCKED).values()))
    deny = _statement(_BPF_RET | _BPF_K, _SECCOMP_RET_ERRNO | errno.EPERM)
    kill = _statement(_BPF_RET | _BPF_K, _SECCOMP_RET_KILL_PROCESS)
    allow = _statement(_BPF_RET | _BPF_K, _SECCOMP_RET_ALLOW)
    # Layout: 0 load arch, 1 arch check, 2 load nr, 3 x32 check, 4.. one jeq per number, then
    # allow (4 + count), deny (5 + count), kill (6 + count). Jump offsets count from the next one.
    count = len(numbers)
    parts = [
        _statement(_BPF_LD | _BPF_W | _BPF_ABS, _OFFSET_ARCH),
        # Not x86_64: jump over everything to kill (distance to the last instruction).
        _jump(_BPF_JMP | _BPF_JEQ | _BPF_K, _AUDIT_ARCH_X86_64, 0, count + 4),
        _statement(_BPF_LD | _BPF_W | _BPF_ABS, _OFFSET_NR),
        _jump(_BPF_JMP | _BPF_JGE | _BPF_K, _X32_SYSCALL_BIT, count + 2, 0),
    ]
    for index, number in enumerate(numbers):
        # A match jumps over the remaining comparisons and the allow, onto deny.
        parts.append(_jump(_BPF_JMP | _BPF_JEQ | _BPF_K, number, count - index, 0))
    parts += [allow, deny, kill]
    return b"".join(parts)
