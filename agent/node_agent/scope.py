"""Turn a request's scope into the -D flags the prelude's ft_in_scope() reads.

A cgroup path names a group of the cgroup v2 hierarchy: `/a/b` from the hierarchy's root (or
the same group by its full mount path, `/sys/fs/cgroup/a/b`), `a/b` relative. An agent with a
base cgroup reads a relative path inside its base, and refuses an absolute one that is not
inside it: the same job then means the same group on every host, or is refused. Whatever it
is sent, the group it traces is resolved (symlinks, `.`, `//`) and must lie inside the base,
or inside the hierarchy for an agent without one.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from node_agent.errors import BadParameter, PolicyViolation
from node_agent.protocol import Scope

MAX_CGROUP_PATH = 4096  # PATH_MAX


def cgroup2_mount(mounts: Path = Path("/proc/self/mounts")) -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (unified or hybrid layouts)."""
    for line in mounts.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "cgroup2":
            return Path(parts[1])
    return None


def cgroup_path_problem(path: str) -> str | None:
    """Why a cgroup path is refused on its face, before any lookup; None if it may be looked up.

    The controller answers 422 with this; an agent refuses with it, whatever got past.
    """
    if not path.strip():
        return "a cgroup path is not empty"
    if len(path) > MAX_CGROUP_PATH:
        return f"a cgroup path is at most {MAX_CGROUP_PATH} characters"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        return "a cgroup path has no NUL or control characters"
    if ".." in path.split("/"):
        return "a cgroup path may not contain '..'"
    return None


def _inside(path: str, root: Path) -> PurePosixPath:
    """A path as seen from the hierarchy's root, relative; `.` and `//` folded away."""
    candidate = PurePosixPath(path)
    if candidate.is_absolute() and candidate.is_relative_to(root):
        candidate = candidate.relative_to(root)
    parts = [p for p in candidate.parts if p.strip("/") not in ("", ".")]  # "//" is a root too
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def resolve_cgroup(path: str | None, base: str | None = None) -> tuple[Path, int, int]:
    """The cgroup v2 directory a request traces, with its id (inode) and depth below the root.

    `path` is the request's cgroup (None: the base itself), `base` the agent's own cgroup.
    """
    for given in (path, base):
        problem = cgroup_path_problem(given) if given is not None else None
        if problem:
            raise PolicyViolation(f"scope.cgroup: {problem} (got {given!r})")
    root = cgroup2_mount()
    if root is None:
        raise BadParameter("scope.cgroup", "this host has no cgroup v2 hierarchy mounted")
    real_root = Path(os.path.realpath(root))
    fence = real_root
    if base is not None:
        fence = Path(os.path.realpath(real_root / _inside(base, root)))
        if not fence.is_relative_to(real_root) or not (fence / "cgroup.procs").exists():
            raise BadParameter("scope.cgroup", f"this agent's cgroup {base!r} does not exist")
    if path is None:
        candidate = fence
    elif base is not None and not PurePosixPath(path).is_absolute():
        candidate = fence / _inside(path, root)
    else:
        candidate = real_root / _inside(path, root)
    real = Path(os.path.realpath(candidate))
    if not real.is_relative_to(fence):
        where = f"this agent's cgroup {base!r}" if base is not None else f"the hierarchy {root}"
        raise PolicyViolation(f"scope.cgroup: {path!r} is outside {where}")
    if not (real / "cgroup.procs").exists():
        raise BadParameter("scope.cgroup", f"no cgroup v2 group at {path!r} (under {root})")
    level = len(real.relative_to(real_root).parts)
    return real, os.stat(real).st_ino, level


def scope_defines(scope: Scope, cgroup_base: str | None = None) -> dict[str, str | int]:
    defines: dict[str, str | int] = {}
    if scope.pid is not None:
        defines["FT_SCOPE_PID"] = scope.pid
    if scope.cgroup is not None or cgroup_base is not None:
        _, cgroup_id, level = resolve_cgroup(scope.cgroup, cgroup_base)
        defines["FT_SCOPE_CGROUP_ID"] = f"{cgroup_id}ULL"
        defines["FT_SCOPE_CGROUP_LEVEL"] = level
    if scope.comm is not None:
        defines["FT_SCOPE_COMM"] = "{" + ",".join(str(b) for b in comm_bytes(scope.comm)) + ",0}"
    return defines


def comm_bytes(comm: str) -> bytes:
    """A scope's process name as the kernel keeps it (TASK_COMM_LEN with its NUL), checked."""
    raw = comm.encode()
    if len(raw) > 15 or b"\0" in raw:
        raise BadParameter("scope.comm", "a process name is at most 15 bytes, without NUL")
    return raw
