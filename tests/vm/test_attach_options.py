"""Every attach option of tcpconnlat, offcputime and vfs_latency that `auto` would not pick,
forced, in one 6.1 guest (kprobes and fentry work there), each on its known workload through
the agent's runner: right answers, and the stats name the option used. The kernel matrix
(tests/kernel_matrix) runs `auto`; this is the forced-option coverage.

One boot runs everything (tests/vm/attach_guest.py writes a JSON line per run), under
/tmp/ft-vm.lock: without KVM a boot takes the machine's CPUs for minutes.
"""

from __future__ import annotations

import fcntl
import json
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack import kernels
from tests.controller.vm_support import booted

# The timeout covers waiting for the VM lock.
pytestmark = [pytest.mark.vm, pytest.mark.slow_vm, pytest.mark.timeout(2700)]

REPO = Path(__file__).resolve().parents[2]
VM_LOCK = Path("/tmp/ft-vm.lock")
GUEST_TIMEOUT_S = 1200.0
EXPECTED = {
    ("tcpconnlat", "fentry"),
    ("tcpconnlat", "kprobe"),
    ("offcputime", "raw_tracepoint"),
    ("vfs_latency", "kprobe"),
}


@pytest.fixture(scope="module")
def guest_lines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict[str, Any]]]:
    work = tmp_path_factory.mktemp("attach-vm")
    kernel = kernels.fetch("6.1")
    modules = kernels.modules_tree(kernel, work / "vm", headers="exact")
    out = work / "out.jsonl"
    command = (
        f"cd {shlex.quote(str(REPO))} && {shlex.quote(sys.executable)} -m tests.vm.attach_guest"
        f" --out {out} > {work / 'guest.log'} 2>&1"
    )
    with VM_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        started = time.monotonic()
        argv = kernels.vng_command(
            kernel,
            modules=modules,
            name="attach-61",
            exec_=command,
            memory_mb=2048,  # bcc compiling against net/sock.h takes ~0.5 GiB
            rwdirs={str(work): work},
            pidfile=work / "qemu.pid",
        )
        with booted(argv, work / "qemu.pid", work / "vng.log") as proc:
            proc.wait(timeout=GUEST_TIMEOUT_S)
        elapsed = time.monotonic() - started
    print(f"6.1 guest, forced attach options: {elapsed:.0f} s wall (emulated, no KVM)")
    lines = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    log = (work / "guest.log").read_text()[-3000:] if (work / "guest.log").exists() else ""
    assert lines and lines[-1]["type"] == "end", f"the guest did not finish: {lines} {log}"
    yield lines
    assert kernels.qemu_pid(work / "qemu.pid") is None  # nothing left running


def test_the_guest_supports_all_three_with_kprobes_and_fentry(
    guest_lines: list[dict[str, Any]],
) -> None:
    probe = next(line for line in guest_lines if line["type"] == "probe")
    assert probe["kernel"].startswith("6.1.")
    assert probe["features"]["kprobes"] and probe["features"]["fentry"], probe
    assert all(p["supported"] for p in probe["programs"].values()), probe["programs"]
    # The cheapest each has there: what the kernel matrix's `auto` runs.
    assert probe["auto"] == {
        "tcpconnlat": "tracepoint",
        "offcputime": "tracepoint",
        "vfs_latency": "fentry",
    }


def test_each_forced_option_attaches_by_it_and_answers_right(
    guest_lines: list[dict[str, Any]],
) -> None:
    runs = [line for line in guest_lines if line["type"] == "run"]
    assert {(r["program"], r["attach"]) for r in runs} == EXPECTED
    for run in runs:
        where = f"{run['program']} attach={run['attach']}"
        assert run["state"] == "succeeded", f"{where}: {run}"
        assert run["stats_attach"] == run["want_attach"], f"{where}: {run}"
        assert run["stats_attach"].startswith(run["attach"] + ":"), f"{where}: {run}"
        assert run["problems"] == [], f"{where}: {run['problems']}"
