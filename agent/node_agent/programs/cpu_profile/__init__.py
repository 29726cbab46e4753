"""cpu_profile: where CPU time goes, as sampled user and kernel stacks per process."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from node_agent.programs.spec import DecodeContext, Param, PerfSample, ProgramSpec
from node_agent.programs.stacks import STACK_PARAMS, folded_stacks, stack_defines
from node_agent.protocol import Feature, Result


def _defines(params: Mapping[str, Any]) -> dict[str, str | int]:
    return {**stack_defines(params), "FT_IDLE": int(params["idle"])}


def _decode(ctx: DecodeContext) -> list[Result]:
    return [folded_stacks(ctx, "cpu_profile", "counts", "samples")]


SPEC = ProgramSpec(
    name="cpu_profile",
    summary="sampled on-CPU stacks (user and kernel) per process, for flame graphs",
    output="folded_stacks",
    source_path=Path(__file__).with_name("program.c"),
    decode=_decode,
    defines=_defines,
    features=frozenset({Feature.perf_events}),
    perf_samples=(PerfSample(fn="on_sample", frequency_param="frequency"),),
    params=(
        Param("frequency", "int", 49, "samples per second on each CPU", minimum=1, maximum=1000),
        *STACK_PARAMS,
        Param("idle", "bool", False, "include the idle task (pid 0)"),
    ),
)
