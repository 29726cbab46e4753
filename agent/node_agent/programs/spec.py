"""A catalog program as data: its parameters, needs, C source and decoder."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from node_agent.errors import BadParameter, PolicyViolation
from node_agent.protocol import Feature, KeyValue, Limits, MapDecl, Result, TraceTemplate
from node_agent.runtime.base import LoadedProgram
from node_agent.scope import cgroup_path_problem

ParamType = Literal["int", "float", "bool", "str"]
OutputKind = Literal["counter_table", "log2_histogram", "folded_stacks", "event_samples"]
Engine = Literal["bcc", "bpftrace"]
AttachKind = Literal["raw_tracepoint", "tracepoint", "fentry", "kprobe"]
AUTO = "auto"
ALL_SCOPES = frozenset({"cgroup", "pid", "comm"})


class RefusedField(PolicyViolation):
    """A policy refusal that names the request field it refuses: the API answers 422 on it."""

    def __init__(self, field: str, message: str, *, detail: str | None = None) -> None:
        super().__init__(message, detail=detail)
        self.field = field


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Param:
    name: str
    type: ParamType
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    max_length: int | None = None  # for str: the most characters a value may have

    def coerce(self, raw: Any) -> Any:
        """Turn a JSON value or a CLI string into this parameter's type, within bounds."""
        value: Any
        try:
            if self.type == "bool":
                if isinstance(raw, bool):
                    value = raw
                elif str(raw).lower() in _TRUE:
                    value = True
                elif str(raw).lower() in _FALSE:
                    value = False
                else:
                    raise ValueError
            elif self.type == "int":
                if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                    raise ValueError
                value = int(raw)
            elif self.type == "float":
                if isinstance(raw, bool):
                    raise ValueError
                value = float(raw)
                if not math.isfinite(value):
                    raise ValueError
            else:
                if not isinstance(raw, str):
                    raise ValueError
                value = raw
        except (TypeError, ValueError):
            raise BadParameter(
                f"params.{self.name}", f"expected {self.type}, got {raw!r}"
            ) from None
        if self.minimum is not None and value < self.minimum:
            raise BadParameter(
                f"params.{self.name}", f"{value} is below the minimum {self.minimum:g}"
            )
        if self.maximum is not None and value > self.maximum:
            raise BadParameter(
                f"params.{self.name}", f"{value} is above the maximum {self.maximum:g}"
            )
        if self.max_length is not None and isinstance(value, str) and len(value) > self.max_length:
            raise BadParameter(
                f"params.{self.name}",
                f"{len(value)} characters, above the maximum {self.max_length}",
            )
        if self.choices is not None and value not in self.choices:
            raise BadParameter(
                f"params.{self.name}", f"{value!r} is not one of {', '.join(self.choices)}"
            )
        return value

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "default": self.default}
        out["help"] = self.help
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.choices is not None:
            out["choices"] = list(self.choices)
        if self.max_length is not None:
            out["max_length"] = self.max_length
        return out


@dataclass(frozen=True)
class DecodeContext:
    """What a decoder gets: the loaded program, validated params and the limits."""

    program: LoadedProgram
    params: Mapping[str, Any]
    limits: Limits
    maps: Sequence[MapDecl] = ()


Decoder = Callable[[DecodeContext], list[Result]]
Defines = Callable[[Mapping[str, Any]], dict[str, str | int]]
SourcePolicy = Callable[[str], None]  # raises PolicyViolation for source it refuses
# Checks validated parameters beyond their types (a bpftrace script): raises RefusedField.
ParamPolicy = Callable[[Mapping[str, Any]], None]


def no_defines(params: Mapping[str, Any]) -> dict[str, str | int]:
    return {}


@dataclass(frozen=True)
class PerfSample:
    """A function run on a CPU-clock perf event; the frequency comes from a parameter."""

    fn: str
    frequency_param: str


@dataclass(frozen=True)
class SampleSpec:
    """A perf output whose most recent events are kept as a bounded sample."""

    table: str
    fields: tuple[str, ...]
    row: Callable[[Any], list[KeyValue | float]]
    name: str = "recent"


@dataclass(frozen=True)
class AttachOption:
    """One way a program attaches (a program lists them cheapest first): what it needs of
    the kernel, and the C define (FT_ATTACH_<KIND>) that selects it in the program's source."""

    kind: AttachKind
    point: str  # shown in each snapshot's stats, e.g. "tracepoint:sock:inet_sock_set_state"
    features: frozenset[Feature]
    tracepoints: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()  # kernel functions it attaches to (renamed or inlined: gone)
    # Kernel struct members its code reads through pointers, as (C define, "struct.member"):
    # with approximate headers the define is the kernel's own offset, from its BTF (node_agent.btf).
    fields: tuple[tuple[str, str], ...] = ()

    @property
    def define(self) -> str:
        return f"FT_ATTACH_{self.kind.upper()}"

    @classmethod
    def tracepoint(cls, *tracepoints: str, raw: bool = False) -> AttachOption:
        """Tracepoints (`raw`: as raw tracepoints, which format no record)."""
        kind: AttachKind = "raw_tracepoint" if raw else "tracepoint"
        names = [tp.partition(":")[2] for tp in tracepoints] if raw else tracepoints
        point = f"{kind}:" + ",".join(names)
        return cls(kind, point, frozenset({Feature.tracepoints}), tracepoints=tracepoints)

    @classmethod
    def on_functions(
        cls,
        kind: Literal["fentry", "kprobe"],
        *functions: str,
        fields: Mapping[str, str] | None = None,
    ) -> AttachOption:
        """fentry (+fexit) or kprobes (+kretprobes) on kernel functions, reading `fields`."""
        features = {Feature.fentry, Feature.btf} if kind == "fentry" else {Feature.kprobes}
        point = f"{kind}:" + ",".join(functions)
        read = tuple((fields or {}).items())
        return cls(kind, point, frozenset(features), functions=functions, fields=read)


