"""A distro kernel fetched with apt really boots under QEMU, with the headers we linked.

Run under `flock /tmp/ft-vm.lock`: without KVM a boot takes the machine's CPUs for a while.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from devstack import kernels
from tests.controller.vm_support import run_in_vm

pytestmark = [pytest.mark.vm, pytest.mark.timeout(600)]


def test_a_fetched_61_kernel_boots_with_its_exact_headers(tmp_path: Path) -> None:
    _boots_with_its_exact_headers(kernels.fetch("6.1"), tmp_path)


def test_a_kernel_cache_where_virtme_mounts_a_tmpfs_is_still_seen(tmp_path: Path) -> None:
    """virtme's init hides /var/tmp (and /var/cache, /run...) under an empty tmpfs: a kernel
    cache there (a checkout cloned into /var/tmp, say) left the guest's build link dangling.
    The cache is given back, read-only, where it is."""
    fetched = kernels.fetch("6.1")
    hidden = Path(tempfile.mkdtemp(prefix="ft-hidden-", dir="/var/tmp"))
    try:
        # Hard links: the same files at no cost where /var/tmp and the cache share a
        # filesystem; a copy otherwise.
        root = hidden / fetched.root.name
        for how in ("-al", "-a"):
            shutil.rmtree(root, ignore_errors=True)
            copied = subprocess.run(["cp", how, str(fetched.root), str(root)], timeout=600)
            if copied.returncode == 0:
                break
        assert copied.returncode == 0, f"cannot copy {fetched.root} to {root}"
        kernel = kernels.Kernel(fetched.version, fetched.release, root)
        assert kernels.hidden_in_guest(kernel.root)
        _boots_with_its_exact_headers(kernel, tmp_path)
    finally:
        shutil.rmtree(hidden)


def _boots_with_its_exact_headers(kernel: kernels.Kernel, tmp_path: Path) -> None:
    assert kernel.release.startswith("6.1.0-") and kernel.complete()
    modules = kernels.modules_tree(kernel, tmp_path / "vm", headers="exact")
    out = tmp_path / "out"
    # The guest's answers, each on its own line: its kernel, its hostname, its build tree.
    command = (
        f"exec > {out} 2>&1; uname -r; hostname; "
        'b=/lib/modules/$(uname -r)/build; readlink -f "$b"; '
        'test -f "$b/Makefile" && test -d "$b/include" && echo build-resolves; '
        "test -d /lib/modules/$(uname -r)/kernel/fs && echo modules-there"
    )
    started = time.monotonic()
    run_in_vm(kernel, modules, command, tmp_path, timeout_s=300, name="k61-boot")
    elapsed = time.monotonic() - started
    lines = out.read_text().splitlines()
    assert lines == [
        kernel.release,
        "k61-boot",
        str(kernel.headers),
        "build-resolves",
        "modules-there",
    ], (tmp_path / "vng.log").read_text()[-2000:]
    print(f"6.1 boot-to-command-and-poweroff (emulated, no KVM): {elapsed:.1f} s")
    # The QEMU is gone (the helper stopped it, or it powered off): nothing left running.
    assert kernels.qemu_pid(tmp_path / "qemu.pid") is None


def test_no_headers_means_no_build_link_in_the_guest(tmp_path: Path) -> None:
    kernel = kernels.fetch("6.1")
    modules = kernels.modules_tree(kernel, tmp_path / "vm", headers="none")
    out = tmp_path / "out"
    command = (
        f"exec > {out} 2>&1; uname -r; "
        "test -e /lib/modules/$(uname -r)/build && echo build || echo no-build"
    )
    run_in_vm(kernel, modules, command, tmp_path, timeout_s=300)
    assert out.read_text().splitlines() == [kernel.release, "no-build"]
