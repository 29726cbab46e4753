"""runqlat: run-queue latency (runnable to running) as log2 histograms."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from node_agent.programs.decode import histogram_map, text
from node_agent.programs.runqlat.cgroups import CgroupNames
from node_agent.programs.spec import DecodeContext, Param, ProgramSpec
from node_agent.protocol import KeyValue
from node_agent.scope import cgroup2_mount

NS_PER_UNIT = {"usec": 1_000, "msec": 1_000_000}


def _defines(params: Mapping[str, Any]) -> dict[str, str | int]:
    defines: dict[str, str | int] = {"FT_UNIT_DIV": NS_PER_UNIT[params["unit"]]}
    if params["per"] == "pid":
        defines["FT_PER_PID"] = 1
    elif params["per"] == "cgroup":
        defines["FT_PER_CGROUP"] = 1
    return defines


def labels_of(per: str, cgroup_name: Callable[[int], str]) -> Callable[[Any], dict[str, KeyValue]]:
    """How a histogram key of the kernel map becomes the histogram's labels."""
    if per == "pid":
        return lambda key: {"pid": int(key.tgid), "comm": text(key.comm)}
    if per == "cgroup":
        return lambda key: {"cgroup_id": int(key.cgroup), "cgroup": cgroup_name(int(key.cgroup))}
    return lambda key: {}


def _labels(ctx: DecodeContext) -> Callable[[Any], dict[str, KeyValue]]:
    per = str(ctx.params["per"])
    return labels_of(per, CgroupNames(cgroup2_mount() if per == "cgroup" else None))


SPEC = ProgramSpec(
    name="runqlat",
    summary="run-queue latency: time from wakeup or preemption until the task runs",
    output="log2_histogram",
    source_path=Path(__file__).with_name("program.c"),
    decode=histogram_map("runqlat", _labels),
    defines=_defines,
    tracepoints=("sched:sched_wakeup", "sched:sched_wakeup_new", "sched:sched_switch"),
    scope_note=(
        "scope, pid and comm labels are taken when the task itself is on the CPU (at its next "
        "switch out), not at wakeup; a task's last wait before the trace ends may be uncounted"
    ),
    params=(
        Param("unit", "str", "usec", "histogram unit", choices=("usec", "msec")),
        Param(
            "per",
            "str",
            "none",
            "one histogram for all, per process (pid, comm), or per cgroup",
            choices=("none", "pid", "cgroup"),
        ),
    ),
)