def attach_param(options: Sequence[AttachOption]) -> Param:
    """The `attach` parameter of a program with attach options: auto or one of its own."""
    return Param(
        "attach",
        "str",
        AUTO,
        "attach point: auto (the cheapest this host has) or one of the program's own",
        choices=(AUTO, *(o.kind for o in options)),
    )


@dataclass(frozen=True)
class ProgramSpec:
    name: str
    summary: str
    output: OutputKind
    decode: Decoder
    source_path: Path | None
    params: tuple[Param, ...] = ()
    features: frozenset[Feature] = frozenset({Feature.tracepoints})
    tracepoints: tuple[str, ...] = ()
    scopes: frozenset[str] = ALL_SCOPES
    scope_note: str | None = None
    defines: Defines = no_defines
    perf_samples: tuple[PerfSample, ...] = ()
    samples: SampleSpec | None = None
    # Set for a program whose C comes with the request (custom): how that source is checked.
    source_policy: SourcePolicy | None = None
    # What runs it: bcc compiles the C above; bpftrace runs the script in params.script.
    engine: Engine = "bcc"
    param_policy: ParamPolicy | None = None
    # Ways to attach, cheapest first; `features` and `tracepoints` are then what all need.
    attach: tuple[AttachOption, ...] = ()

    def __post_init__(self) -> None:
        if self.attach and all(p.name != "attach" for p in self.params):
            object.__setattr__(self, "params", (*self.params, attach_param(self.attach)))

    @property
    def admin_only(self) -> bool:
        """Code that comes with the request (custom C, a bpftrace script): admins only, and
        only on agents that allow it."""
        return self.source_policy is not None or self.engine == "bpftrace"

    def source(self) -> str:
        if self.source_path is None:
            raise ValueError(f"{self.name} has no C source of its own")
        return self.source_path.read_text()

    def validate_params(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        known = {p.name: p for p in self.params}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            names = ", ".join(known) or "none"
            raise BadParameter(
                f"params.{unknown[0]}", f"unknown parameter (this program takes: {names})"
            )
        return {
            name: p.coerce(raw[name]) if name in raw else p.default for name, p in known.items()
        }

    def check(self, trace: TraceTemplate, *, confined: bool = False) -> dict[str, Any]:
        """Everything this program decides about a trace, the same at the API, for a schedule's
        template and on the agent: the custom source and maps, the parameters and the scope.
        Returns the validated parameters; raises BadParameter naming the field, or
        RefusedField (a PolicyViolation naming it) for source or a cgroup path refused on its face.

        `confined`: the agent confines every trace to its own cgroup (a cgroup scope always).
        """
        self._check_source(trace)
        params = self.validate_params(trace.params)
        if self.param_policy is not None:  # the agents check again, whatever they are sent
            self.param_policy(params)
        kinds = trace.scope.kinds() | ({"cgroup"} if confined else set())
        for kind in sorted(kinds - self.scopes):
            note = f" ({self.scope_note})" if self.scope_note else ""
            raise BadParameter(f"scope.{kind}", f"{self.name} cannot be scoped by {kind}{note}")
        cgroup = trace.scope.cgroup
        problem = cgroup_path_problem(cgroup) if cgroup is not None else None
        if problem:  # each agent checks again, inside its own base cgroup
            raise RefusedField("scope.cgroup", f"scope.cgroup: {problem} (got {cgroup!r})")
        return params

    def _check_source(self, trace: TraceTemplate) -> None:
        if self.source_policy is None:
            if trace.source is not None:
                raise BadParameter("source", "'source' is only for the custom program")
            if trace.maps:
                raise BadParameter("maps", "'maps' is only for the custom program")
            return
        if not trace.source:
            raise BadParameter("source", f"{self.name} programs need 'source' (bcc C)")
        if not trace.maps:
            raise BadParameter("maps", f"{self.name} programs need 'maps' to declare what to read")
        try:  # the agents check again, whatever they are sent
            self.source_policy(trace.source)
        except PolicyViolation as exc:
            raise RefusedField("source", exc.message, detail=exc.detail) from None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "summary": self.summary,
            "output": self.output,
            "params": [p.describe() for p in self.params],
            "features": sorted(f.value for f in self.features),
            "tracepoints": list(self.tracepoints),
            "scopes": sorted(self.scopes),
            "scope_note": self.scope_note,
            "engine": self.engine,
            "admin_only": self.admin_only,
            "attach": [
                {
                    "kind": o.kind,
                    "point": o.point,
                    "features": sorted(f.value for f in o.features),
                    "tracepoints": list(o.tracepoints),
                    "functions": list(o.functions),
                }
                for o in self.attach
            ],
        }
