"""Steps that put the agent on the host: system packages, upload, venv + install, config."""

from __future__ import annotations

import shlex

from controller.bootstrap.models import StepStatus
from controller.bootstrap.preflight import target_platform
from controller.bootstrap.steps import (
    CONFIG_FILE,
    STAGING,
    TRUSTED_KEYS_FILE,
    VENV,
    WHEELS,
    Facts,
    StepContext,
    StepFailed,
)
from controller.keys.store import KeyStore

APT_ENV = "DEBIAN_FRONTEND=noninteractive"
APT_INSTALL = f"{APT_ENV} apt-get install -y -q --no-install-recommends"
# The host's own pip configuration (indexes, find-links) has no say: everything is local.
PIP = (
    f"PIP_CONFIG_FILE=/dev/null {VENV}/bin/python -m pip --isolated"
    " --disable-pip-version-check --no-cache-dir --no-input"
)
BUILD_MARKER = f"{VENV}/.fleettrace-build"
# Hosts bootstrapped before the split hold one `fleettrace` wheel (node_agent and controller):
# it goes first, or its controller package would stay importable beside the agent's wheel.
SINGLE_WHEEL = "fleettrace"
_SAFE_VALUE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./:@%+=,~")


def _facts(ctx: StepContext) -> Facts:
    if ctx.facts is None:
        raise StepFailed("preflight did not run")
    return ctx.facts


def wanted_packages(facts: Facts, *, with_bpftrace: bool = False) -> list[str]:
    """Distro packages the agent needs on this host (bcc, venv, matching headers; bpftrace
    when asked)."""
    wanted = ["python3-bpfcc", "python3-venv"]
    if facts.get("headers") == "no":
        wanted.append(f"linux-headers-{facts.get('kernel')}")
    if with_bpftrace:
        wanted.append("bpftrace")
    return wanted


def packages(ctx: StepContext) -> StepStatus:
    facts = _facts(ctx)
    with_bpftrace = ctx.options.with_bpftrace
    wanted = wanted_packages(facts, with_bpftrace=with_bpftrace)
    if facts.get("dpkg-query") == "yes":
        names = " ".join(shlex.quote(p) for p in wanted)
        listed = ctx.sh(
            f"dpkg-query -W -f='${{Package}} ${{Status}}\\n' {names} 2>/dev/null; true",
            sudo=False,
            show=False,
        ).stdout
        present = {
            line.split()[0] for line in listed.splitlines() if line.endswith("install ok installed")
        }
        missing = [p for p in wanted if p not in present]
    else:
        checks = {"python3-bpfcc": "bcc", "python3-venv": "venv", "bpftrace": "bpftrace"}
        missing = [p for p in wanted if facts.get(checks.get(p, "headers")) == "no"]
    if not missing:
        ctx.log(f"present: {', '.join(wanted)}")
        if with_bpftrace:
            _check_bpftrace(ctx)
        return StepStatus.ok
    if facts.get("apt-get") != "yes":
        raise StepFailed(f"missing {', '.join(missing)} and no apt-get to install them")
    names = " ".join(shlex.quote(p) for p in missing)
    ctx.log(f"installing {', '.join(missing)}")
    # An old package index may not know them: update once, only when the first try fails.
    ctx.sh(
        f"{APT_INSTALL} {names} || {{ apt-get update -q && {APT_INSTALL} {names}; }}",
        timeout_s=max(ctx.settings.ssh_command_timeout_s, 900.0),
        what=f"apt-get install {' '.join(missing)}",
    )
    check = ctx.sh(
        "/usr/bin/python3 -c 'import bcc, venv, ensurepip'", sudo=False, check=False, show=False
    )
    if check.code != 0:
        raise StepFailed("bcc or venv still not importable by /usr/bin/python3 after install")
    if with_bpftrace:
        _check_bpftrace(ctx)
    return StepStatus.changed


def _check_bpftrace(ctx: StepContext) -> None:
    """The installed bpftrace runs: what the agent's probe will ask of it."""
    ran = ctx.sh("bpftrace --version", sudo=False, check=False, show=False)
    last = ran.output.strip().splitlines()[-1] if ran.output.strip() else "no output"
    if ran.code != 0:
        raise StepFailed(f"bpftrace is installed but `bpftrace --version` fails: {last}")
    ctx.log(f"bpftrace: {last}")


def _remote_hashes(ctx: StepContext) -> dict[str, str]:
    listed = ctx.sh(
        f"mkdir -p {WHEELS} && cd {WHEELS} && for f in *; do"
        ' [ -f "$f" ] && sha256sum -- "$f"; done; true',
        show=False,
    ).stdout
    hashes = {}
    for line in listed.splitlines():
        digest, _, name = line.partition("  ")
        if name:
            hashes[name.strip()] = digest.strip()
    return hashes


