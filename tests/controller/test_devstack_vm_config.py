"""VM hosts in a stack's config, without booting: the --kernel flag, names, the guest's init
script, the agent's Redis URL over TCP, the state file `down` reads back after a crash."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from controller.bootstrap.models import BootstrapOptions
from controller.cli.hosts import _options
from controller.cli.main import build_parser
from devstack import kernels, vm
from devstack.config import DevstackError, HostSpec, StackConfig, demo_hosts, load
from devstack.harness import redis_conf
from node_agent.wire import agent_user


def test_each_kernel_flag_is_one_vm_host() -> None:
    specs = vm.parse_kernels(["6.1", "6.12:none", "6.1:approximate"])
    assert [(s.name, s.kernel, s.headers) for s in specs] == [
        ("k61-1", "6.1", "exact"),
        ("k612-1", "6.12", "none"),
        ("k61-2", "6.1", "approximate"),
    ]
    assert specs[1].labels == {"role": "vm", "kernel": "6.12"}


@pytest.mark.parametrize(
    ("flag", "error"),
    [
        ("5.10", r"unknown kernel '5\.10': known kernels are 6\.1, 6\.12$"),
        ("6.1:kheaders", r"--kernel 6\.1:kheaders: headers 'kheaders' not in exact, approximate"),
        ("", r"unknown kernel ''"),
    ],
)
def test_a_bad_kernel_flag_is_one_line(flag: str, error: str) -> None:
    with pytest.raises(DevstackError, match=error):
        vm.parse_kernels([flag])


def test_dev_up_with_an_unknown_kernel_exits_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "controller.cli.main", "dev", "up", "--kernel", "5.10"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"FLEETTRACE_DEV_STATE": str(tmp_path), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "fleettrace dev: error: unknown kernel '5.10': known kernels are 6.1, 6.12"
    ]


def test_a_state_file_keeps_the_vm_hosts(tmp_path: Path) -> None:
    hosts = (*demo_hosts(1), *vm.parse_kernels(["6.12:none"]))
    StackConfig(state_dir=tmp_path, hosts=hosts, redis_port=6390).save()
    again = load(tmp_path)
    assert again is not None
    assert again.vm_hosts == (HostSpec("k612-1", hosts[1].labels, kernel="6.12", headers="none"),)
    assert again.redis_port == 6390
    with pytest.raises(DevstackError, match=r"host bad: unknown kernel '4\.19'"):
        StackConfig(state_dir=tmp_path, hosts=(HostSpec("bad", {}, kernel="4.19"),))


def test_the_vms_agent_gets_its_own_identity_over_tcp(tmp_path: Path) -> None:
    config = StackConfig(
        state_dir=tmp_path, hosts=vm.parse_kernels(["6.1"]), subnet=7, redis_port=41234
    )
    user = agent_user("k61-1")
    join = f"unix://{user}:s3cret-Token_x@{config.redis_socket}"
    assert vm.tcp_url(config, config.hosts[0], join) == (
        f"redis://{user}:s3cret-Token_x@10.250.7.254:41234/0"
    )
    assert vm.agents_redis_url(config) == "redis://10.250.7.254:41234/0"
    with pytest.raises(DevstackError, match="no secret"):
        vm.tcp_url(config, config.hosts[0], f"unix://{config.redis_socket}")
    # Redis listens there, with the unix socket the namespaced hosts keep.
    conf = redis_conf(
        data_dir=tmp_path,
        sock=config.redis_socket,
        password="p",
        aof=False,
        tcp=("10.250.7.254", 41234),
    )
    assert "bind 10.250.7.254\nport 41234\n" in conf and "port 0" not in conf
    assert f"unixsocket {config.redis_socket}" in conf


def test_the_guest_init_sets_up_what_a_namespaced_host_has(tmp_path: Path) -> None:
    config = StackConfig(state_dir=tmp_path, hosts=(*demo_hosts(1), *vm.parse_kernels(["6.1"])))
    script = vm.guest_script(config, config.hosts[1], 1, agent=True, services=["sshd -D"])
    lines = script.splitlines()
    assert "modprobe virtio_net" in lines
    assert 'ip addr add 10.250.0.6/30 dev "$dev" && ip link set "$dev" up' in lines
    assert "ip route add default via 10.250.0.5" in lines
    # The workload in the host's cgroup; the agent, confined to it, and sshd beside it.
    assert any(
        f"/sys/fs/cgroup/{config.host_cgroup('k61-1')}/cgroup.procs" in line
        and "workload.py web-moderate" in line
        for line in lines
    )
    assert f"echo $$ > /sys/fs/cgroup/{config.agent_cgroup('k61-1')}/cgroup.procs" in lines
    assert "sshd -D &" in lines
    (agent,) = [line for line in lines if "worker --host k61-1" in line]
    assert agent.startswith("FLEETTRACE_HEARTBEAT_S=2 ") and agent.endswith(" &")
    # Emulated, its bounds are minutes; a bootstrapped agent gets the same as options.
    assert vm.agent_settings(config) == {
        "heartbeat_s": 2.0,
        "probe_timeout_s": 900.0,
        "compile_timeout_s": 900.0,
        "max_overhead_pct": 400.0,
    }
    assert (
        "FLEETTRACE_PROBE_TIMEOUT_S=900 FLEETTRACE_COMPILE_TIMEOUT_S=900 "
        "FLEETTRACE_MAX_OVERHEAD_PCT=400 " in agent
    )
    BootstrapOptions(**vm.agent_settings(config))
    # What `up` tells to run for a bare VM host gives the CLI those same options.
    argv = ["hosts", "bootstrap", "k61-1", *" ".join(vm.bootstrap_flags(config)).split()]
    assert _options(build_parser().parse_args(argv)) == vm.agent_settings(config)
    assert f"--cgroup {config.host_cgroup('k61-1')}" in agent
    assert lines[-1] == f"while [ -e {config.alive_file} ]; do sleep 1; done"
    bare = vm.guest_script(config, config.hosts[1], 1, agent=False, services=[])
    assert "worker --host" not in bare


def _headers_tree(root: Path, release: str) -> Path:
    tree = root / f"linux-headers-{release}"
    (tree / "include" / "config").mkdir(parents=True)
    (tree / "include" / "config" / "kernel.release").write_text(f"{release}\n")
    (tree / "Makefile").write_text("")
    build = root / "build"
    build.symlink_to(tree)
    return build


def test_approximate_headers_are_another_kernels_never_the_guests_own(tmp_path: Path) -> None:
    guest = kernels.Kernel("6.12", "6.12.117+deb12-amd64", tmp_path / "cache")
    build = _headers_tree(tmp_path / "here", "6.1.0-57-amd64")
    assert vm.approximate_headers(guest, build=build) == build.resolve()
    # This machine's tree is 6.1.0-57's: a 6.1 guest linking it would have exact headers.
    same = kernels.Kernel("6.1", "6.1.0-57-amd64", tmp_path / "cache")
    with pytest.raises(DevstackError, match=r"--kernel 6\.1:approximate: .* use --kernel 6\.1,"):
        vm.approximate_headers(same, build=build)
    with pytest.raises(DevstackError, match="it has none"):
        vm.approximate_headers(guest, build=tmp_path / "nowhere")
