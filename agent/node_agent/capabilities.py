"""What this host's kernel can run, probed for real by loading tiny programs."""

from __future__ import annotations

import logging
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from node_agent.attach import FENTRY_PROBE, TRACEFS, missing
from node_agent.headers.kheaders import KheadersSource, headers_for_bcc
from node_agent.headers.probe import (
    Headers,
    layout_problem,
    probe_headers,
    unsupported_reason,
)
from node_agent.programs import catalog
from node_agent.programs.spec import ProgramSpec
from node_agent.protocol import Feature, HostCapabilities, ProgramSupport
from node_agent.safe_text import printable

log = logging.getLogger(__name__)

# No #include: the context's type is nothing to the loader (each attach call gives the program
# its type) and these never read it, while uapi/linux/ptrace.h and bpf_perf_event.h made this
# compile 5 times as long (0.9 s against 0.2 s here; 36 s of a 52 s probe under emulation).
_PROBE_SOURCE = r"""
TRACEPOINT_PROBE(sched, sched_process_fork) { return 0; }
int ft_probe_perf(void *ctx) { return 0; }
int ft_probe_kprobe(void *ctx) { return 0; }
int ft_probe_uprobe(void *ctx) { return 0; }
"""
# The oldest bpftrace whose `-f json` map output and cgroup builtins the engine relies on
# (Ubuntu 22.04 ships 0.14, Debian 12 0.17).
MIN_BPFTRACE = (0, 13)
BPFTRACE_TIMEOUT_S = 10.0
_BPFTRACE_VERSION = re.compile(r"\bv?(\d{1,6})\.(\d{1,6})(?:\.(\d{1,6}))?\b")
_SHOWN = 200  # characters of bpftrace's own output quoted in a reason


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


