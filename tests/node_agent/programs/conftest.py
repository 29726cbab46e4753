"""Fixtures of the program tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace of our own with loopback up; deleted afterwards."""
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2 (ip) to make a network namespace")
    name = f"ft-test-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)
