"""Capability-aware dispatch for real: a stack with a namespaced host on this machine's kernel
(6.18: no kprobes, fentry refused) and a VM host booting Debian's 6.12 (both, exact headers;
the bare 6.1 VM host is tests/controller/test_devstack_vm_bootstrap.py's).

A job on `all` for vfs_latency (fentry, else kprobes) is `unsupported` on the namespaced host
with the reason naming what is missing, and traced in the VM with the right answer on a
known workload started there over SSH. Then QEMU is killed mid-job: the run ends, the host
goes offline, and `down` still leaves nothing behind.

Run under `flock /tmp/ft-stack.lock flock /tmp/ft-vm.lock`: minutes of emulated CPU.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import Stack, down, kernels, sshd, vm
from devstack.api import Api
from devstack.config import HostSpec, StackConfig, private_config
from tests.controller.support import wait_for
from tests.controller.vm_support import assert_nothing_left, ssh
from tests.node_agent.programs import known_workloads as known

pytestmark = [pytest.mark.vm, pytest.mark.bcc, pytest.mark.timeout(1800)]

NAMESPACED = HostSpec("web-1", {"role": "web"}, "web-moderate")
(VM,) = vm.parse_kernels(["6.12"])
READS, WRITES = 200, 100


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = private_config(
        tmp_path_factory.mktemp("vmstack"), (NAMESPACED, VM), kind="v", subnet=100
    )
    stack = Stack(config, services=[sshd.Sshd()])
    try:
        stack.up()
        yield stack
    finally:
        down(config.state_dir, purge=True, reap=stack.reap)
        assert_nothing_left(stack.config)


def _agent_log(config: StackConfig, chars: int = 4000) -> str:
    """The end of the VM agent's log, for a failure's message (`down` purges it)."""
    log = config.logs_dir / f"{VM.name}-agent.log"
    return log.read_text(errors="replace")[-chars:] if log.exists() else f"no {log}"


def _api(stack: Stack) -> Api:
    return Api(stack.config.api_url, stack.token)


def _ssh(config: StackConfig, command: str) -> subprocess.Popen[str]:
    return ssh(config, VM, command)


def test_the_vm_host_is_online_with_its_kernels_capabilities(stack: Stack) -> None:
    api = _api(stack)
    try:
        hosts = api.hosts()
    finally:
        api.close()
    assert {n: h["state"] for n, h in hosts.items()} == {"web-1": "online", VM.name: "online"}
    caps = hosts[VM.name]["capabilities"]
    assert caps["kernel_release"].startswith("6.12."), caps["kernel_release"]
    assert caps["headers"] == "exact", caps.get("headers_detail")
    assert caps["features"]["kprobes"] and caps["features"]["fentry"], caps["features"]
    here = hosts["web-1"]["capabilities"]
    assert here["kernel_release"] == os.uname().release
    assert not here["features"]["kprobes"] and not here["features"]["fentry"]
    # The VM's QEMU is recorded where `down` finds it, and runs in the stack's cgroup.
    pid = kernels.qemu_pid(vm.pidfile(stack.config, VM))
    assert pid is not None
    assert stack.config.cgroup_parent in Path(f"/proc/{pid}/cgroup").read_text()


def test_a_job_on_all_is_unsupported_here_and_traced_in_the_vm(stack: Stack) -> None:
    config = stack.config
    # FILE_IO on a fresh tmpfs in the VM, in the host's cgroup (the agent confines traces
    # to it): it says who it is, then waits for "go".
    cgroup = Path("/sys/fs/cgroup", config.host_cgroup(VM.name), "cgroup.procs")
    argv = known.file_io_argv(Path("/tmp/ft-vfs"), READS, WRITES)
    command = f"mkdir -p /tmp/ft-vfs && echo $$ > {cgroup} && exec {shlex.join(argv)}"
    workload = _ssh(config, command)
    api = _api(stack)
    try:
        assert workload.stdout is not None and workload.stdin is not None
        me = json.loads(workload.stdout.readline())
        job = api._call(
            "POST",
            "/v1/jobs",
            json={
                "program": "vfs_latency",
                "duration_s": 40,
                "interval_s": 5,
                # Emulated, the agent's own work costs ~40x its real CPU: a real budget trips
                # (the dev stack's VM agents allow a job to lift it).
                "limits": {"overhead_pct": None},
                "scope": {"pid": me["pid"]},
                "targets": {"all": True},
            },
        )
        runs = {r["host"]: r for r in job["runs"]}
        assert set(runs) == {"web-1", VM.name}

        def attached() -> bool:
            # A snapshot from the VM: its program compiled and attached (slow, emulated).
            job_now = api._call("GET", f"/v1/jobs/{job['id']}")
            vm_run = next(r for r in job_now["runs"] if r["host"] == VM.name)
            assert vm_run["state"] in ("pending", "running"), (vm_run, _agent_log(config))
            return bool(vm_run["snapshots"])

        wait_for(attached, 300, "the VM's first snapshot")
        workload.stdin.write("go\n")
        workload.stdin.flush()
        assert json.loads(workload.stdout.readline()) == {"done": True}
        final = api.wait_job(job["id"], timeout_s=300)
        results = api.results(job["id"])
    finally:
        api.close()
        if workload.stdin is not None:
            workload.stdin.close()
        workload.wait(timeout=60)
    runs = {r["host"]: r for r in final["runs"]}
    here = runs["web-1"]
    assert here["state"] == "unsupported", here
    assert "fentry" in here["reason"] and "kprobe" in here["reason"], here["reason"]
    assert runs[VM.name]["state"] == "succeeded", (runs[VM.name], _agent_log(config))
    (traced,) = [h for h in results["hosts"] if h["host"] == VM.name]
    (table,) = [t for t in traced["results"] if t["name"] == "vfs_ops"]
    assert [f["name"] for f in table["key_fields"]] == ["fs", "op"]
    counts = {(fs, op): values[0] for (fs, op), values in table["rows"]}
    assert counts.get(("tmpfs", "read")) == READS, counts
    assert counts.get(("tmpfs", "write")) == WRITES, counts


def test_qemu_killed_mid_job_ends_the_run_and_down_cleans_up(stack: Stack) -> None:
    config = stack.config
    api = _api(stack)
    try:
        job = api._call(
            "POST",
            "/v1/jobs",
            json={
                "program": "syscalls",
                "duration_s": 600,
                "limits": {"overhead_pct": None},
                "targets": {"hosts": [VM.name]},
            },
        )

        def running() -> bool:
            now = api._call("GET", f"/v1/jobs/{job['id']}")
            return bool(now["runs"][0]["state"] == "running")

        wait_for(running, 300, "the VM's run to start")
        pid = kernels.qemu_pid(vm.pidfile(config, VM))
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()

        def offline() -> bool:
            return bool(api.hosts()[VM.name]["state"] == "offline")

        wait_for(offline, config.heartbeat_timeout_s * 6, "the VM host to go offline")
        # The run of a host that went away ends (lost with the host), never stays running.
        final = api.wait_job(job["id"], timeout_s=config.heartbeat_timeout_s * 12)
        (run,) = final["runs"]
        assert run["state"] == "failed" and run["reason"].startswith("lost"), run
        print(f"run {run['state']} {time.monotonic() - killed:.0f}s after QEMU was killed")
    finally:
        api.close()
    assert down(config.state_dir, reap=stack.reap)
    assert_nothing_left(config)
