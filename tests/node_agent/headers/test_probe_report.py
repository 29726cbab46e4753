"""The capability probe's report on a host without kernel headers, as the worker reads it: the
probe's stdout must be its JSON alone, though libbcc writes "Unable to find kernel headers..."
to file descriptor 1 there (found by the kernel matrix's no-headers VM: the report did not
parse, so such a host never came online)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.bcc, pytest.mark.root]


def test_the_report_is_json_alone_where_bcc_finds_no_headers() -> None:
    release = os.uname().release
    probe = [sys.executable, "-m", "node_agent.cli", "probe", "--allow-custom"]
    # This machine's headers hidden, in a mount namespace of the test's own.
    script = f"mount -t tmpfs tmpfs /lib/modules/{release} && exec {shlex.join(probe)}"
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Unable to find kernel headers" in done.stderr  # bcc did complain, elsewhere
    report = json.loads(done.stdout)
    assert report["headers"] == "none"
    assert f"apt-get install linux-headers-{release}" in report["headers_detail"]
    support = {p["program"]: p for p in report["programs"]}
    assert not support["syscalls"]["supported"]
    assert support["syscalls"]["reason"].startswith("no kernel headers to compile with")
