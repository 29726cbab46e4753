"""Kernel headers for real, in a Debian 6.1 VM with no build tree: the kernel's own headers
(kheaders) found, extracted by the agent and compiled against, counting a known workload. (No
headers at all is the kernel matrix's `6.1, no headers` column: every bcc program refused with
the tree and the package, bpftrace still counting right.)

Debian's kernels have no CONFIG_IKHEADERS: the kheaders case builds the kernel's own
kernel/kheaders.c out of tree for 6.1 (kheaders_module.py) and puts it in the VM's modules
tree, not loaded; the agent loads it. Run under `flock /tmp/ft-vm.lock` (minutes without KVM).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from devstack import kernels
from tests.controller.vm_support import run_in_vm
from tests.node_agent.headers import kheaders_module

pytestmark = [pytest.mark.vm, pytest.mark.slow_vm, pytest.mark.timeout(900)]
GUEST = Path(__file__).with_name("vm_guest.py")
CALLS = 1234  # getppid calls the workload makes while traced


def _in_vm(kernel: kernels.Kernel, modules: Path, workdir: Path) -> dict[str, Any]:
    """vm_guest.py's answers from inside the VM (the probe, a syscalls trace, what is left)."""
    out = workdir / "guest.json"
    command = f"cd /tmp && {sys.executable} {GUEST} {out} {CALLS} > {workdir}/guest.log 2>&1"
    run_in_vm(kernel, modules, command, workdir, timeout_s=780, name="k61-headers")
    assert out.exists(), (
        (workdir / "guest.log").read_text()[-3000:]
        if (workdir / "guest.log").exists()
        else (workdir / "vng.log").read_text()[-3000:]
    )
    result: dict[str, Any] = json.loads(out.read_text())
    assert result["uname"] == kernel.release
    return result


def _emulated_times(case: str, result: dict[str, Any]) -> None:
    run = result["run"]
    print(
        f"6.1 {case} (emulated, no KVM, 1 vCPU): probe {result['probe_s']} s; syscalls running"
        f" after {run['running_after_s']} s (compile {run['compile_s']} s)"
    )


def test_kheaders_are_found_extracted_privately_and_compiled_against(tmp_path: Path) -> None:
    kernel = kernels.fetch("6.1")
    problem = kheaders_module.missing_tools(kernel)
    if problem is not None:
        pytest.skip(problem)
    module = kheaders_module.build_module(kernel, tmp_path / "kheaders")
    modules = kernels.modules_tree(kernel, tmp_path / "vm", headers="none")
    installed = kheaders_module.install(module, modules, kernel.release)

    result = _in_vm(kernel, modules, tmp_path)
    probe, run = result["probe"], result["run"]
    _emulated_times("kheaders", result)
    # The probe: no build tree, the module (not loaded yet) offers the kernel's own headers.
    assert probe["headers"] == "kheaders", probe.get("headers_detail")
    guest_module = (
        f"/lib/modules/{kernel.release}/{installed.relative_to(modules / kernel.release)}"
    )
    assert f"the kheaders module {guest_module}" in probe["headers_detail"]
    tree = f"/var/lib/fleettrace/kheaders/{kernel.release}"
    assert probe["headers_detail"].endswith(f"extracted into {tree}")
    support = {p["program"]: p for p in probe["programs"]}
    assert support["syscalls"]["supported"], support["syscalls"]
    # The trace compiled against them and counted the workload's calls exactly.
    assert run["final_state"]["error"] is None, run
    assert run["final_state"]["state"] in ("succeeded", "cancelled"), run
    assert run["counts"].get("getppid") == CALLS, run
    # The agent loaded the module, extracted once into 0700 directories, and bcc made nothing
    # of its own in /tmp.
    assert result["modules"] == 1
    assert result["kheaders_dir"] == {
        "kheaders": "0o700",
        kernel.release: "0o700",
        ".lock": "0o600",
    }
    assert result["tmp_kheaders"] == []
    assert result["bpftrace"]["counts"] == {"getppid": CALLS}, result["bpftrace"]
