"""The agent as a service: a systemd unit when systemd runs, else a detached supervisor script;
and taking it all away again (uninstall)."""

from __future__ import annotations

import shlex
import time
from datetime import timedelta

from controller.bootstrap.models import StepStatus
from controller.bootstrap.steps import (
    BASE,
    CONFIG_DIR,
    CONFIG_FILE,
    LOG_DIR,
    RUN_DIR,
    STAGING,
    STATE_DIR,
    SUPERVISOR,
    TRUSTED_KEYS_FILE,
    UNIT_FILE,
    UNIT_NAME,
    StepContext,
    StepFailed,
    asset,
)
from controller.db import utcnow

STOP_WAIT_S = 30
START_WAIT_S = 10
PIDFILE = f"{RUN_DIR}/supervisor.pid"

# Is the supervisor of this host running? Its pid file is private to the host (under /opt),
# and /proc/PID/cmdline guards against a reused pid.
SUPERVISOR_PID = f"""pid=$(cat {PIDFILE} 2>/dev/null)
alive() {{ [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null \
&& grep -qa fleettrace-supervise /proc/"$pid"/cmdline 2>/dev/null; }}
"""

# TERM to the supervisor's whole process group (it is a session leader: supervisor and
# agent), KILL when it lingers. `kill -SIG -PGID` without `--`: dash's kill has no `--`.
STOP_SUPERVISOR = (
    SUPERVISOR_PID
    + f"""if alive; then
  kill -TERM -"$pid" 2>/dev/null || kill -TERM "$pid"
  i=0
  while kill -0 -"$pid" 2>/dev/null && [ $i -lt {STOP_WAIT_S * 5} ]; do
    sleep 0.2; i=$((i+1))
  done
  kill -KILL -"$pid" 2>/dev/null
  echo stopped
fi
rm -f {RUN_DIR}/*.pid
"""
)

START_SUPERVISOR = (
    SUPERVISOR_PID
    + f"""if alive; then echo "supervisor $pid runs already"; exit 0; fi
mkdir -p {RUN_DIR} {LOG_DIR}
rm -f {PIDFILE}
nohup setsid {SUPERVISOR} < /dev/null > /dev/null 2>&1 &
i=0
while [ $i -lt {START_WAIT_S * 10} ]; do
  pid=$(cat {PIDFILE} 2>/dev/null)
  if alive; then echo "started supervisor $pid"; exit 0; fi
  sleep 0.1; i=$((i+1))
done
echo "the supervisor did not start"; exit 1
"""
)


def _systemd(ctx: StepContext) -> StepStatus:
    changed = ctx.ensure_file(UNIT_FILE, asset(UNIT_NAME), 0o644)
    if changed:
        ctx.sh(f"systemctl daemon-reload && systemctl enable {UNIT_NAME}", what="enabling")
        ctx.log(f"installed and enabled {UNIT_NAME}")
        ctx.need_restart("unit changed")
    active = ctx.sh(f"systemctl is-active --quiet {UNIT_NAME}", check=False, show=False)
    if ctx.restart_needed or active.code != 0:
        why = ", ".join(ctx.restart_reasons) or "it was not running"
        ctx.sh(f"systemctl stop {UNIT_NAME}", what="systemctl stop", show=False)
        ctx.mark_agent_start()
        ctx.sh(f"systemctl start {UNIT_NAME}", what="systemctl start")
        ctx.log(f"(re)started {UNIT_NAME}: {why}")
        return StepStatus.changed
    ctx.log(f"{UNIT_NAME} is active; left running")
    return StepStatus.changed if changed else StepStatus.ok


def _supervised(ctx: StepContext) -> StepStatus:
    if ctx.ensure_file(SUPERVISOR, asset("fleettrace-supervise"), 0o755):
        ctx.log(f"installed {SUPERVISOR}")
        ctx.need_restart("supervisor changed")
    running = ctx.sh(SUPERVISOR_PID + "alive", check=False, show=False).code == 0
    if running and not ctx.restart_needed:
        ctx.log("the supervised agent is running; left running")
        return StepStatus.ok
    if running:
        ctx.sh(STOP_SUPERVISOR, what="stopping the agent", show=False)
        ctx.log(f"stopped the agent: {', '.join(ctx.restart_reasons)}")
    ctx.mark_agent_start()
    ctx.sh(START_SUPERVISOR, what="starting the supervisor")
    ctx.log(f"no systemd: agent runs under {SUPERVISOR} (log {LOG_DIR}/agent.log)")
    return StepStatus.changed


def service(ctx: StepContext) -> StepStatus:
    if ctx.facts is None:
        raise StepFailed("preflight did not run")
    return _systemd(ctx) if ctx.facts.systemd else _supervised(ctx)