def _staging_dir(ctx: StepContext) -> str:
    """Where SFTP may write: the wheels dir for root, the user's home otherwise."""
    if ctx.as_root:
        return f"{WHEELS}/.incoming"
    home = ctx.sh('printf %s "$HOME"', sudo=False, show=False).stdout.strip()
    if not home.startswith("/"):
        raise StepFailed(f"cannot find {ctx.host.ssh_user}'s home directory")
    return f"{home}/{STAGING}"


def upload(ctx: StepContext) -> StepStatus:
    """Send the wheel and the wheelhouse, skipping files whose sha256 matches."""
    facts = _facts(ctx)
    bundle = ctx.artifacts.bundle(target_platform(facts))
    ctx.bundle = bundle
    wanted = {f.name: f for f in bundle.files}
    remote = _remote_hashes(ctx)
    send = [f for f in bundle.files if remote.get(f.name) != f.sha256]
    stale = sorted(n for n in remote if n not in wanted)
    if not send and not stale:
        ctx.log(f"all {len(wanted)} files present with matching sha256 ({bundle.build_id})")
        return StepStatus.ok
    if send:
        staging = _staging_dir(ctx)
        ctx.sh(f"mkdir -p -m 700 {shlex.quote(staging)}", sudo=ctx.as_root, show=False)
        remote_session = ctx.connect()
        for item in send:
            remote_session.put_file(item.path, f"{staging}/{item.name}", mode=0o644)
        moves = " && ".join(
            f"install -m 0644 {shlex.quote(f'{staging}/{f.name}')} {WHEELS}/{shlex.quote(f.name)}"
            for f in send
        )
        ctx.sh(f"{moves} && rm -rf {shlex.quote(staging)}", what="installing the uploads")
        size = sum(f.size for f in send) / 1e6
        ctx.log(f"sent {len(send)} files ({size:.1f} MB); {len(wanted) - len(send)} were there")
    if stale:
        names = " ".join(shlex.quote(f"{WHEELS}/{n}") for n in stale)
        ctx.sh(f"rm -f -- {names}", what="removing stale wheels")
        ctx.log(f"removed {len(stale)} stale: {', '.join(stale)}")
    after = _remote_hashes(ctx)
    wrong = [f.name for f in bundle.files if after.get(f.name) != f.sha256]
    if wrong:
        raise StepFailed(f"uploaded files differ from the controller's: {', '.join(wrong)}")
    return StepStatus.changed


def install(ctx: StepContext) -> StepStatus:
    """The venv from the system Python (for the distro's bcc) and the agent in it."""
    bundle = ctx.bundle
    if bundle is None:
        raise StepFailed("upload did not run")
    state = ctx.sh(
        f"if [ -x {VENV}/bin/python ] && {VENV}/bin/python -c 'import sys' 2>/dev/null;"
        f" then echo venv=ok; else echo venv=missing; fi;"
        f' echo "build=$(cat {BUILD_MARKER} 2>/dev/null)";'
        f" if [ -x {VENV}/bin/fleettrace-agent ]; then echo agent=yes; else echo agent=no; fi",
        show=False,
    ).stdout
    found = dict(line.partition("=")[::2] for line in state.splitlines() if "=" in line)
    fresh = found.get("venv") != "ok"
    if fresh:
        ctx.log(f"creating {VENV} from /usr/bin/python3 (with system site-packages, for bcc)")
        ctx.sh(
            f"rm -rf {VENV} && /usr/bin/python3 -m venv --system-site-packages {VENV}",
            what="creating the venv",
        )
    elif found.get("build") == bundle.build_id and found.get("agent") == "yes":
        ctx.log(f"fleettrace-agent {bundle.build_id} is installed")
        return StepStatus.ok
    wheel = f"{WHEELS}/{bundle.wheel.name}"
    before = found.get("build") or "nothing"
    ctx.log(f"installing fleettrace-agent {bundle.build_id} (was {before})")
    command = f"{PIP} install -q --no-index --find-links {WHEELS} {wheel}"
    if not fresh:
        remove = f"{PIP} uninstall -q -y {SINGLE_WHEEL}"
        command = f"if {PIP} show -q {SINGLE_WHEEL} >/dev/null 2>&1; then {remove}; fi && {command}"
        # The same version number with other code: pip would call it satisfied.
        command += f" && {PIP} install -q --no-index --no-deps --force-reinstall {wheel}"
    ctx.sh(command, what="pip install", timeout_s=max(ctx.settings.ssh_command_timeout_s, 600.0))
    installed = ctx.sh(
        f"{VENV}/bin/python -c 'import node_agent; print(node_agent.__version__)'", show=False
    ).stdout.strip()
    if installed != bundle.version:
        raise StepFailed(f"installed agent reports version {installed!r}, not {bundle.version}")
    ctx.sh(f"echo {shlex.quote(bundle.build_id)} > {BUILD_MARKER}", show=False)
    ctx.need_restart("agent upgraded" if not fresh and before != "nothing" else "agent installed")
    return StepStatus.changed


