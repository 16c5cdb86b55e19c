"""A seccomp filter for sandboxes: the system calls an agent never needs fail with ``EPERM``.

The filter is a classic BPF program (an array of ``struct sock_filter``) in the form ``bwrap
--seccomp FD`` reads. It is a deny list on top of the namespaces, not an allow list: it closes the
kernel interfaces that container escapes and kernel exploits go through (``ptrace``, mounts,
modules, ``kexec``, ``bpf``, ``perf_event_open``, ``io_uring``, keyrings, namespace changes, handle
based opens, the clock) and leaves the rest of Linux to an ordinary Python program.

Sockets are the exception, an allow list: ``socket`` and ``socketpair`` work only for the families
an agent needs (``ALLOWED_FAMILIES``: unix sockets, and IPv4/IPv6 on its own loopback, the only
interface its network namespace has); any other family (``AF_VSOCK``, a channel to the hypervisor
on a VM host; ``AF_NETLINK``; ``AF_PACKET``; ...) fails with ``EAFNOSUPPORT``, as on a kernel built
without it.

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
_OFFSET_NR, _OFFSET_ARCH, _OFFSET_ARG0 = 0, 4, 16  # struct seccomp_data (arg 0's low 32 bits)
_SOCKET, _SOCKETPAIR = 41, 53
ALLOWED_FAMILIES = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10}
"""The socket address families an agent may create (linux/socket.h); every other one is refused."""

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


Instruction = tuple[int, int, "int | str", "int | str"]
"""(code, k, jump if true, jump if false); a jump is a count or the name of a label."""


def _assemble(program: list[Instruction | str]) -> bytes:
    """Encode ``program`` (instructions and label names), resolving jumps to labels (forward only,
    as BPF requires)."""
    labels: dict[str, int] = {}
    instructions: list[Instruction] = []
    for item in program:
        if isinstance(item, str):
            labels[item] = len(instructions)
        else:
            instructions.append(item)

    def offset(here: int, target: int | str) -> int:
        if isinstance(target, int):
            return target
        distance = labels[target] - here - 1
        if not 0 <= distance < 256:
            raise ValueError(f"a BPF jump to {target} must go forward by less than 256")
        return distance

    return b"".join(
        struct.pack("=HBBI", code, offset(index, true), offset(index, false), k)
        for index, (code, k, true, false) in enumerate(instructions)
    )


def supported() -> str | None:
    """None when this machine can use the filter, else why not."""
    machine = platform.machine()
    if machine not in ("x86_64", "AMD64"):
        return f"the seccomp filter is written for x86_64; this machine is {machine}"
    return None


def program(blocked: dict[str, int] | None = None) -> bytes:
    """The filter as ``bwrap --seccomp`` reads it: a ``struct sock_filter`` array, native order."""
    numbers = sorted(set((blocked if blocked is not None else BLOCKED).values()))
    load, jeq, jge, ret = (
        _BPF_LD | _BPF_W | _BPF_ABS,
        _BPF_JMP | _BPF_JEQ | _BPF_K,
        _BPF_JMP | _BPF_JGE | _BPF_K,
        _BPF_RET | _BPF_K,
    )
    code: list[Instruction | str] = [
        (load, _OFFSET_ARCH, 0, 0),
        (jeq, _AUDIT_ARCH_X86_64, 0, "kill"),  # another ABI: the numbers below would not apply
        (load, _OFFSET_NR, 0, 0),
        (jge, _X32_SYSCALL_BIT, "kill", 0),
        *[(jeq, number, "deny", 0) for number in numbers],
        (jeq, _SOCKET, "socket", 0),
        (jeq, _SOCKETPAIR, "socket", 0),
        (ret, _SECCOMP_RET_ALLOW, 0, 0),
        "socket",
        (load, _OFFSET_ARG0, 0, 0),
        *[(jeq, family, "allow", 0) for family in sorted(ALLOWED_FAMILIES.values())],
        (ret, _SECCOMP_RET_ERRNO | errno.EAFNOSUPPORT, 0, 0),
        "allow",
        (ret, _SECCOMP_RET_ALLOW, 0, 0),
        "deny",
        (ret, _SECCOMP_RET_ERRNO | errno.EPERM, 0, 0),
        "kill",
        (ret, _SECCOMP_RET_KILL_PROCESS, 0, 0),
    ]
    return _assemble(code)
