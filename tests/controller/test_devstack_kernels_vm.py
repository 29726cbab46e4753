"""A distro kernel fetched with apt really boots under QEMU, with the headers we linked.

Run under `flock /tmp/ft-vm.lock`: without KVM a boot takes the machine's CPUs for a while.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from devstack import kernels
from tests.controller.vm_support import run_in_vm

pytestmark = [pytest.mark.vm, pytest.mark.timeout(600)]


def test_a_fetched_61_kernel_boots_with_its_exact_headers(tmp_path: Path) -> None:
    kernel = kernels.fetch("6.1")
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
