"""Which of a program's attach options this host has, and the one a trace uses."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

from node_agent.errors import UnsupportedProgram
from node_agent.programs.spec import AUTO, AttachOption, ProgramSpec
from node_agent.protocol import Feature

log = logging.getLogger(__name__)

TRACEFS = Path("/sys/kernel/tracing")
BTF_VMLINUX = Path("/sys/kernel/btf/vmlinux")
KALLSYMS = Path("/proc/kallsyms")
FENTRY_PROBE = "KFUNC_PROBE(do_nanosleep) { return 0; }"
_FUNCTION_TYPES = frozenset("Tt")  # kallsyms: text symbols, global or local


def _read_functions(tracefs: Path) -> frozenset[str] | None:
    """The functions ftrace can attach to, else the kernel's text symbols; None: unknown."""
    try:  # "name" or "name [module]" per line; unreadable under some sandboxes (EPERM)
        lines = (tracefs / "available_filter_functions").read_text().splitlines()
        return frozenset(line.split(" ", 1)[0] for line in lines if line)
    except OSError:
        pass
    try:
        symbols = KALLSYMS.read_text().splitlines()
    except OSError:
        return None
    found = set()
    for line in symbols:
        parts = line.split()
        if len(parts) >= 3 and parts[1] in _FUNCTION_TYPES:
            found.add(parts[2])
    return frozenset(found) or None


@cache
def kernel_functions(tracefs: Path = TRACEFS) -> frozenset[str] | None:
    return _read_functions(tracefs)


def local_features(needed: frozenset[Feature]) -> tuple[dict[Feature, bool], dict[Feature, str]]:
    """The features a choice needs, found without the full probe (a local run has none):
    files that say so, and for fentry a tiny program loaded for real."""
    features: dict[Feature, bool] = {}
    errors: dict[Feature, str] = {}
    files = {
        Feature.tracepoints: TRACEFS / "events",
        Feature.kprobes: TRACEFS / "kprobe_events",
        Feature.uprobes: TRACEFS / "uprobe_events",
        Feature.btf: BTF_VMLINUX,
    }
    for feature in needed:
        path = files.get(feature)
        if path is not None:
            features[feature] = path.exists()
            if not features[feature]:
                errors[feature] = f"no {path}"
    if Feature.fentry in needed:
        problem = fentry_problem()
        features[Feature.fentry] = problem is None
        if problem is not None:
            errors[Feature.fentry] = problem
    return features, errors


@cache
def fentry_problem() -> str | None:
    """Why fentry programs do not load here (None: they do): a tiny one, loaded for real."""
    if not BTF_VMLINUX.exists():
        return "fentry needs kernel BTF (no /sys/kernel/btf/vmlinux)"
    from node_agent.runtime.bcc_runtime import captured_stderr

    with captured_stderr() as output:
        try:
            from bcc import BPF

            BPF(text=FENTRY_PROBE).cleanup()
        except Exception as exc:
            detail = output().strip().splitlines()
            return f"{exc}" + (f" ({detail[-1]})" if detail else "")
    return None


def missing(
    option: AttachOption,
    features: Mapping[Feature, bool],
    errors: Mapping[Feature, str] | None = None,
    tracefs: Path = TRACEFS,
) -> list[str]:
    """What this host lacks for one attach option, each item naming it; empty: it has all."""
    lacking: list[str] = []
    for feature in sorted(option.features, key=lambda f: f.value):
        if not features.get(feature, False):
            why = (errors or {}).get(feature)
            lacking.append(f"{feature.value}" + (f" ({why})" if why else ""))
    for tp in option.tracepoints:
        category, _, event = tp.partition(":")
        if not (tracefs / "events" / category / event).is_dir():
            lacking.append(f"tracepoint {tp}")
    functions = kernel_functions(tracefs) if option.functions else None
    for fn in option.functions:
        if functions is not None and fn not in functions:
            lacking.append(f"kernel function {fn} (renamed or inlined in this kernel)")
    return lacking


def _candidates(spec: ProgramSpec, wanted: str) -> Sequence[AttachOption]:
    return spec.attach if wanted == AUTO else [o for o in spec.attach if o.kind == wanted]


def unavailable(
    spec: ProgramSpec,
    wanted: str,
    features: Mapping[Feature, bool] | None,
    errors: Mapping[Feature, str] | None = None,
    tracefs: Path = TRACEFS,
) -> tuple[AttachOption | None, str]:
    """The first wanted option this host has, or None and why each option is out of reach.

    `features` come from the agent's probe; None (a local run): found out here, one option at
    a time, so a cheap option that is there spares probing for the others."""
    why: list[str] = []
    for option in _candidates(spec, wanted):
        have, have_errors = (
            (features, errors) if features is not None else local_features(option.features)
        )
        lacking = missing(option, have, have_errors, tracefs)
        if not lacking:
            return option, ""
        why.append(f"{option.kind} ({option.point}) needs {', '.join(lacking)}")
    return None, "; ".join(why) or f"{spec.name} has no attach option {wanted!r}"


def choose(
    spec: ProgramSpec,
    wanted: str,
    features: Mapping[Feature, bool] | None,
    errors: Mapping[Feature, str] | None = None,
    tracefs: Path = TRACEFS,
) -> AttachOption:
    """The option a trace uses (`wanted`: auto or a kind): the first this host has; else
    UnsupportedProgram naming what each option lacks."""
    option, why = unavailable(spec, wanted, features, errors, tracefs)
    if option is None:
        what = "none of its attach options works" if wanted == AUTO else f"attach={wanted} fails"
        raise UnsupportedProgram(f"{spec.name}: {what} on this host: {why}")
    log.info("%s attaches by %s (%s)", spec.name, option.kind, option.point)
    return option
