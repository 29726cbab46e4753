"""The local fleet's config: `fleettrace dev up --allow-bpftrace` reaches every agent's command
line and survives the state file, which `down` reads back after a crash."""

from __future__ import annotations

import json
from pathlib import Path

from devstack.config import StackConfig, demo_hosts, load
from devstack.host import agent_command


def _agent_argv(config: StackConfig) -> list[str]:
    argv = agent_command(config, config.hosts[0], holder=1)
    return argv[argv.index("worker") :]


def test_agents_run_bpftrace_only_when_the_stack_allows_it(tmp_path: Path) -> None:
    hosts = demo_hosts(1)
    plain = StackConfig(state_dir=tmp_path, hosts=hosts)
    allowed = StackConfig(state_dir=tmp_path, hosts=hosts, allow_bpftrace=True)
    assert "--allow-bpftrace" not in _agent_argv(plain)
    assert _agent_argv(allowed)[-1] == "--allow-bpftrace"


def test_the_knob_survives_the_state_file_and_old_files_still_load(tmp_path: Path) -> None:
    StackConfig(state_dir=tmp_path, hosts=demo_hosts(2), allow_bpftrace=True).save()
    again = load(tmp_path)
    assert again is not None and again.allow_bpftrace
    # A state file written before the knob existed: its stack still comes down.
    data = json.loads((tmp_path / "stack.json").read_text())
    del data["allow_bpftrace"]
    (tmp_path / "stack.json").write_text(json.dumps(data))
    old = load(tmp_path)
    assert old is not None and not old.allow_bpftrace


def test_dev_up_and_demo_take_allow_bpftrace() -> None:
    from controller.cli.main import build_parser

    parser = build_parser()
    for command in ("up", "demo"):
        args = parser.parse_args(["dev", command, "--allow-bpftrace", "--hosts", "1"])
        assert args.allow_bpftrace, command
        assert not parser.parse_args(["dev", command]).allow_bpftrace, command