def agent_log_tail(ctx: StepContext, lines: int = 30) -> str:
    systemd = ctx.facts is not None and ctx.facts.systemd
    command = (
        f"journalctl -u {UNIT_NAME} -n {lines} --no-pager 2>&1"
        if systemd
        else f"tail -n {lines} {LOG_DIR}/agent.log 2>&1"
    )
    return ctx.sh(command, check=False, show=False).output


def verify(ctx: StepContext) -> StepStatus:
    """The agent's heartbeat, with its capability probe, reached the controller in time."""
    timeout = ctx.options.verify_timeout_s or ctx.settings.bootstrap_verify_timeout_s
    since = ctx.agent_started_at
    if since is None:
        # Left running: a heartbeat that still counts as online will do.
        since = utcnow() - timedelta(seconds=ctx.settings.heartbeat_timeout_s)
    started = time.monotonic()
    # After a (re)start, only the new agent's probe counts: a late heartbeat of the old one
    # can reach the database after `since`, but its probe is older than the start.
    version = ctx.hooks.wait_heartbeat(
        since=since, probed_after=ctx.agent_started_host_clock, timeout_s=timeout
    )
    if version is None:
        ctx.log(f"no heartbeat from {ctx.host.name} within {timeout:g}s; the agent's log:")
        ctx.lines.extend(agent_log_tail(ctx).splitlines())
        raise StepFailed(
            f"no heartbeat with capabilities from {ctx.host.name} within {timeout:g}s"
            " (is the controller's ingest running, and can the host reach the broker?)"
        )
    ctx.agent_version = version
    expected = ctx.bundle.version if ctx.bundle is not None else None
    if expected is not None and version != expected:
        raise StepFailed(f"the agent reports version {version}, not {expected}")
    ctx.log(f"heartbeat from agent {version} after {time.monotonic() - started:.1f}s")
    return StepStatus.ok


# -- uninstall ----------------------------------------------------------------------------------


def connect(ctx: StepContext) -> StepStatus:
    ctx.connect()
    if not ctx.as_root and ctx.sh("sudo -n true", sudo=False, check=False).code != 0:
        raise StepFailed(f"{ctx.host.ssh_user} cannot sudo without a password")
    return StepStatus.ok


def remove_service(ctx: StepContext) -> StepStatus:
    """Stop the agent and remove its unit or supervisor (both are looked for)."""
    out = ctx.sh(
        f"if [ -f {UNIT_FILE} ]; then"
        f" systemctl disable --now {UNIT_NAME} >/dev/null 2>&1 || true;"
        f" rm -f {UNIT_FILE}; systemctl daemon-reload >/dev/null 2>&1 || true;"
        " echo removed-unit; fi\n" + STOP_SUPERVISOR + f"rm -f {SUPERVISOR}",
        what="stopping the agent",
        show=False,
    ).stdout.split()
    if "removed-unit" in out:
        ctx.log(f"disabled and removed {UNIT_NAME}")
    if "stopped" in out:
        ctx.log("stopped the supervised agent")
    if "removed-unit" not in out and "stopped" not in out:
        ctx.log("no agent service was installed or running")
        return StepStatus.ok
    return StepStatus.changed


def remove_files(ctx: StepContext) -> StepStatus:
    staging = f'"$(getent passwd {ctx.host.ssh_user} | cut -d: -f6)/{STAGING}"'
    home_staging = "" if ctx.as_root else f" {staging}"
    seen = shlex.quote(f"{STATE_DIR}/seen-runs.{ctx.host.name}")
    paths = f"{BASE} {CONFIG_FILE} {CONFIG_FILE}.tmp {TRUSTED_KEYS_FILE} {seen}{home_staging}"
    out = ctx.sh(
        f'found=; for p in {paths}; do [ -e "$p" ] && found="$found $p"; done;'
        f" rm -rf {paths}; rmdir {CONFIG_DIR} {STATE_DIR} 2>/dev/null;"
        ' echo "removed:$found"',
        what="removing files",
        show=False,
    ).stdout.strip()
    removed = out.removeprefix("removed:").split()
    if not removed:
        ctx.log("nothing to remove")
        return StepStatus.ok
    ctx.log(f"removed {' '.join(removed)}")
    return StepStatus.changed


def verify_removed(ctx: StepContext) -> StepStatus:
    left = ctx.sh(
        f"for p in {BASE} {CONFIG_FILE} {TRUSTED_KEYS_FILE} {UNIT_FILE};"
        ' do [ -e "$p" ] && echo "$p"; done; true',
        show=False,
    ).stdout.split()
    if left:
        raise StepFailed(f"still there: {', '.join(left)}")
    ctx.log("nothing of fleettrace is left on the host")
    return StepStatus.ok


def revoke_identity(ctx: StepContext) -> StepStatus:
    """The host's Redis identity goes with its agent: its secret stops working."""
    if not ctx.hooks.revoke_identity():
        ctx.log("the host had no Redis identity")
        return StepStatus.ok
    ctx.log("removed the host's Redis identity: its secret no longer works")
    return StepStatus.changed
