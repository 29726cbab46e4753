"""Name cgroup v2 ids (the inode numbers of cgroup directories) by their path."""

from __future__ import annotations

import os
from pathlib import Path

MAX_DIRS = 20_000  # bound the walk on hosts with very many cgroups


class CgroupNames:
    """Paths below the cgroup2 mount ("/" is the root) by id; the tree is walked at most once."""

    def __init__(self, root: Path | None, max_dirs: int = MAX_DIRS) -> None:
        self.root = root
        self.max_dirs = max_dirs
        self._paths: dict[int, str] | None = None

    def __call__(self, cgroup_id: int) -> str:
        if self._paths is None:
            self._paths = self._walk()
        return self._paths.get(cgroup_id, f"cgroup_{cgroup_id}")

    def _walk(self) -> dict[int, str]:
        if self.root is None:
            return {}
        paths: dict[int, str] = {}
        try:
            paths[os.stat(self.root).st_ino] = "/"
        except OSError:
            return {}
        todo = [self.root]
        while todo and len(paths) < self.max_dirs:
            here = todo.pop()
            try:
                entries = list(os.scandir(here))
            except OSError:
                continue  # a group removed while we walk
            for entry in entries:
                if len(paths) >= self.max_dirs:
                    break
                if entry.is_dir(follow_symlinks=False):
                    paths[entry.inode()] = "/" + str(Path(entry.path).relative_to(self.root))
                    todo.append(Path(entry.path))
        return paths
