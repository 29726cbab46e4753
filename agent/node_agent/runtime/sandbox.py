"""Limits on a trace's own process, for what no check of its source can rule out.

No pinned BPF objects: a seccomp filter on bpf(BPF_OBJ_GET/BPF_OBJ_PIN). For custom programs,
no reading of files outside system, kernel-header and Python trees (Landlock).

bcc opens a table whose type names a path (`BPF_TABLE("hash:/sys/fs/bpf/x", ...)`) while it
compiles, and creates and pins it when the path is free: any program could then update
another tool's pinned map with the allowed map helpers, or leave pins behind. No source check
can see through the preprocessor reliably, so the trace's process loses those two commands.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

# (audit arch, __NR_bpf, __NR_seccomp) per machine
ARCHES = {
    "x86_64": (0xC000003E, 321, 317),
    "aarch64": (0xC00000B7, 280, 277),
}
X32_BIT = 0x40000000  # x86_64's x32 ABI numbers its syscalls with this bit set
BPF_OBJ_PIN, BPF_OBJ_GET = 6, 7
LD_W_ABS, JEQ_K, RET_K = 0x20, 0x15, 0x06
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1  # every thread of the process, not only the caller


class SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    ]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def filter_program(arch: int, nr_bpf: int) -> list[tuple[int, int, int, int]]:
    """Classic BPF for seccomp: bpf(OBJ_PIN|OBJ_GET) and any other arch get EPERM."""
    deny = RET_ERRNO | errno.EPERM
    return [
        (LD_W_ABS, 0, 0, 4),  # 0: seccomp_data.arch
        (JEQ_K, 0, 7, arch),  # 1: another arch: deny (9)
        (LD_W_ABS, 0, 0, 0),  # 2: seccomp_data.nr
        (JEQ_K, 1, 0, nr_bpf),  # 3: bpf: look at the command (5)
        (JEQ_K, 0, 3, nr_bpf | X32_BIT),  # 4: neither: allow (8)
        (LD_W_ABS, 0, 0, 16),  # 5: low word of args[0], the bpf command
        (JEQ_K, 2, 0, BPF_OBJ_PIN),  # 6: deny (9)
        (JEQ_K, 1, 0, BPF_OBJ_GET),  # 7: deny (9)
        (RET_K, 0, 0, RET_ALLOW),  # 8
        (RET_K, 0, 0, deny),  # 9
    ]


def forbid_pinned_objects() -> None:
    """Install the filter on this whole process (and its future children); OSError if it cannot."""
    machine = platform.machine()
    if machine not in ARCHES:
        raise OSError(errno.ENOSYS, f"no seccomp filter for {machine}")
    arch, nr_bpf, nr_seccomp = ARCHES[machine]
    rows = filter_program(arch, nr_bpf)
    insns = (SockFilter * len(rows))(*(SockFilter(*row) for row in rows))
    prog = SockFprog(len(rows), insns)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    done = libc.syscall(
        nr_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, ctypes.byref(prog)
    )
    if done != 0:
        raise OSError(ctypes.get_errno(), "seccomp(SET_MODE_FILTER) failed")


# Landlock (kernel 5.13+): which files a custom program's compile may read.
LANDLOCK_CREATE_RULESET, LANDLOCK_ADD_RULE, LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_RULE_PATH_BENEATH = 1
ACCESS_READ_FILE = 1 << 2


class RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def readable_roots(extra: Sequence[str] = ()) -> list[str]:
    """What a trace's process needs to read: system libraries and headers, /proc, /sys, /dev,
    the kernel headers (wherever their links point, and `extra`: the agent's kheaders tree)
    and Python's own trees; not /etc, /home, /root, /var or /tmp, where an
    `asm(".incbin ...")` could otherwise read a secret (nor bcc's /tmp/kheaders-<release>,
    which another local user may have made)."""
    release = os.uname().release
    roots = ["/usr", "/lib", "/lib64", "/lib32", "/proc", "/sys", "/dev", *extra]
    roots += ["/etc/ld.so.cache", "/etc/localtime"]
    roots += [os.path.realpath(f"/lib/modules/{release}/{link}") for link in ("build", "source")]
    roots += [sys.prefix, sys.base_prefix, str(Path(__file__).resolve().parents[2])]
    real = {os.path.realpath(r) for r in roots if os.path.exists(r)}
    return sorted(real - {"/"})  # a prefix of "/" would allow everything


# The roots' directories, held open for the process's life (see read_only_beneath).
_pinned: list[int] = []


def read_only_beneath(roots: list[str]) -> None:
    """From now on this thread and its children open files for reading only beneath roots.

    OSError when Landlock is missing or refuses. Writing is not restricted here.

    A Landlock rule belongs to the directory's inode. On a file system that makes a new
    inode at each lookup once nothing uses the old one (9p without a cache, as a VM's shared
    directory is; some FUSE and network file systems), a root whose directory nobody holds
    would match nothing a moment later, and every file beneath it would be refused: each
    root stays open, so that its inode is the one every later lookup finds."""
    libc = ctypes.CDLL(None, use_errno=True)
    attr = RulesetAttr(ACCESS_READ_FILE)
    ruleset = libc.syscall(LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.sizeof(attr), 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    opened: list[int] = []
    try:
        for root in roots:
            fd = os.open(root, os.O_PATH | os.O_CLOEXEC)
            opened.append(fd)
            rule = PathBeneathAttr(ACCESS_READ_FILE, fd)
            added = libc.syscall(
                LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0
            )
            if added != 0:
                raise OSError(ctypes.get_errno(), f"landlock_add_rule({root}) failed")
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if libc.syscall(LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
        _pinned.extend(opened)
        opened = []
    finally:
        os.close(ruleset)
        for fd in opened:
            os.close(fd)
