"""bpftrace: a caller's bpftrace script, run with the host's bpftrace; its maps are the result."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from node_agent.bpftrace.keys import parse_keys
from node_agent.bpftrace.script import MAX_SCRIPT, check_script
from node_agent.errors import BadRequest, PolicyViolation
from node_agent.programs.spec import DecodeContext, Param, ProgramSpec, RefusedField
from node_agent.protocol import Feature, Result


def _no_decoder(ctx: DecodeContext) -> list[Result]:
    raise BadRequest("bpftrace results are read from bpftrace's output, not from bcc maps")


def _policy(params: Mapping[str, Any]) -> None:
    parse_keys(str(params.get("keys", "")))  # BadParameter("params.keys", ...)
    try:
        check_script(str(params["script"]))
    except PolicyViolation as exc:
        raise RefusedField("params.script", exc.message, detail=exc.detail) from None


SPEC = ProgramSpec(
    name="bpftrace",
    summary="a bpftrace script; its maps become counter tables, histograms and stacks",
    output="counter_table",
    source_path=None,
    decode=_no_decoder,
    params=(
        Param("script", "str", "", "the bpftrace script", max_length=MAX_SCRIPT),
        Param(
            "keys",
            "str",
            "",
            "names of the maps' key fields: `comm,pid` for every map, `@m=comm,pid;@n=cpu`"
            " per map (default key0, key1, ...)",
            max_length=1024,
        ),
    ),
    features=frozenset({Feature.bpftrace}),
    engine="bpftrace",
    param_policy=_policy,
)
