"""biolatency: block I/O latency (issue to completion) as log2 histograms, per disk."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from node_agent.programs.biolatency.disks import SYS_DEV_BLOCK, disk_name
from node_agent.programs.decode import histogram_map
from node_agent.programs.spec import Param, ProgramSpec
from node_agent.protocol import KeyValue

NS_PER_UNIT = {"usec": 1_000, "msec": 1_000_000}


def _defines(params: Mapping[str, Any]) -> dict[str, str | int]:
    defines: dict[str, str | int] = {"FT_UNIT_DIV": NS_PER_UNIT[params["unit"]]}
    if params["per_disk"]:
        defines["FT_PER_DISK"] = 1
    return defines


def labels_of(
    per_disk: bool, sys_dev_block: Path = SYS_DEV_BLOCK
) -> Callable[[Any], dict[str, KeyValue]]:
    """Histogram labels of a kernel map key; each disk's name is looked up once per call."""
    if not per_disk:
        return lambda key: {}
    names: dict[int, str] = {}

    def labels(key: Any) -> dict[str, KeyValue]:
        dev = int(key.dev)
        if dev not in names:
            names[dev] = disk_name(dev, sys_dev_block)
        return {"disk": names[dev]}

    return labels


SPEC = ProgramSpec(
    name="biolatency",
    summary="block I/O latency from issue to the driver until completion, per disk",
    output="log2_histogram",
    source_path=Path(__file__).with_name("program.c"),
    decode=histogram_map("biolatency", lambda ctx: labels_of(bool(ctx.params["per_disk"]))),
    defines=_defines,
    tracepoints=("block:block_rq_issue", "block:block_rq_complete"),
    scope_note=(
        "the scope is checked against the task current when a request is issued to the driver: "
        "the submitter for most direct and synchronous I/O, but a kernel worker (writeback, "
        "journal, kblockd) for buffered writeback and deferred dispatch, which a process or "
        "cgroup scope then leaves out or, rarely, lets in"
    ),
    params=(
        Param("unit", "str", "usec", "histogram unit", choices=("usec", "msec")),
        Param("per_disk", "bool", True, "one histogram per disk (else one for all disks)"),
    ),
)