def bpftrace_version(timeout_s: float = BPFTRACE_TIMEOUT_S) -> tuple[str | None, str | None]:
    """(version, None) when the bpftrace on PATH runs and is recent enough, else (version or
    None, why not): `bpftrace --version`, bounded in time, no shell."""
    path = shutil.which("bpftrace")
    if path is None:
        return None, "no bpftrace on PATH (apt-get install bpftrace)"
    try:
        done = subprocess.run(
            [path, "--version"],
            capture_output=True,
            text=True,
            errors="replace",
            stdin=subprocess.DEVNULL,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, f"{path} --version did not answer within {timeout_s:g} s"
    except OSError as exc:
        return None, f"{path} does not run: {exc.strerror or exc}"
    output = (done.stdout + done.stderr).strip()
    last = printable(output.splitlines()[-1][:_SHOWN]) if output else "no output"
    if done.returncode != 0:
        return None, f"{path} --version failed with status {done.returncode}: {last}"
    match = _BPFTRACE_VERSION.search(done.stdout)
    if match is None:
        return None, f"{path} --version printed no version: {last}"
    version = ".".join(g for g in match.groups() if g is not None)
    if (int(match.group(1)), int(match.group(2))) < MIN_BPFTRACE:
        oldest = ".".join(map(str, MIN_BPFTRACE))
        return version, f"bpftrace {version} is older than {oldest} (upgrade it from the distro)"
    return version, None


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
            if feature not in (Feature.btf, Feature.bpftrace):  # neither needs bcc
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
        try:
            BPF(text=FENTRY_PROBE).cleanup()
        except Exception as exc:
            # bcc words every EPERM as "Need super-user privileges", but the probe runs as
            # root: the kernel itself refuses (no BPF trampoline, or a policy such as lockdown).
            if os.geteuid() == 0 and "super-user" in str(exc):
                raise RuntimeError("the kernel refused to load an fentry program") from exc
            raise

    features[Feature.fentry] = _try(errors, Feature.fentry, fentry)
    return features, errors


def _policy_refusal(spec: ProgramSpec, *, allow_custom: bool, allow_bpftrace: bool) -> str | None:
    """Why this agent's own settings refuse the program (as trace.prepare would), if they do."""
    if spec.source_policy is not None and not allow_custom:
        return "this agent does not run custom programs (allow_custom is off)"
    if spec.engine == "bpftrace" and not allow_bpftrace:
        return "this agent does not run bpftrace scripts (allow_bpftrace is off)"
    return None


def program_support(
    spec: ProgramSpec,
    features: dict[Feature, bool],
    errors: dict[Feature, str] | None = None,
    *,
    allow_custom: bool = True,
    allow_bpftrace: bool = True,
    no_headers: str | None = None,
    headers: Headers | None = None,
) -> ProgramSupport:
    """Whether this host runs the program; when not, the reason names what to change.

    The order of reasons: this agent's settings; then, for a bcc program, `no_headers` (why
    nothing can compile it: the probe's own programs did not compile either, so the
    features they test read as missing); then the features, tracepoints and attach options (an
    option reading kernel structs, with approximate `headers`, also needs this kernel's BTF to
    place them)."""
    refusal = _policy_refusal(spec, allow_custom=allow_custom, allow_bpftrace=allow_bpftrace)
    if refusal is not None:
        return ProgramSupport(program=spec.name, supported=False, reason=refusal)
    if no_headers is not None and spec.engine == "bcc":
        return ProgramSupport(program=spec.name, supported=False, reason=no_headers)
    lacking = sorted(
        (f for f in spec.features if not features.get(f, False)), key=lambda f: f.value
    )
    if lacking:
        reason = f"needs {', '.join(f.value for f in lacking)}, which this host lacks"
        why = [f"{f.value}: {errors[f]}" for f in lacking if errors and errors.get(f)]
        if why:
            reason += f" ({'; '.join(why)})"
        return ProgramSupport(program=spec.name, supported=False, reason=reason)
    for tp in spec.tracepoints:
        category, _, event = tp.partition(":")
        if not (TRACEFS / "events" / category / event).is_dir():
            reason = f"tracepoint {tp} is missing on this kernel"
            return ProgramSupport(program=spec.name, supported=False, reason=reason)
    if spec.attach:  # supported when any option is there; else what each one lacks
        attach: dict[str, str | None] = {}
        for option in spec.attach:
            lack = missing(option, features, errors)
            said = f"needs {', '.join(lack)}" if lack else None
            if said is None and headers is not None:
                said = layout_problem(headers, dict(option.fields))
            attach[option.kind] = said
        if all(attach.values()):
            each = "; ".join(f"{o.kind} ({o.point}) {attach[o.kind]}" for o in spec.attach)
            reason = f"no attach option works on this host: {each}"
            return ProgramSupport(program=spec.name, supported=False, reason=reason, attach=attach)
        return ProgramSupport(program=spec.name, supported=True, attach=attach)
    return ProgramSupport(program=spec.name, supported=True)


def probe(
    kheaders: KheadersSource,
    *,
    allow_custom: bool = False,
    allow_bpftrace: bool = False,
) -> HostCapabilities:
    """The host's capabilities as an agent with these settings sees them."""
    # First: the probe's own programs compile with the headers the traces will use.
    headers = headers_for_bcc(kheaders, probe_headers(archive=Path(kheaders.archive)))
    no_headers = unsupported_reason(headers)
    features, errors = probe_features()
    version, bpftrace_error = bpftrace_version()
    features[Feature.bpftrace] = bpftrace_error is None
    if bpftrace_error is not None:
        errors[Feature.bpftrace] = bpftrace_error
    try:
        import bcc

        bcc_version: str | None = getattr(bcc, "__version__", "unknown")
    except ImportError:
        bcc_version = None
    capabilities = HostCapabilities(
        kernel_release=platform.release(),
        arch=platform.machine(),
        bcc_version=bcc_version,
        bpftrace_version=version,
        headers=headers.state,
        headers_detail=headers.detail,
        lockdown=lockdown_mode(),
        features=features,
        feature_errors=errors,
        programs=[
            program_support(
                spec,
                features,
                errors,
                allow_custom=allow_custom,
                allow_bpftrace=allow_bpftrace,
                no_headers=no_headers,
                headers=headers,
            )
            for spec in catalog().values()
        ],
    )
    log.info(
        "probed host %s: %s",
        os.uname().nodename,
        ", ".join(f.value for f, ok in features.items() if ok),
    )
    return capabilities
