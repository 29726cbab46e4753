"""`fleettrace schedules ...` and GET /v1/schedules/{id}/compare against the real app.

Same setup as test_cli_client: the real app on SQLite through TestClient, and a dispatcher
stub playing agents that finish at once through the real ingest code.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from controller.cli.main import build_parser
from controller.cli.schedules import schedule_body, sparkline
from tests.controller import test_cli_client as base
from tests.controller.support import field_paths

# The fixtures of test_cli_client, bound here so pytest finds them in this module.
stub, cli_app, admin, http, run = base.stub, base.cli_app, base.admin, base.http, base.run
Run = base.Run
AgentStub = base.AgentStub


def test_create_flags_become_the_schedule_body() -> None:
    args = build_parser().parse_args(
        [
            *("schedules", "create", "rq", "runqlat", "--cron", "*/5 * * * *"),
            *("--tz", "Europe/Berlin", "--duration", "30s", "--selector", "role=web"),
            *("--param", "per_cpu=true", "--keep-runs", "48", "--keep-for", "7d"),
            *("--misfire-grace", "5m", "--allow-overlap"),
        ]
    )
    assert schedule_body(args) == {
        "name": "rq",
        "cron": "*/5 * * * *",
        "time_zone": "Europe/Berlin",
        "template": {
            "program": "runqlat",
            "params": {"per_cpu": "true"},
            "duration_s": 30.0,
            "targets": {"selector": {"role": "web"}},
        },
        "enabled": True,
        "retention": {"max_runs": 48, "max_age_s": 7 * 86400.0},
        "allow_overlap": True,
        "misfire_grace_s": 300.0,
        "continuous": False,
    }
    every = build_parser().parse_args(
        ["schedules", "create", "s", "syscalls", "--every", "1h", "--duration", "2", "--all"]
    )
    body = schedule_body(every)
    assert body["interval_s"] == 3600.0 and "cron" not in body
    assert body["template"]["targets"] == {"all": True}
    assert body["retention"] == {"max_runs": None, "max_age_s": None}
    live = build_parser().parse_args(
        [
            *("schedules", "create", "s", "syscalls", "--every", "10s", "--duration", "1h"),
            *("--all", "--continuous"),
        ]
    )
    assert schedule_body(live)["continuous"] is True


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--duration", "2s", "--all"], "one of the arguments --cron --every is required"),
        (
            ["--cron", "* * * * *", "--every", "1m", "--duration", "2s", "--all"],
            "argument --every: not allowed with argument --cron",
        ),
        (["--every", "1m", "--duration", "2s"], "one of the arguments --hosts --selector"),
        (["--every", "1m", "--duration", "2s", "--all", "--keep-for", "soon"], "bad duration"),
        (["--every", "1m", "--duration", "2s", "--all", "--keep-runs", "0"], "positive integer"),
    ],
)
def test_bad_create_flags_are_one_line_and_exit_2(run: Run, argv: list[str], line: str) -> None:
    code, out, err = run("schedules", "create", "s", "syscalls", *argv)
    assert code == 2 and out == ""
    assert err.startswith("fleettrace: error: ") and line in err and err.count("\n") == 1, err


def test_refused_schedules_name_the_field_in_one_line(run: Run) -> None:
    run("hosts", "add", "web-1")
    argv = ("schedules", "create", "s", "syscalls", "--duration", "2s", "--all")
    code, _, err = run(*argv, "--cron", "61 * * * *")
    assert code == 2 and err.startswith("fleettrace: error: cron:") and err.count("\n") == 1, err
    code, _, err = run(*argv, "--cron", "0 3 * * *", "--tz", "Nowhere/Land")
    assert code == 2 and "time_zone" in err, err
    code, _, err = run("schedules", "create", "s", "nope", "--every", "1m", "--duration", "2s")
    assert code == 2 and "--hosts" in err  # argparse first
    code, _, err = run(*argv[:3], "nope", "--every", "1m", "--all", "--duration", "2")
    assert code == 2 and "template.program" in err, err


def test_create_list_show_pause_resume_delete_by_name(run: Run) -> None:
    run("hosts", "add", "web-1", "--label", "role=web")
    code, out, err = run(
        *("schedules", "create", "hourly", "syscalls", "--every", "1h", "--duration", "2s"),
        *("--selector", "role=web", "--keep-runs", "3"),
    )
    assert code == 0, err
    assert out.startswith("created schedule hourly (") and "syscalls, every 3600s" in out
    code, out, _ = run(
        *("schedules", "create", "nightly", "syscalls", "--cron", "0 3 * * *"),
        *("--tz", "Europe/Berlin", "--duration", "2s", "--all", "--paused"),
    )
    assert code == 0 and "next fire: paused" in out
    code, out, _ = run("schedules", "list")
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["NAME", "PROGRAM", "TIMING", "NEXT"]
    assert lines[1].startswith("hourly") and "every 3600s" in lines[1]
    assert lines[2].startswith("nightly") and "cron 0 3 * * * (Europe/Berlin)" in lines[2]
    assert "paused" in lines[2] and lines[-1] == "2 schedules"

    code, out, _ = run("schedules", "show", "hourly")
    assert code == 0 and "retention: last 3 runs" in out and "targets:   selector role=web" in out
    assert out.rstrip().endswith("no runs yet")
    code, out, _ = run("schedules", "pause", "hourly")
    assert out == "schedule hourly: paused\n"
    code, out, _ = run("schedules", "show", "hourly", "--json")
    shown = json.loads(out)
    assert shown["enabled"] is False and shown["next_fire_at"] is None
    code, out, _ = run("schedules", "resume", shown["id"])  # by id works too
    assert code == 0 and out.startswith("schedule hourly: resumed; next fire ")

    code, out, _ = run("schedules", "delete", "hourly")
    assert code == 0 and out == "deleted schedule hourly; its jobs are kept\n"
    code, _, err = run("schedules", "show", "hourly")
    assert code == 2 and err == (
        "fleettrace: error: no schedule named 'hourly' (fleettrace schedules list)\n"
    )


def _fire(run: Run, name: str) -> str:
    code, out, err = run("schedules", "run", name, "--json")
    assert code == 0, err
    fire = next(f for f in json.loads(out)["recent"] if f["manual"])
    return str(fire["job_id"])


@pytest.fixture
def fleet(run: Run, stub: AgentStub) -> list[str]:
    """Schedule `rq` on web-1 and web-2 fired three times with growing counts on web-1."""
    for name in ("web-1", "web-2"):
        run("hosts", "add", name, "--label", "role=web")
    code, _, err = run(
        *("schedules", "create", "rq", "syscalls", "--every", "1h", "--duration", "2s"),
        *("--selector", "role=web"),
    )
    assert code == 0, err
    stub.finish = {"web-1", "web-2"}
    jobs = []
    for i in range(3):
        stub.rows = {"web-1": {"read": 10 * (i + 1), "write": 2}, "web-2": {"read": 5}}
        jobs.append(_fire(run, "rq"))
    return jobs


def test_run_fires_a_job_and_shows_it(run: Run, stub: AgentStub) -> None:
    run("hosts", "add", "web-1")
    run("schedules", "create", "s", "syscalls", "--every", "1h", "--duration", "2s", "--all")
    stub.finish = {"web-1"}
    code, out, err = run("schedules", "run", "s")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("schedule s: fired job ") and lines[1].startswith("job ")
    assert any(line.split()[:2] == ["web-1", "succeeded"] for line in lines)
    code, out, _ = run("schedules", "show", "s")
    assert "fired (manual)" in out and "succeeded" in out


def test_trend_is_a_table_of_hosts_by_runs_with_a_sparkline(run: Run, fleet: list[str]) -> None:
    code, out, err = run("schedules", "trend", "rq", "--metric", "total:syscalls")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "total:syscalls (count) for schedule rq: 3 slots"
    assert lines[1].split()[0] == "HOST" and lines[1].split()[-1] == "TREND"
    assert lines[2].split()[0] == "web-1" and lines[2].split()[-4:] == ["12", "22", "32", "▁▅█"]
    assert lines[3].split()[0] == "web-2" and lines[3].split()[-4:] == ["5", "5", "5", "▁▁▁"]
    code, out, _ = run("schedules", "trend", "rq", "--metric", "key:syscalls:read", "--json")
    series = {s["host"]: [p["value"] for p in s["points"]] for s in json.loads(out)["series"]}
    assert series == {"web-1": [10, 20, 30], "web-2": [5, 5, 5]}
    code, _, err = run("schedules", "trend", "rq", "--metric", "median")
    assert code == 2 and err.startswith("fleettrace: error: metric: bad metric"), err


def test_sparkline_scales_each_series_and_marks_gaps() -> None:
    assert sparkline([0, 6, None, 14]) == "▁▄·█"
    assert sparkline([None, None]) == "··"
    assert sparkline([3.0]) == "▁"


def test_compare_defaults_to_the_last_two_runs(run: Run, fleet: list[str]) -> None:
    code, out, err = run("schedules", "compare", "rq")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"schedule rq: job {fleet[1]} -> job {fleet[2]}"
    web1 = lines[lines.index("web-1") + 1 :]
    assert web1[0].split() == ["METRIC", "UNIT", "BASE", "OTHER", "DELTA", "RATIO"]
    code, out, _ = run("schedules", "compare", "rq", "--json")
    report = json.loads(out)
    assert (report["base"], report["other"]) == (fleet[1], fleet[2])
    code, out, _ = run("schedules", "compare", "rq", "--runs", fleet[0], fleet[2], "--json")
    report = json.loads(out)
    assert (report["base"], report["other"]) == (fleet[0], fleet[2])
    hosts = {h["host"]: h for h in report["hosts"]}
    deltas = [m for m in hosts["web-1"]["metrics"] if m["base"] == 12 and m["other"] == 32]
    assert deltas and deltas[0]["delta"] == 20, hosts["web-1"]["metrics"]
    code, _, err = run("schedules", "compare", "rq", "--runs", "nope", fleet[2])
    assert code == 2 and err.startswith("fleettrace: error: base_job: job nope is not a run")


def test_compare_api_defaults_and_refusals(
    http: TestClient, admin: str, run: Run, stub: AgentStub
) -> None:
    headers = {"Authorization": f"Bearer {admin}"}
    run("hosts", "add", "web-1")
    run("schedules", "create", "c", "syscalls", "--every", "1h", "--duration", "2s", "--all")
    sid = json.loads(run("schedules", "show", "c", "--json")[1])["id"]
    url = f"/v1/schedules/{sid}/compare"
    assert http.get(url, headers=headers).status_code == 409  # no runs yet
    pending = _fire(run, "c")  # web-1 does not answer: the job stays pending
    stub.finish = {"web-1"}
    first = _fire(run, "c")
    answer = http.get(url, headers=headers)
    assert answer.status_code == 409 and "no finished run before" in answer.text
    second, third = _fire(run, "c"), _fire(run, "c")

    def pair(**query: str) -> tuple[str, str]:
        answer = http.get(url, params=query, headers=headers)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body["base"], body["other"]

    assert pair() == (second, third)
    assert pair(other_job=second) == (first, second)
    assert pair(base_job=first) == (first, third)
    assert pair(base_job=third, other_job=first) == (third, first)
    answer = http.get(url, params={"other_job": pending}, headers=headers)
    assert answer.status_code == 409  # nothing finished before the pending first run
    answer = http.get(url, params={"base_job": "not-a-job"}, headers=headers)
    assert answer.status_code == 422 and field_paths(answer) == ["query.base_job"]
    assert http.get("/v1/schedules/nope/compare", headers=headers).status_code == 404
