"""The custom program's Landlock sandbox where the agent lives on 9p, as in a VM whose
checkout virtme shares (a clone under /var/tmp is shared this way): the rule on the agent's
own tree still matches after the directory's dentry would have been dropped.

Run under `flock /tmp/ft-vm.lock`: without KVM a boot takes the machine's CPUs for a while.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

import pytest

from devstack import kernels
from tests.controller.vm_support import run_in_vm

pytestmark = [pytest.mark.vm, pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parents[2]

# In the guest, with the copied agent first on the path: the sandbox as a custom trace's child
# sets it up, then the file systems' caches dropped, then a file of the agent's tree read (a
# custom program's compile includes prelude.h from there) and a file outside the roots.
GUEST = """
import os
from node_agent.runtime import sandbox
print(sandbox.__file__)
sandbox.read_only_beneath(sandbox.readable_roots())
with open("/proc/sys/vm/drop_caches", "w") as caches:
    caches.write("2")
try:
    with open(os.path.join(os.path.dirname(sandbox.__file__), "..", "programs", "prelude.h")) as f:
        print("prelude read" if f.read() else "prelude empty")
except OSError as exc:
    print("prelude refused", exc)
try:
    with open("/etc/hostname") as f:
        print("etc read")
except PermissionError:
    print("etc refused")
"""


def test_the_agents_tree_stays_readable_under_landlock_on_9p(tmp_path: Path) -> None:
    tree = tmp_path / "tree"  # in the guest, on the 9p share of tmp_path: no dentry cache
    shutil.copytree(ROOT / "agent", tree / "agent", ignore=shutil.ignore_patterns("__pycache__"))
    kernel = kernels.fetch("6.1")
    modules = kernels.modules_tree(kernel, tmp_path / "vm", headers="exact")
    out = tmp_path / "out"
    script = tmp_path / "guest.py"
    script.write_text(GUEST)
    command = (
        f"exec > {out} 2>&1; cd /; PYTHONPATH={tree / 'agent'} "
        f"{shlex.quote(sys.executable)} {script}"
    )
    run_in_vm(kernel, modules, command, tmp_path, timeout_s=300, name="landlock-9p")
    said = out.read_text() if out.exists() else (tmp_path / "vng.log").read_text()[-2000:]
    lines = said.splitlines()
    assert lines[:1] == [str(tree / "agent/node_agent/runtime/sandbox.py")], said
    assert lines[1:] == ["prelude read", "etc refused"], said
    assert kernels.qemu_pid(tmp_path / "qemu.pid") is None
