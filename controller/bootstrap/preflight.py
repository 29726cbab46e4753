"""Preflight: connect (host key first), look at the host, and stop it here with every reason
it cannot run the agent."""

from __future__ import annotations

import time

from controller.bootstrap.artifacts import TargetPlatform
from controller.bootstrap.models import StepStatus
from controller.bootstrap.steps import Facts, StepContext, StepFailed

MIN_PYTHON = (3, 10)
MIN_KERNEL = (4, 9)
MIN_FREE_MB = 500
MAX_CLOCK_SKEW_S = 30.0

# Read-only: prints key=value lines; runs as the SSH user (sudo is only tested).
PROBE = r"""
if [ -r /etc/os-release ]; then . /etc/os-release; fi
echo "os_id=${ID:-unknown}"
echo "os_like=${ID_LIKE:-}"
echo "os_version=${VERSION_ID:-}"
echo "os_name=${PRETTY_NAME:-unknown}"
echo "kernel=$(uname -r)"
echo "arch=$(uname -m)"
if [ -r /sys/kernel/btf/vmlinux ]; then echo btf=yes; else echo btf=no; fi
build=/lib/modules/$(uname -r)/build
if [ -e "$build/include" ] || [ -e "$build/Makefile" ]; then echo headers=yes
elif [ -e /sys/kernel/kheaders.tar.xz ]; then echo headers=kheaders
else echo headers=no; fi
if [ -x /usr/bin/python3 ]; then
  /usr/bin/python3 - <<'PY' 2>/dev/null
import importlib.util as u, platform, sys
print("python=%d.%d.%d" % sys.version_info[:3])
print("python_impl=" + sys.implementation.name)
print("glibc=" + (platform.libc_ver()[1] or ""))
print("bcc=" + ("yes" if u.find_spec("bcc") else "no"))
print("venv=" + ("yes" if u.find_spec("venv") and u.find_spec("ensurepip") else "no"))
PY
else echo python=; fi
if [ -d /run/systemd/system ]; then echo init=systemd; else echo init=other; fi
for tool in setsid apt-get dpkg-query bpftrace; do
  if command -v "$tool" >/dev/null 2>&1; then echo "$tool=yes"; else echo "$tool=no"; fi
done
where=/opt; [ -d "$where" ] || where=/
echo "disk_kb=$(df -Pk "$where" | awk 'NR==2 {print $4}')"
if [ "$(id -u)" = 0 ]; then echo sudo=root
elif sudo -n true >/dev/null 2>&1; then echo sudo=yes
else echo sudo=no; fi
"""


def parse(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key and " " not in key:
            values[key.strip()] = value.strip()
    return values


def _version(text: str, parts: int) -> tuple[int, ...] | None:
    numbers = []
    for piece in text.replace("-", ".").split(".")[:parts]:
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            return None
        numbers.append(int(digits))
    return tuple(numbers) if len(numbers) == parts else None


def target_platform(facts: Facts) -> TargetPlatform:
    python = _version(facts.get("python"), 2) or (0, 0)
    return TargetPlatform(
        python=f"{python[0]}.{python[1]}",
        arch=facts.get("arch"),
        glibc=facts.get("glibc") or None,
    )


def problems(facts: Facts, *, user: str, with_bpftrace: bool = False) -> list[str]:
    """Every reason this host cannot run the agent (empty: it can)."""
    found = []
    python = _version(facts.get("python"), 3)
    if python is None:
        found.append("no Python at /usr/bin/python3 (the agent needs >= 3.10)")
    elif python[:2] < MIN_PYTHON:
        found.append(f"Python {facts.get('python')} at /usr/bin/python3 is too old (>= 3.10)")
    elif facts.get("python_impl") != "cpython":
        found.append(f"/usr/bin/python3 is {facts.get('python_impl')}, not CPython")
    kernel = _version(facts.get("kernel"), 2)
    if kernel is None or kernel < MIN_KERNEL:
        found.append(f"kernel {facts.get('kernel')} is too old for bcc (>= 4.9)")
    if python is not None and not facts.get("glibc"):
        found.append("not a glibc system: no wheels for it")
    apt = facts.get("apt-get") == "yes"
    if facts.get("bcc") != "yes" and not apt:
        found.append("bcc's Python module is missing and there is no apt to install it")
    if facts.get("venv") != "yes" and not apt:
        found.append("Python's venv/ensurepip is missing and there is no apt to install it")
    if facts.get("headers") == "no" and not apt:
        found.append("no kernel headers and no apt to install them")
    if with_bpftrace and facts.get("bpftrace") != "yes" and not apt:
        found.append("no bpftrace on PATH and no apt to install it (--with-bpftrace)")
    if not facts.systemd and facts.get("setsid") != "yes":
        found.append("neither systemd nor setsid: cannot keep the agent running")
    if facts.get("sudo") == "no":
        found.append(f"{user} cannot sudo without a password (sudo -n true failed)")
    free_kb = int(facts.get("disk_kb") or 0)
    if free_kb < MIN_FREE_MB * 1024:
        found.append(f"only {free_kb // 1024} MB free in /opt (>= {MIN_FREE_MB} MB)")
    if facts.skew_s is not None and abs(facts.skew_s) > MAX_CLOCK_SKEW_S:
        found.append(
            f"clock is {facts.skew_s:+.1f}s off the controller's (at most {MAX_CLOCK_SKEW_S:g}s):"
            " task expiry would misfire; fix NTP"
        )
    return found


def clock_skew(ctx: StepContext) -> float | None:
    """Host clock minus controller clock, from one `date` between two readings of ours."""
    before = time.time()
    out = ctx.sh("date +%s.%N", sudo=False, show=False).stdout.strip()
    after = time.time()
    try:
        remote = float(out if "N" not in out else out.split(".")[0])
    except ValueError:
        return None
    return remote - (before + after) / 2


def preflight(ctx: StepContext) -> StepStatus:
    if not ctx.host.address:
        raise StepFailed(f"host {ctx.host.name} has no address to connect to")
    ctx.connect()
    values = parse(ctx.sh(PROBE, sudo=False, show=False).stdout)
    facts = Facts(values, skew_s=clock_skew(ctx))
    ctx.facts = facts
    python = facts.get("python") or "none"
    skew = "unknown" if facts.skew_s is None else f"{facts.skew_s:+.2f}s"
    init = "systemd" if facts.systemd else "no systemd (supervised fallback)"
    headers = {"yes": "present", "kheaders": "kernel's kheaders", "no": "missing"}
    ctx.log(f"os: {facts.get('os_name')} ({facts.get('os_id')} {facts.get('os_version')})")
    ctx.log(f"kernel: {facts.get('kernel')} {facts.get('arch')}")
    ctx.log(f"btf: {facts.get('btf')}; headers: {headers.get(facts.get('headers'), '?')}")
    ctx.log(f"python: {python} ({facts.get('python_impl') or '-'}) at /usr/bin/python3")
    ctx.log(f"bcc module: {facts.get('bcc') or '-'}; venv: {facts.get('venv') or '-'}")
    ctx.log(f"bpftrace on PATH: {facts.get('bpftrace') or '-'}")
    ctx.log(f"init: {init}; sudo: {facts.get('sudo')}")
    ctx.log(f"free in /opt: {int(facts.get('disk_kb') or 0) // 1024} MB; clock skew: {skew}")
    found = problems(facts, user=ctx.host.ssh_user, with_bpftrace=ctx.options.with_bpftrace)
    if found:
        for reason in found:
            ctx.log(f"cannot bootstrap: {reason}")
        raise StepFailed("; ".join(found))
    return StepStatus.ok
