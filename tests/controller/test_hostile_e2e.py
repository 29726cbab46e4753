"""A real trace of a hostile file name: a process on a traced host opens a file named with a
terminal escape and a newline; `jobs results` and `report` print it inert.

Real agent, real bcc (`opens`), real ingest, Redis and database; the CLI's real main().
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.controller.conftest import Agents, Cli, Tokens
from tests.controller.support import job_final, submit, wait_job

pytestmark = pytest.mark.bcc

HOST = "hostile-e2e"
EVIL = "\x1b]0;PWNED\x07\x1b[2J\nrow|<img src=x onerror=alert(1)>"
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")


@pytest.fixture
def cli(cli_for: Callable[[TestClient, str], Cli], client: TestClient, tokens: Tokens) -> Cli:
    """`fleettrace ARGS...` against the app, as a viewer."""
    return cli_for(client, tokens.token("viewer"))


@pytest.fixture
def opener(make_cgroup: Callable[[str], Path]) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    group = make_cgroup(HOST)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\npath = sys.stdin.readline()[:-1]\n"
            "for _ in range(20):\n    open(path.encode().decode('unicode_escape'), 'w').close()",
        ],
        stdin=subprocess.PIPE,
    )
    (group / "cgroup.procs").write_text(str(proc.pid))
    yield group, proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_a_traced_file_named_with_escapes_prints_inert(
    agent: Agents,
    opener: tuple[Path, subprocess.Popen[bytes]],
    client: TestClient,
    tokens: Tokens,
    tmp_path: Path,
    cli: Callable[..., tuple[int, str, str]],
) -> None:
    group, proc = opener
    agent.wait_online(agent.start(HOST, group.name, wait=False))
    target = tmp_path / EVIL
    viewer = tokens.headers("viewer")
    job = submit(
        client,
        tokens.headers("operator"),
        program="opens",
        params={"per_process": True},
        duration_s=3,
        targets={"hosts": [HOST]},
    )
    wait_job(client, viewer, job["id"], lambda j: j["runs"][0]["state"] == "running", 30, "running")
    assert proc.stdin is not None
    proc.stdin.write(str(target).encode("unicode_escape") + b"\n")
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0 and target.exists()
    done = wait_job(client, viewer, job["id"], job_final, 30, "the job to finish")
    assert done["state"] == "succeeded", done

    raw = client.get(f"/v1/jobs/{job['id']}/results", headers=viewer).json()
    keys = [
        k
        for r in raw["merged"]
        if r["kind"] == "counter_table"
        for row in r["rows"]
        for k in row[0]
    ]
    assert any(EVIL in str(key) for key in keys), keys  # the trace really saw the name

    code, out, err = cli("jobs", "results", job["id"])
    assert code == 0, err
    assert not RAW_CONTROL.search(out), out
    # The path column keeps a path's end: the escapes show where the name was cut.
    assert "\\x07\\x1b[2J\\nrow|<img" in out, out
    rows = [line for line in out.splitlines() if "onerror" in line]
    assert len(rows) == 1 and "\\x1b[2J\\nrow" in rows[0], out  # the newline split no row

    for fmt in ("md", "csv", "folded", "openmetrics", "html"):
        code, out, err = cli("report", job["id"], "--format", fmt)
        assert code == 0, err
        assert not RAW_CONTROL.search(out), (fmt, out)
    code, out, _ = cli("report", job["id"], "--format", "md")
    assert not re.search(r"(?<!\\)<img", out) and "\\<img" in out, out
