"""Carrying out a bootstrap or uninstall run: steps in order, each recorded as it goes.

Everything here is synchronous: the Celery tasks call it, and so can a test.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

from sqlalchemy.orm import Session, sessionmaker

from controller.bootstrap import install, preflight, supervise
from controller.bootstrap.artifacts import ArtifactError, Artifacts, ArtifactSource
from controller.bootstrap.models import (
    OUTPUT_TAIL,
    BootstrapOptions,
    BootstrapRun,
    BootstrapStep,
    RunKind,
    RunState,
    StepStatus,
)
from controller.bootstrap.redact import Redactor
from controller.bootstrap.ssh import SshError, SshSession, SshTarget, Timeouts
from controller.bootstrap.steps import Connector, HostInfo, Remote, Step, StepContext, StepFailed
from controller.db import session_scope, utcnow
from controller.hosts import service as hosts_service
from controller.hosts.identity import Credential, Identities, IdentityUnavailable
from controller.hosts.models import Host
from controller.settings import Settings

log = logging.getLogger(__name__)
HEARTBEAT_POLL_S = 0.25

PLANS: dict[RunKind, tuple[tuple[str, Step], ...]] = {
    RunKind.bootstrap: (
        ("preflight", preflight.preflight),
        ("packages", install.packages),
        ("upload", install.upload),
        ("install", install.install),
        ("config", install.config),
        ("service", supervise.service),
        ("verify", supervise.verify),
    ),
    RunKind.uninstall: (
        ("connect", supervise.connect),
        ("service", supervise.remove_service),
        ("files", supervise.remove_files),
        ("verify", supervise.verify_removed),
        ("identity", supervise.revoke_identity),
    ),
}


def step_names(kind: RunKind) -> list[str]:
    return [name for name, _ in PLANS[kind]]


def connect_ssh(target: SshTarget) -> Remote:
    session = SshSession(target)
    session.connect()
    return session


def ssh_target(host: Host, settings: Settings, options: BootstrapOptions) -> SshTarget:
    return SshTarget(
        address=host.address or "",
        port=host.ssh_port,
        user=host.ssh_user,
        key_file=settings.ssh_key,
        use_agent=settings.ssh_use_agent,
        known_hosts=settings.known_hosts,
        pinned_fingerprint=host.host_key_fingerprint,
        trust_on_first_use=options.trust_on_first_use or host.trust_on_first_use,
        timeouts=Timeouts(
            connect_s=settings.ssh_connect_timeout_s,
            banner_s=settings.ssh_connect_timeout_s,
            auth_s=settings.ssh_auth_timeout_s,
            command_s=settings.ssh_command_timeout_s,
        ),
    )


def redactor(settings: Settings) -> Redactor:
    found = Redactor()
    found.add_url(settings.agent_redis_url)
    found.add_url(settings.redis_url)
    found.add_url(settings.database_url)
    return found


class DbHooks:
    """Steps' questions and news, answered from and written to the controller's database."""

    def __init__(
        self, sessions: sessionmaker[Session], host_name: str, identities: Identities
    ) -> None:
        self.sessions = sessions
        self.host_name = host_name
        self.identities = identities

    def _update(self, change: Callable[[Host], None]) -> None:
        with session_scope(self.sessions) as session:
            host = hosts_service.get(session=session, name=self.host_name)
            if host is not None:
                change(host)

    def host_key_rejected(self, fingerprint: str) -> None:
        log.warning("host %s: host key %s rejected", self.host_name, fingerprint)
        rejection = {"fingerprint": fingerprint, "at": utcnow().isoformat()}
        self._update(lambda h: setattr(h, "host_key_rejected", rejection))

    def host_key_trusted(self, fingerprint: str) -> None:
        log.warning("host %s: pinned host key %s on first use", self.host_name, fingerprint)

        def pin(host: Host) -> None:
            host.host_key_fingerprint = fingerprint
            host.trust_on_first_use = False  # first use is over: pinned from now on
            host.host_key_rejected = None

        self._update(pin)

    def connected(self, fingerprint: str | None) -> None:
        self._update(lambda h: setattr(h, "host_key_rejected", None))

    def wait_heartbeat(
        self, *, since: datetime, probed_after: float | None, timeout_s: float
    ) -> str | None:
        deadline = time.monotonic() + timeout_s
        while True:
            with self.sessions() as session:
                host = hosts_service.get(session=session, name=self.host_name)
                if (
                    host is not None
                    and host.last_heartbeat is not None
                    and host.last_heartbeat >= since
                    and host.capabilities
                    and float(host.capabilities.get("probed_at") or 0) >= (probed_after or 0)
                ):
                    return host.agent_version or "unknown"
            if time.monotonic() >= deadline:
                return None
            time.sleep(HEARTBEAT_POLL_S)

    def agent_redis_url(self, current: str | None) -> str:
        with session_scope(self.sessions) as session:
            host = hosts_service.get(session=session, name=self.host_name)
            if host is None:
                raise StepFailed(f"host {self.host_name} is no longer registered")
            issued: Credential | None = None
            if not self.identities.holds(host, current):
                issued = hosts_service.issue_identity(host=host, identities=self.identities)
            secret_sha256 = host.agent_secret_sha256 or ""
        try:
            if issued is None:
                self.identities.ensure(self.host_name, secret_sha256)
                return current or ""
            self.identities.apply(self.host_name, secret_sha256)
        except IdentityUnavailable as exc:
            raise StepFailed(exc.message) from None
        self.identities.hosts_changed()
        return issued.redis_url

    def revoke_identity(self) -> bool:
        with session_scope(self.sessions) as session:
            host = hosts_service.get(session=session, name=self.host_name)
            had = host is not None and host.agent_secret_sha256 is not None
            if host is not None:
                host.agent_secret_sha256 = None
        if had:
            self.identities.revoke(self.host_name)
        return had


@dataclass
class Executor:
    """What running a step needs besides the run itself; tests swap connector and artifacts."""

    sessions: sessionmaker[Session]
    settings: Settings
    artifacts: ArtifactSource
    connector: Connector = connect_ssh

    @cached_property
    def identities(self) -> Identities:
        return Identities(self.settings.redis_url, self.settings.agent_redis_url or "")

    @classmethod
    def default(cls, sessions: sessionmaker[Session], settings: Settings) -> Executor:
        return cls(sessions, settings, Artifacts(settings.artifacts_dir))


def _tail(lines: Iterable[str], redact: Redactor) -> str:
    text = redact("\n".join(lines))
    if len(text) <= OUTPUT_TAIL:
        return text
    cut = text[-OUTPUT_TAIL:]
    return "..." + cut[cut.find("\n") :] if "\n" in cut else "..." + cut


Begun = tuple[StepContext, RunKind, list[tuple[int, str]]]


def _begin(executor: Executor, run_id: str) -> Begun | None:
    """Mark the run running and build its context; None when it is not pending (a repeat)."""
    with session_scope(executor.sessions) as session:
        # Locked (on PostgreSQL): a task delivered twice must not run the steps twice.
        run = session.get(BootstrapRun, run_id, with_for_update=True)
        if run is None or run.state != RunState.pending.value:
            log.info("bootstrap run %s: not pending (%s), ignored", run_id, run and run.state)
            return None
        host = hosts_service.get(session=session, name=run.host_name)
        run.state = RunState.running.value
        run.started_at = utcnow()
        steps = [(step.id, step.name) for step in run.steps]
        if host is None:
            run.state = RunState.failed.value
            run.error = f"host {run.host_name} is no longer registered"
            run.finished_at = utcnow()
            for step in run.steps:
                step.status = StepStatus.skipped.value
            return None
        options = BootstrapOptions.model_validate(run.options)
        context = StepContext(
            host=HostInfo(host.name, host.address, host.ssh_user, host.cgroup),
            target=ssh_target(host, executor.settings, options),
            options=options,
            settings=executor.settings,
            artifacts=executor.artifacts,
            hooks=DbHooks(executor.sessions, host.name, executor.identities),
            connector=executor.connector,
            redact=redactor(executor.settings),
        )
    return context, RunKind(run.kind), steps


def _record(
    executor: Executor, step_id: int, status: StepStatus, **values: float | str | datetime | None
) -> None:
    with session_scope(executor.sessions) as session:
        step = session.get(BootstrapStep, step_id)
        if step is not None:
            step.status = status.value
            for key, value in values.items():
                setattr(step, key, value)


def _run_step(executor: Executor, ctx: StepContext, step_id: int, step: Step) -> str | None:
    """Run one step and record it; returns the failure message, or None."""
    ctx.lines = []
    _record(executor, step_id, StepStatus.running, started_at=utcnow())
    started = time.monotonic()
    error: str | None = None
    status = StepStatus.failed
    try:
        status = step(ctx)
    except StepFailed as exc:
        error = exc.message
    except (SshError, ArtifactError) as exc:
        error = exc.message
    except Exception as exc:
        trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        log.error("bootstrap of %s: step crashed: %s", ctx.host.name, ctx.redact(trace))
        error = f"internal error: {type(exc).__name__}: {exc}"
    if error is not None:
        status = StepStatus.failed
        ctx.log(f"failed: {error}")
    duration = round(time.monotonic() - started, 3)
    _record(executor, step_id, status, duration_s=duration, output=_tail(ctx.lines, ctx.redact))
    return None if error is None else ctx.redact(error)


def execute_run(run_id: str, executor: Executor) -> RunState | None:
    """Carry out one pending run to its end (synchronously); None when it was not pending."""
    begun = _begin(executor, run_id)
    if begun is None:
        return None
    ctx, kind, steps = begun
    plan = dict(PLANS[kind])
    failed: tuple[str, str] | None = None
    log.info("%s of %s: run %s started", kind.value, ctx.host.name, run_id)
    try:
        for step_id, name in steps:
            if failed is not None:
                _record(
                    executor, step_id, StepStatus.skipped, output=f"not run: {failed[0]} failed"
                )
                continue
            error = _run_step(executor, ctx, step_id, plan[name])
            if error is not None:
                failed = (name, error)
    finally:
        ctx.close()
    state = RunState.failed if failed else RunState.succeeded
    with session_scope(executor.sessions) as session:
        run = session.get(BootstrapRun, run_id)
        if run is not None:
            run.state = state.value
            run.finished_at = utcnow()
            run.error = f"{failed[0]}: {failed[1]}" if failed else None
            run.agent_version = ctx.agent_version
    log.info("%s of %s: %s", kind.value, ctx.host.name, f"{state.value} {run_id}")
    return state
