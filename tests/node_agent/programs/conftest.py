"""Fixtures of the program tests."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.node_agent.programs.known_workloads import netns as own_netns


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace of our own with loopback up; deleted afterwards."""
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2 (ip) to make a network namespace")
    with own_netns(f"ft-test-{os.getpid()}") as name:
        yield name
