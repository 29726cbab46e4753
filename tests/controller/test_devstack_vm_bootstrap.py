"""Bootstrap of a bare VM host for real: Debian's 6.1 under QEMU (emulated), no agent until
`POST /v1/hosts/k61-1/bootstrap` installs it over the guest's own sshd, through the
supervised fallback (no systemd there), with the emulation bounds the stack's VM agents get.

The host comes online, then traces a process started in the guest over SSH that makes exactly
CALLS getppid calls, and counts them exactly; the agent kept the run's id in its state dir
(/var/lib/fleettrace: the guest's own, an overlay whose upper layer is in the guest's memory,
looked at over SSH). `down` leaves nothing behind.

Opt-in (FLEETTRACE_VM_TESTS=1), ~30 min emulated. Run under
`flock /tmp/ft-stack.lock flock /tmp/ft-vm.lock`.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack import Stack, down, sshd, vm
from devstack.api import Api
from devstack.config import StackConfig, private_config
from tests.controller.support import FIRST_BOOTSTRAP_STEPS, step_statuses, wait_for
from tests.controller.vm_support import Remote, assert_nothing_left

pytestmark = [pytest.mark.vm, pytest.mark.slow_vm, pytest.mark.bcc, pytest.mark.timeout(3600)]

(VM,) = vm.parse_kernels(["6.1"])
CALLS = 4321
FINAL_RUN_STATES = {"succeeded", "failed", "cancelled"}
# Every command bounded by BOOTSTRAP_COMMAND_TIMEOUT_S; the whole run well within the sum.
BOOTSTRAP_DEADLINE_S = 2400.0
# An SSH login plus an emulated Python's start, or its CALLS calls under the trace.
WORKLOAD_LINE_S = 180.0
STATE_DIR = "/var/lib/fleettrace"
# Says who it is, waits for "go", makes exactly n getppid calls, says done, waits for EOF.
GETPPIDS = r"""
import json, os, sys
n = int(sys.argv[1])
comm = open("/proc/self/comm").read().strip()
print(json.dumps({"pid": os.getpid(), "comm": comm}), flush=True)
sys.stdin.readline()
for _ in range(n):
    os.getppid()
print(json.dumps({"done": True}), flush=True)
sys.stdin.readline()
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = private_config(tmp_path_factory.mktemp("vmboot"), (VM,), kind="vb", subnet=50)
    stack = Stack(config, services=[sshd.Sshd()], agents=False)
    started = time.monotonic()
    try:
        stack.up()
    except BaseException:
        # The failed start is the error to see; a teardown that fails too is only told.
        try:
            down(config.state_dir, purge=True, reap=stack.reap)
            assert_nothing_left(config)
        except Exception as teardown:
            print(f"tearing the stack down after its failed start: {teardown!r}", file=sys.stderr)
        raise
    print(f"\nstack up, the VM's sshd answering: {time.monotonic() - started:.0f} s")
    # pytest runs the rest as teardown whatever the test did, and reports its own error
    # apart from the test's.
    yield stack
    down(config.state_dir, purge=True, reap=stack.reap)
    assert_nothing_left(config)


def _agent_log(config: StackConfig, chars: int = 4000) -> str:
    """The end of the bootstrapped agent's log (its supervisor writes it under the guest's
    /opt, the host's dir here), for a failure's message."""
    log = config.host_dir(VM.name) / "opt" / "fleettrace" / "log" / "agent.log"
    return log.read_text(errors="replace")[-chars:] if log.exists() else f"no {log}"


def _ssh_output(config: StackConfig, command: str, timeout_s: float = 120) -> str:
    with Remote(config, VM, command) as remote:
        return remote.finish(timeout_s, command)


def _bootstrap(api: Api, config: StackConfig) -> dict[str, Any]:
    """Bootstrap the VM with the stack's emulation bounds; its run once final."""
    run = api._call("POST", f"/v1/hosts/{VM.name}/bootstrap", json=vm.agent_settings(config))
    where = ""

    def final() -> dict[str, Any] | None:
        nonlocal where
        now: dict[str, Any] = api._call("GET", f"/v1/hosts/{VM.name}/bootstrap")
        assert now["id"] == run["id"], now
        where = " ".join(f"{s['name']}={s['status']}" for s in now["steps"])
        return now if now["state"] in FINAL_RUN_STATES else None

    try:
        done: dict[str, Any] = wait_for(final, BOOTSTRAP_DEADLINE_S, "the bootstrap", every_s=2)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}: {where}\n{_agent_log(config)}") from None
    return done


