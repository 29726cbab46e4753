"""A report over real traces: three agents, one made to differ on purpose, named first."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.controller.conftest import Agents, Tokens
from tests.controller.support import job_final, submit, wait_job
from tests.helpers import cgroup_name

pytestmark = pytest.mark.bcc

HOSTS = ("rep-a", "rep-b", "rep-c")
ODD = "rep-c"


@pytest.fixture(scope="module")
def fleet(agent: Agents) -> dict[str, Any]:
    return agent.start_all(HOSTS)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    made: list[subprocess.Popen[bytes]] = []
    yield made
    for proc in made:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _start(group: Path, script: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-c", f"import sys\nsys.stdin.readline()\n{script}"], stdin=subprocess.PIPE
    )
    (group / "cgroup.procs").write_text(str(proc.pid))
    return proc


def _all_running(job: dict[str, Any]) -> bool:
    return all(run["state"] == "running" for run in job["runs"])


def test_the_host_made_to_differ_is_the_first_outlier_with_its_key(
    fleet: dict[str, Any],
    make_cgroup: Callable[[str], Path],
    procs: list[subprocess.Popen[bytes]],
    client: TestClient,
    tokens: Tokens,
    tmp_path: Path,
) -> None:
    groups = {host: make_cgroup(host) for host in HOSTS}
    assert all(path.name == cgroup_name(host) for host, path in groups.items())
    shared, unique = tmp_path / "shared.conf", tmp_path / "only-on-rep-c.conf"
    shared.write_text("x")
    unique.write_text("x")
    # Every host opens the shared file a little differently; rep-c far more, and one more file.
    opens = {"rep-a": 100, "rep-b": 130, ODD: 3000}
    for host in HOSTS:
        script = f"for _ in range({opens[host]}): open({str(shared)!r}).close()\n"
        if host == ODD:
            script += f"for _ in range(50): open({str(unique)!r}).close()\n"
        procs.append(_start(groups[host], script))
    viewer = tokens.headers("viewer")
    job = submit(
        client,
        tokens.headers("operator"),
        program="opens",
        params={"per_process": False},
        duration_s=3,
        targets={"all": True},
    )
    wait_job(client, viewer, job["id"], _all_running, 30, "all runs running")
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.close()
    for proc in procs:
        assert proc.wait(timeout=30) == 0
    done = wait_job(client, viewer, job["id"], job_final, 30, "the job to finish")
    assert done["state"] == "succeeded", done

    answer = client.get(f"/v1/jobs/{job['id']}/report", headers=viewer)
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["outliers"], json.dumps(report)[:6000]
    first = report["outliers"][0]
    assert first["host"] == ODD, report["outliers"]
    assert shared.name in first["metric"], first
    assert first["sentence"].startswith(f"{ODD}:"), first
    assert {o["host"] for o in report["outliers"]} == {ODD}, report["outliers"]
    one_host = [(k["host"], k["key"]) for k in report["one_host_keys"]]
    assert one_host == [(ODD, {"path": str(unique)})], one_host
