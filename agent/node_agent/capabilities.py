"""What this host's kernel can run, probed for real by loading tiny programs."""

from __future__ import annotations

import logging
import os
import platform
import re
from pathlib import Path
from typing import Any

from node_agent.programs import catalog
from node_agent.programs.spec import ProgramSpec
from node_agent.protocol import Feature, HeadersState, HostCapabilities, ProgramSupport
from node_agent.trace import TRACEFS

log = logging.getLogger(__name__)

_PROBE_SOURCE = r"""
#include <uapi/linux/ptrace.h>
#include <uapi/linux/bpf_perf_event.h>
TRACEPOINT_PROBE(sched, sched_process_fork) { return 0; }
int ft_probe_perf(struct bpf_perf_event_data *ctx) { return 0; }
int ft_probe_kprobe(struct pt_regs *ctx) { return 0; }
int ft_probe_uprobe(struct pt_regs *ctx) { return 0; }
"""
_FENTRY_SOURCE = "KFUNC_PROBE(do_nanosleep) { return 0; }"


def headers_state(release: str | None = None) -> tuple[HeadersState, str]:
    """Exact when the build tree is this kernel's, approximate when another's is linked in."""
    release = release or platform.release()
    build = Path("/lib/modules") / release / "build"
    if build.exists():
        target = build.resolve()
        version = _headers_release(target)
        if version == release:
            return HeadersState.exact, f"{target} matches the running kernel"
        return (
            HeadersState.approximate,
            f"{target} is for {version or 'another kernel'}, not {release}",
        )
    if Path("/sys/kernel/kheaders.tar.xz").exists():
        return HeadersState.exact, "the kernel's own /sys/kernel/kheaders.tar.xz"
    return HeadersState.none, f"no {build} and no kheaders module"


def _headers_release(tree: Path) -> str | None:
    for name in ("include/generated/utsrelease.h", "include/config/kernel.release"):
        path = tree / name
        if path.exists():
            match = re.search(r'"([^"]+)"', path.read_text()) or re.search(
                r"(\S+)", path.read_text()
            )
            if match:
                return match.group(1)
    return None


def lockdown_mode() -> str | None:
    path = Path("/sys/kernel/security/lockdown")
    if not path.exists():
        return None
    match = re.search(r"\[(\w+)\]", path.read_text())
    return match.group(1) if match else None


def _try(errors: dict[Feature, str], feature: Feature, action: Any) -> bool:
    from node_agent.runtime.bcc_runtime import captured_stderr

    with captured_stderr() as output:
        try:
            action()
        except Exception as exc:
            detail = output().strip().splitlines()
            errors[feature] = f"{exc}" + (f" ({detail[-1]})" if detail else "")
            return False
    return True


def probe_features() -> tuple[dict[Feature, bool], dict[Feature, str]]:
    """Load and attach one tiny program per feature; a feature is there only if that works."""
    features = dict.fromkeys(Feature, False)
    errors: dict[Feature, str] = {}
    features[Feature.btf] = Path("/sys/kernel/btf/vmlinux").exists()
    if not features[Feature.btf]:
        errors[Feature.btf] = "no /sys/kernel/btf/vmlinux"
    try:
        from bcc import BPF, PerfSWConfig, PerfType
    except ImportError as exc:
        for feature in Feature:
            if feature is not Feature.btf:
                errors[feature] = f"bcc is not importable: {exc}"
        return features, errors

    holder: dict[str, Any] = {}

    def load() -> None:
        holder["bpf"] = BPF(text=_PROBE_SOURCE)

    if not _try(errors, Feature.tracepoints, load):
        for feature in (Feature.perf_events, Feature.kprobes, Feature.uprobes):
            errors[feature] = errors[Feature.tracepoints]
        return features, errors
    bpf = holder["bpf"]
    try:
        features[Feature.tracepoints] = True

        def perf() -> None:
            bpf.attach_perf_event(
                ev_type=PerfType.SOFTWARE,
                ev_config=PerfSWConfig.CPU_CLOCK,
                fn_name="ft_probe_perf",
                sample_period=1_000_000_000,
            )

        def kprobe() -> None:
            if not (TRACEFS / "kprobe_events").exists():
                raise RuntimeError(f"no {TRACEFS / 'kprobe_events'}: kernel built without kprobes")
            bpf.attach_kprobe(event=bpf.get_syscall_fnname("getpid"), fn_name="ft_probe_kprobe")

        def uprobe() -> None:
            bpf.attach_uprobe(name="c", sym="getpid", fn_name="ft_probe_uprobe")

        features[Feature.perf_events] = _try(errors, Feature.perf_events, perf)
        features[Feature.kprobes] = _try(errors, Feature.kprobes, kprobe)
        features[Feature.uprobes] = _try(errors, Feature.uprobes, uprobe)
    finally:
        bpf.cleanup()

    def fentry() -> None:
        if not features[Feature.btf]:
            raise RuntimeError("fentry needs kernel BTF")
        BPF(text=_FENTRY_SOURCE).cleanup()

    features[Feature.fentry] = _try(errors, Feature.fentry, fentry)
    return features, errors


def program_support(spec: ProgramSpec, features: dict[Feature, bool]) -> ProgramSupport:
    missing = sorted(f.value for f in spec.features if not features.get(f, False))
    if missing:
        reason = f"needs {', '.join(missing)}, which this host lacks"
        return ProgramSupport(program=spec.name, supported=False, reason=reason)
    for tp in spec.tracepoints:
        category, _, event = tp.partition(":")
        if not (TRACEFS / "events" / category / event).is_dir():
            reason = f"tracepoint {tp} is missing on this kernel"
            return ProgramSupport(program=spec.name, supported=False, reason=reason)
    return ProgramSupport(program=spec.name, supported=True)


def probe() -> HostCapabilities:
    features, errors = probe_features()
    headers, headers_detail = headers_state()
    try:
        import bcc

        bcc_version: str | None = getattr(bcc, "__version__", "unknown")
    except ImportError:
        bcc_version = None
    capabilities = HostCapabilities(
        kernel_release=platform.release(),
        arch=platform.machine(),
        bcc_version=bcc_version,
        headers=headers,
        headers_detail=headers_detail,
        lockdown=lockdown_mode(),
        features=features,
        feature_errors=errors,
        programs=[program_support(spec, features) for spec in catalog().values()],
    )
    log.info(
        "probed host %s: %s",
        os.uname().nodename,
        ", ".join(f.value for f, ok in features.items() if ok),
    )
    return capabilities