def config_text(ctx: StepContext, redis_url: str) -> bytes:
    """agent.env: host name, the host's own Redis URL (its identity), cgroup and limits."""
    options = ctx.options
    cgroup = options.cgroup or ctx.host.cgroup
    values: dict[str, str | None] = {
        "FLEETTRACE_HOST": ctx.host.name,
        "FLEETTRACE_REDIS_URL": redis_url,
        "FLEETTRACE_CGROUP": cgroup.replace("{host}", ctx.host.name) if cgroup else None,
        "FLEETTRACE_HEARTBEAT_S": _number(options.heartbeat_s),
        "FLEETTRACE_MAX_DURATION_S": _number(options.max_duration_s),
        "FLEETTRACE_CONCURRENCY": _number(options.concurrency),
        "FLEETTRACE_PROBE_TIMEOUT_S": _number(options.probe_timeout_s),
        "FLEETTRACE_COMPILE_TIMEOUT_S": _number(options.compile_timeout_s),
        "FLEETTRACE_MAX_OVERHEAD_PCT": _number(options.max_overhead_pct),
        "FLEETTRACE_ALLOW_BPFTRACE": "true" if options.with_bpftrace else None,
    }
    lines = ["# Written by fleettrace bootstrap: changes here are overwritten."]
    for key, value in values.items():
        if value is None:
            continue
        if any(c in value for c in "\n\r'\\"):
            raise StepFailed(f"{key} holds a character agent.env cannot carry")
        lines.append(f"{key}={value}" if set(value) <= _SAFE_VALUE else f"{key}='{value}'")
    return ("\n".join(lines) + "\n").encode()


def _number(value: float | None) -> str | None:
    """Exactly the value given: rounding could lift a limit (399.9999 written as 400)."""
    if value is None:
        return None
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


def trusted_keys_text(ctx: StepContext) -> bytes:
    """The controller's public keys: the agent runs only work that one of them signed."""
    store = KeyStore(ctx.settings.keys_dir)
    if store.signing_id() is None:
        raise StepFailed(
            f"the controller has no signing key in {store.dir}: run `fleettrace keys init`"
        )
    return store.trusted_keys_text().encode()


def installed_redis_url(ctx: StepContext) -> str | None:
    """The Redis URL agent.env holds now (read, never shown), to keep a still valid identity."""
    out = ctx.sh(
        f"sed -n 's/^FLEETTRACE_REDIS_URL=//p' {CONFIG_FILE} 2>/dev/null || true", show=False
    ).stdout.strip()
    value = out.splitlines()[-1].strip() if out else ""
    if len(value) >= 2 and value[0] == value[-1] == "'":
        value = value[1:-1]
    return value or None


def config(ctx: StepContext) -> StepStatus:
    redis_url = ctx.hooks.agent_redis_url(installed_redis_url(ctx))
    ctx.redact.add_url(redis_url)
    data = config_text(ctx, redis_url)
    keys = [line.split("=", 1)[0] for line in data.decode().splitlines()[1:]]
    # The agent re-reads its trusted keys when they change: a new key needs no restart.
    trusted = trusted_keys_text(ctx)
    keys_changed = ctx.ensure_file(TRUSTED_KEYS_FILE, trusted, 0o644)
    if keys_changed:
        ids = [
            line.split()[0] for line in trusted.decode().splitlines() if not line.startswith("#")
        ]
        ctx.log(f"wrote {TRUSTED_KEYS_FILE} (controller keys {', '.join(ids)})")
    if not ctx.ensure_file(CONFIG_FILE, data, 0o600):
        ctx.log(f"{CONFIG_FILE} is up to date (mode 0600: {', '.join(keys)})")
        return StepStatus.changed if keys_changed else StepStatus.ok
    ctx.log(f"wrote {CONFIG_FILE} (mode 0600: {', '.join(keys)})")
    ctx.need_restart("config changed")
    return StepStatus.changed
