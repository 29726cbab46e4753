"""Turn a request's scope into the -D flags the prelude's ft_in_scope() reads."""

from __future__ import annotations

import os
from pathlib import Path

from node_agent.errors import BadParameter
from node_agent.protocol import Scope


def cgroup2_mount(mounts: Path = Path("/proc/self/mounts")) -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (unified or hybrid layouts)."""
    for line in mounts.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "cgroup2":
            return Path(parts[1])
    return None


def resolve_cgroup(path: str) -> tuple[Path, int, int]:
    """Find a cgroup v2 directory; return it with its id (inode) and depth below the root."""
    root = cgroup2_mount()
    if root is None:
        raise BadParameter("scope.cgroup", "this host has no cgroup v2 hierarchy mounted")
    candidate = Path(path)
    if not candidate.is_absolute() or not candidate.is_relative_to(root):
        candidate = root / path.lstrip("/")
    candidate = Path(os.path.normpath(candidate))
    if not candidate.is_relative_to(root) or not (candidate / "cgroup.procs").exists():
        raise BadParameter("scope.cgroup", f"no cgroup v2 group at {path!r} (under {root})")
    level = len(candidate.relative_to(root).parts)
    return candidate, os.stat(candidate).st_ino, level


def scope_defines(scope: Scope) -> dict[str, str | int]:
    defines: dict[str, str | int] = {}
    if scope.pid is not None:
        defines["FT_SCOPE_PID"] = scope.pid
    if scope.cgroup is not None:
        _, cgroup_id, level = resolve_cgroup(scope.cgroup)
        defines["FT_SCOPE_CGROUP_ID"] = f"{cgroup_id}ULL"
        defines["FT_SCOPE_CGROUP_LEVEL"] = level
    if scope.comm is not None:
        raw = scope.comm.encode()
        if len(raw) > 15 or b"\0" in raw:
            raise BadParameter("scope.comm", "a process name is at most 15 bytes, without NUL")
        defines["FT_SCOPE_COMM"] = "{" + ",".join(str(b) for b in raw) + ",0}"
    return defines
