"""Runs inside the test VM (tests/node_agent/headers/test_headers_vm.py): the agent's probe,
then `syscalls` (bcc) and `bpftrace` (no headers needed: BTF) each on a process making exactly
N getppid calls once the trace is running.

`python vm_guest.py OUT N`: writes {"probe": ..., "run": ..., "bpftrace": ..., ...} to OUT.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

AGENT = [sys.executable, "-m", "node_agent.cli"]
TRACE_S = 120  # long enough to compile under emulation; the workload ends it early
BPFTRACE = "tracepoint:syscalls:sys_enter_getppid { @calls[comm] = count(); }"
_WORKLOAD = """
import os, sys, time
while not os.path.exists(sys.argv[1]):
    time.sleep(0.05)
for _ in range(int(sys.argv[2])):
    os.getppid()
"""


def _probe() -> dict[str, Any]:
    started = time.monotonic()
    done = subprocess.run([*AGENT, "probe"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"probe": {"error": done.stderr[-2000:]}}
    # Whatever else reached stdout (a tool bcc ran, say) is kept, not mistaken for the probe.
    probe, end = json.JSONDecoder().raw_decode(done.stdout)
    return {
        "probe": probe,
        "probe_s": round(time.monotonic() - started, 1),
        "probe_stray_stdout": done.stdout[end:].strip()[-2000:],
    }


def _trace(calls: int, program: str) -> dict[str, Any]:
    """`program --pid` on the workload; it makes its calls once the trace says running."""
    go = Path(f"/tmp/ft-go-{program}-{os.getpid()}")  # one per trace: each workload waits
    workload = subprocess.Popen([sys.executable, "-c", _WORKLOAD, str(go), str(calls)])
    started = time.monotonic()
    agent = subprocess.Popen(
        [*AGENT, "run", program, "--pid", str(workload.pid)]
        + ["--duration", f"{TRACE_S}s", "--json"]
        + (["--allow-bpftrace", "--script", BPFTRACE] if program == "bpftrace" else []),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert agent.stdout is not None and agent.stderr is not None
    events: list[dict[str, Any]] = []
    running_s = None
    for line in agent.stdout:
        event = json.loads(line)
        events.append(event)
        if event.get("type") == "state" and event.get("state") == "running":
            running_s = round(time.monotonic() - started, 1)
            go.touch()
            workload.wait(timeout=60)
            time.sleep(1.0)  # the calls are counted; then stop the trace early
            agent.send_signal(2)
    agent.wait(timeout=120)
    if workload.poll() is None:
        workload.kill()
    counts = {}
    finals = [e for e in events if e.get("type") == "snapshot" and e.get("final")]
    for result in finals[-1]["results"][:1] if finals else []:
        for key, value in result["rows"]:
            if program == "bpftrace":  # @calls[comm], scoped to the workload's pid
                counts["getppid"] = counts.get("getppid", 0) + value[0]
            elif key[1] == workload.pid:
                counts[key[0]] = value[0]
    states = [e for e in events if e.get("type") == "state"]
    return {
        "returncode": agent.returncode,
        "stderr": agent.stderr.read()[-3000:],
        "final_state": states[-1] if states else None,
        "running_after_s": running_s,
        "compile_s": finals[-1]["stats"]["compile_s"] if finals else None,
        "counts": counts,
        "last_events": json.dumps(events[-3:])[-3000:],
    }


def main() -> int:
    out, calls = Path(sys.argv[1]), int(sys.argv[2])
    result: dict[str, Any] = {"uname": os.uname().release}
    result.update(_probe())
    result["run"] = _trace(calls, "syscalls")
    result["bpftrace"] = _trace(calls, "bpftrace")
    state_dir = Path("/var/lib/fleettrace/kheaders")
    if state_dir.is_dir():
        result["kheaders_dir"] = {
            p.name: oct(p.stat().st_mode & 0o777) for p in [state_dir, *state_dir.iterdir()]
        }
    result["tmp_kheaders"] = sorted(p.name for p in Path("/tmp").glob("kheaders-*"))
    result["modules"] = Path("/proc/modules").read_text().count("kheaders ")
    out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