def test_a_bare_vm_is_bootstrapped_over_ssh_and_traces_a_known_workload(stack: Stack) -> None:
    config = stack.config
    api = Api(config.api_url, stack.token, timeout_s=30)
    try:
        assert api.hosts()[VM.name]["state"] == "never_seen"
        started = time.monotonic()
        run = _bootstrap(api, config)
        took = time.monotonic() - started
        steps = ", ".join(f"{s['name']} {s['duration_s']:.0f} s" for s in run["steps"])
        print(f"bootstrap {run['state']} in {took:.0f} s: {steps}")
        assert run["state"] == "succeeded", (run["error"], run["steps"], _agent_log(config))
        assert step_statuses(run) == FIRST_BOOTSTRAP_STEPS, run["steps"]
        preflight = next(s["output"] for s in run["steps"] if s["name"] == "preflight")
        assert "init: no systemd (supervised fallback)" in preflight, preflight
        # The agent's config in the guest's /etc/fleettrace (the host's dir): its emulation
        # bounds, its host's cgroup, Redis over TCP.
        env = (config.host_dir(VM.name) / "etc" / "agent.env").read_text()
        for line in (
            "FLEETTRACE_PROBE_TIMEOUT_S=900",
            "FLEETTRACE_COMPILE_TIMEOUT_S=900",
            "FLEETTRACE_MAX_OVERHEAD_PCT=400",
            f"FLEETTRACE_CGROUP={config.host_cgroup(VM.name)}",
        ):
            assert f"\n{line}\n" in env, env
        assert f"@{config.redis_address}:{config.redis_port}/0" in env

        host = api.hosts()[VM.name]
        assert host["state"] == "online", (host, _agent_log(config))
        caps = host["capabilities"]
        assert caps["kernel_release"].startswith("6.1.0-"), caps["kernel_release"]
        assert caps["headers"] == "exact", caps.get("headers_detail")
        support = {p["program"]: p for p in caps["programs"]}
        assert support["syscalls"]["supported"], (support["syscalls"], _agent_log(config))

        vm_run = _trace_known_workload(api, config)
    finally:
        api.close()
    _assert_the_run_is_kept_in_the_guests_own_state_dir(config, vm_run["id"])


def _assert_the_run_is_kept_in_the_guests_own_state_dir(config: StackConfig, run_id: str) -> None:
    """The agent kept the run's id where a restarted agent would refuse its replay: the
    guest's /var, an overlay (virtme's --overlay-rwdir) whose upper layer is in the guest's
    memory, never this machine's read-only root under it."""
    seen = f"{STATE_DIR}/seen-runs.{VM.name}"
    assert run_id in _ssh_output(config, f"cat {seen}")
    mount = _ssh_output(config, f"findmnt -rno FSTYPE,TARGET,OPTIONS -T {STATE_DIR}").split()
    assert len(mount) == 3, mount
    fstype, target, options = mount
    assert fstype in ("overlay", "tmpfs"), (STATE_DIR, mount)
    if fstype == "overlay":
        upper = dict(o.partition("=")[::2] for o in options.split(",")).get("upperdir")
        assert upper, (STATE_DIR, mount)
        written = Path(upper, Path(seen).relative_to(target))
        # The file is in the upper layer itself (not a stale one of the lower, the host's).
        check = f"findmnt -rno FSTYPE -T {upper} && test -f {written} && echo written"
        assert _ssh_output(config, check).split() == ["tmpfs", "written"], (mount, written)


def _trace_known_workload(api: Api, config: StackConfig) -> dict[str, Any]:
    """`syscalls` on a process started in the guest over SSH (in the host's cgroup, which the
    agent confines traces to) making CALLS getppid calls once the trace is attached."""
    cgroup = Path("/sys/fs/cgroup", config.host_cgroup(VM.name), "cgroup.procs")
    argv = [sys.executable, "-c", GETPPIDS, str(CALLS)]
    with Remote(config, VM, f"echo $$ > {cgroup} && exec {shlex.join(argv)}") as workload:
        me = json.loads(workload.readline(WORKLOAD_LINE_S, "pid from the workload"))
        submitted = time.monotonic()
        job = api._call(
            "POST",
            "/v1/jobs",
            json={
                "program": "syscalls",
                "duration_s": 40,
                "interval_s": 5,
                # Emulated, the agent's own work costs ~40x its real CPU: a real budget trips.
                "limits": {"overhead_pct": None},
                "scope": {"pid": me["pid"]},
                "targets": {"hosts": [VM.name]},
            },
        )

        def attached() -> bool:
            now = api._call("GET", f"/v1/jobs/{job['id']}")
            (run,) = now["runs"]
            assert run["state"] in ("pending", "running"), (run, _agent_log(config))
            return bool(run["snapshots"])

        # The compile bound is vm.PROBE_TIMEOUT_S; emulated compiles take 2-7 min.
        try:
            wait_for(attached, vm.PROBE_TIMEOUT_S + 60, "the VM's first snapshot", every_s=1)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{_agent_log(config)}") from None
        attached_s = time.monotonic() - submitted
        workload.write("go\n")
        done = workload.readline(WORKLOAD_LINE_S, "'done' from the workload")
        assert json.loads(done) == {"done": True}, done
        final = api.wait_job(job["id"], timeout_s=300)
        done_s = time.monotonic() - submitted
        results = api.results(job["id"])
        workload.finish(60, "the workload")
    (vm_run,) = final["runs"]
    assert vm_run["state"] == "succeeded", (vm_run, _agent_log(config))
    print(f"trace: first snapshot {attached_s:.0f} s after submit, final at {done_s:.0f} s")
    (traced,) = results["hosts"]
    (table,) = traced["results"]
    counts = {key[0]: values[0] for key, values in table["rows"] if key[1] == me["pid"]}
    assert counts.get("getppid") == CALLS, (counts, _agent_log(config))
    return vm_run
