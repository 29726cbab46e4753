"""The agent's capability probe runs in a child; a slow one (an emulated VM compiling bcc for
minutes) must not silence the heartbeat, and one past probe_timeout_s is killed."""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import pytest

from node_agent.protocol import HeadersState, HostCapabilities
from node_agent.settings import AgentSettings
from node_agent.worker import Agent


def _agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, sleep_s: float, timeout_s: float):
    caps = HostCapabilities(
        kernel_release="6.1.0-57-amd64",
        arch="x86_64",
        bcc_version=None,
        headers=HeadersState.exact,
        features={},
    )
    probe = tmp_path / "python"
    # Stands for `python -m node_agent.cli probe`: slow, then the report.
    probe.write_text(f"#!/bin/sh\nsleep {sleep_s}\ncat <<'EOF'\n{caps.model_dump_json()}\nEOF\n")
    probe.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(probe))
    settings = AgentSettings(
        host="k61-1",
        redis_url="redis://127.0.0.1:1/0",
        heartbeat_s=0.2,
        probe_timeout_s=timeout_s,
        trusted_keys=tmp_path / "keys.pub",
        state_dir=tmp_path / "state",
    )
    agent = Agent(settings, pool=object())  # type: ignore[arg-type]
    beats: list[float] = []
    monkeypatch.setattr(agent, "beat", lambda: beats.append(time.monotonic()))
    return agent, beats, caps


def test_a_slow_probe_keeps_the_host_beating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent, beats, caps = _agent(tmp_path, monkeypatch, sleep_s=1.5, timeout_s=30)
    assert agent.probe() == caps
    assert len(beats) >= 4, beats
    assert max(b - a for a, b in itertools.pairwise(beats)) < 1.0


def test_a_probe_past_its_timeout_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent, _, _ = _agent(tmp_path, monkeypatch, sleep_s=30, timeout_s=1.0)
    started = time.monotonic()
    assert agent.probe() is None
    assert time.monotonic() - started < 5
