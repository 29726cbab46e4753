"""SSH bootstrap: one bare host alone, N at once, and a re-run on ready hosts.

The hosts are the local fleet's (network, mount and UTS namespaces, each with its own
OpenSSH server and a light workload), started WITHOUT agents: `fleettrace serve` (API,
ingest and the controller worker that runs bootstraps) does everything over SSH, as for a
real host. The agent's wheel and wheelhouse are built (or found in the cache) before any
timing. Each round: bootstrap node-0 alone; then node-1..node-N in one batch with
parallel=N; then all N+1 again (ready: every step should be `ok`); then uninstall all, so
the next round starts from bare hosts again.

Times are wall clock from the POST to every run final, as a client polling every 0.1 s sees
it; per step, the durations recorded by the controller.

    sudo .venv/bin/python bench/bootstrap.py [--hosts 4] [--rounds 2] [--json]
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _main
import httpx

from controller.bootstrap.artifacts import Artifacts, TargetPlatform
from devstack import HostSpec, Stack, down, sshd
from devstack.config import private_config
from devstack.stack import artifacts_dir

FINAL = {"succeeded", "failed", "cancelled"}
STEPS = ("preflight", "packages", "upload", "install", "config", "service", "verify")
OPTIONS = {"heartbeat_s": 1}


def say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def local_target() -> TargetPlatform:
    """The hosts are namespaces of this machine: their Python and platform are its own."""
    libc = platform.libc_ver()[1] or None
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    return TargetPlatform(python=python, arch=platform.machine(), glibc=libc)


class Bench:
    def __init__(self, api: httpx.Client) -> None:
        self.api = api

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code >= 300:
            raise RuntimeError(f"{response.request.url}: {response.status_code} {response.text}")
        return response.json()

    def wait(self, runs: dict[str, str], timeout_s: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        done: dict[str, Any] = {}
        while len(done) < len(runs):
            for host, run_id in runs.items():
                if host not in done:
                    run = self._json(self.api.get(f"/v1/hosts/{host}/bootstrap"))
                    if run["id"] == run_id and run["state"] in FINAL:
                        done[host] = run
            if time.monotonic() > deadline:
                raise RuntimeError(f"runs not final after {timeout_s}s")
            time.sleep(0.1)
        return done

    def bootstrap(self, hosts: list[str]) -> tuple[float, dict[str, Any]]:
        body = {"hosts": hosts, "parallel": len(hosts), "options": OPTIONS}
        started = time.monotonic()
        batch = self._json(self.api.post("/v1/hosts/bootstrap", json=body))
        runs = self.wait({r["host"]: r["id"] for r in batch["runs"]})
        took = time.monotonic() - started
        failed = {h: r["error"] for h, r in runs.items() if r["state"] != "succeeded"}
        if failed:
            raise RuntimeError(f"bootstrap failed: {failed}")
        return took, runs

    def uninstall(self, hosts: list[str]) -> float:
        started = time.monotonic()
        runs = {h: self._json(self.api.post(f"/v1/hosts/{h}/uninstall"))["id"] for h in hosts}
        done = self.wait(runs)
        failed = {h: r["error"] for h, r in done.items() if r["state"] != "succeeded"}
        if failed:
            raise RuntimeError(f"uninstall failed: {failed}")
        return time.monotonic() - started


def step_times(runs: dict[str, Any]) -> dict[str, float]:
    """Per step, the median over the hosts of the recorded duration."""
    out = {}
    for name in STEPS:
        values = [
            s["duration_s"] or 0.0 for r in runs.values() for s in r["steps"] if s["name"] == name
        ]
        out[name] = statistics.median(values) if values else 0.0
    return out


def statuses(runs: dict[str, Any]) -> set[str]:
    return {s["status"] for r in runs.values() for s in r["steps"]}


def run(hosts: int, rounds: int) -> dict[str, Any]:
    specs = tuple(HostSpec(f"node-{i}", {"bench": "bootstrap"}) for i in range(hosts + 1))
    state_dir = Path(tempfile.mkdtemp(prefix="ft-bench-bootstrap-"))
    config = private_config(state_dir, specs, kind="B", subnet=50, owner="bench")
    started = time.monotonic()
    bundle = Artifacts(artifacts_dir(config)).bundle(local_target())
    size_mb = sum(f.size for f in bundle.files) / 1e6
    ready = time.monotonic() - started
    say(f"artifacts: {len(bundle.files)} files, {size_mb:.1f} MB, ready in {ready:.1f}s")
    stack = Stack(config, services=[sshd.Sshd()], agents=False, progress=say)
    stack.up()
    result: dict[str, Any] = {
        "hosts_parallel": hosts,
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
        "bundle_files": len(bundle.files),
        "bundle_mb": round(size_mb, 1),
        "rounds": [],
    }
    names = [s.name for s in specs]
    try:
        headers = {"Authorization": f"Bearer {stack.token}"}
        with httpx.Client(base_url=config.api_url, headers=headers, timeout=30) as api:
            bench = Bench(api)
            for number in range(1, rounds + 1):
                say(f"round {number}: one host")
                one, one_runs = bench.bootstrap(names[:1])
                say(f"round {number}: {hosts} hosts at once")
                many, many_runs = bench.bootstrap(names[1:])
                say(f"round {number}: re-run on {hosts + 1} ready hosts")
                rerun, rerun_runs = bench.bootstrap(names)
                say(f"round {number}: uninstall")
                removed = bench.uninstall(names)
                result["rounds"].append(
                    {
                        "one_s": round(one, 2),
                        "parallel_s": round(many, 2),
                        "rerun_s": round(rerun, 2),
                        "uninstall_s": round(removed, 2),
                        "rerun_statuses": sorted(statuses(rerun_runs)),
                        "steps_one": step_times(one_runs),
                        "steps_parallel": step_times(many_runs),
                        "steps_rerun": step_times(rerun_runs),
                    }
                )
                say(f"  one {one:.1f}s, {hosts} at once {many:.1f}s, re-run {rerun:.1f}s")
    finally:
        down(state_dir, purge=True, reap=stack.reap)
    return result


def table(result: dict[str, Any]) -> str:
    rounds = result["rounds"]
    n = result["hosts_parallel"]

    def med(key: str) -> float:
        return float(statistics.median(r[key] for r in rounds))

    lines = [
        f"bootstrap over SSH: {n} hosts in parallel vs 1, re-run on {n + 1} ready hosts;"
        f" {result['bundle_files']} files ({result['bundle_mb']} MB) per host;"
        f" kernel {result['kernel']}, {result['cpus']} CPUs; median of {len(rounds)} rounds",
        f"{'':<26}{'wall s':>8}{'per host s':>12}",
        *(
            f"{label:<26}{wall:>8.1f}{wall / count:>12.1f}"
            for label, wall, count in (
                ("1 host", med("one_s"), 1),
                (f"{n} hosts, parallel {n}", med("parallel_s"), n),
                (f"re-run, {n + 1} ready hosts", med("rerun_s"), n + 1),
                (f"uninstall, {n + 1} hosts", med("uninstall_s"), n + 1),
            )
        ),
        f"speed-up of {n} at once over {n} one after the other:"
        f" x{n * med('one_s') / med('parallel_s'):.2f}",
        "",
        f"{'step (median s)':<16}" + "".join(f"{s:>10}" for s in STEPS),
    ]
    for label, key in (
        ("1 host", "steps_one"),
        (f"{n} at once", "steps_parallel"),
        ("re-run", "steps_rerun"),
    ):
        values = [statistics.median(r[key][s] for r in rounds) for s in STEPS]
        lines.append(f"{label:<16}" + "".join(f"{v:>10.2f}" for v in values))
    statuses_seen = sorted({s for r in rounds for s in r["rerun_statuses"]})
    lines.append(f"re-run step statuses: {', '.join(statuses_seen)}")
    return "\n".join(lines)


def main() -> int:
    parser = _main.options(__doc__, rounds=2)
    parser.add_argument("--hosts", type=int, default=4, help="hosts bootstrapped at once (4)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        say("needs root (namespaces, cgroups, sshd, bcc)")
        return 1
    result = run(args.hosts, args.rounds)
    return _main.finish(args, result, lambda summary: print(table(summary)))


if __name__ == "__main__":
    sys.exit(main())
