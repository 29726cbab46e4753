"""The agent's Celery worker: consumes only its host's queue, runs traces, streams events back."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import redis
from celery import Celery

from node_agent import __version__
from node_agent.outbox import Outbox, OutboxFull
from node_agent.protocol import (
    AgentStats,
    ErrorCode,
    Heartbeat,
    HostCapabilities,
    Refusal,
    RefusalReason,
    RunEvent,
    RunState,
    StateChange,
    StreamEnvelope,
    TraceRequest,
)
from node_agent.runner import ChildPool, TraceRunner
from node_agent.selfstats import SelfStats
from node_agent.settings import AgentSettings
from node_agent.signing import VerifyError
from node_agent.trust import Gate, SeenRuns, TrustedKeys
from node_agent.wire import (
    EVENTS_STREAM_MAXLEN,
    TASK_RUN_TRACE,
    cancel_key,
    celery_config,
    client_url,
    events_stream,
    host_queue,
)
from node_agent.zygote import Zygote

log = logging.getLogger(__name__)
CANCEL_POLL_S = 0.2


class EventPublisher:
    """Appends an agent's events to its host's own Redis stream, in order per run."""

    def __init__(self, client: redis.Redis, host: str) -> None:
        self.client = client
        self.host = host
        self.stream = events_stream(host)

    def publish(self, event: RunEvent | Heartbeat | Refusal, job_id: str | None = None) -> None:
        envelope = StreamEnvelope(host=self.host, job_id=job_id, event=event)
        for attempt in range(5):
            try:
                self.client.xadd(
                    self.stream,
                    {"data": envelope.model_dump_json()},
                    maxlen=EVENTS_STREAM_MAXLEN,
                    approximate=True,
                )
                return
            except redis.ConnectionError:
                if attempt == 4:
                    raise
                time.sleep(0.5 * (attempt + 1))


class Agent:
    """One host's agent: settings, a Redis client, the traces in progress."""

    def __init__(self, settings: AgentSettings, pool: ChildPool | None = None) -> None:
        self.settings = settings
        self.redis = redis.Redis.from_url(client_url(settings.redis_url))
        self.publisher = Outbox(self.redis, settings.host)
        self.running: dict[str, TraceRunner] = {}
        self.capabilities: HostCapabilities | None = None
        self.pool = pool or ChildPool()
        self.stats = SelfStats()
        self.gate = Gate(
            host=settings.host,
            keys=TrustedKeys(settings.trusted_keys),
            seen=SeenRuns(settings.seen_runs_file),
            skew_s=settings.clock_skew_s,
        )
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # The cancel value last refused per run: a forged one is reported once, not every poll.
        self._refused_cancels: dict[str, bytes] = {}

    def refuse(self, exc: VerifyError, what: str) -> None:
        """Nothing runs: log it, and tell the controller (each refusal is audited there)."""
        run_id = exc.run_id or "unknown"
        log.error(
            "host %s: refused %s of run %s: %s (%s)",
            self.settings.host,
            what,
            run_id,
            exc.reason.value,
            exc.detail,
        )
        refusal = Refusal(
            reason=exc.reason, detail=f"{what}: {exc.detail}"[:1024], run_id=exc.run_id
        )
        try:
            self.publisher.publish(refusal)
        except OutboxFull as err:
            log.warning(
                "host %s: cannot report the refusal of run %s: %s", self.settings.host, run_id, err
            )

    def accept(self, task: object) -> TraceRequest | None:
        """The request of a task that verifies (signature, host, expiry, replay), else None."""
        try:
            verified = self.gate.admit_run(task)
        except VerifyError as exc:
            self.refuse(exc, "task")
            return None
        try:
            return TraceRequest.model_validate(verified.payload)
        except ValueError as exc:
            log.error("run %s: signed request does not validate: %s", verified.run_id, exc)
            job_id = verified.payload.get("job_id")
            final = StateChange(
                run_id=verified.run_id,
                state=RunState.failed,
                reason=f"unreadable request: {str(exc)[:500]}",
            )
            self.stats.trace_ended(final)
            self.publisher.publish(final, job_id=job_id if isinstance(job_id, str) else None)
            return None

    def cancel_requested(self, run_id: str) -> bool:
        """A cancel counts only when its value is signed by the controller for this host and run."""
        value = self.redis.get(cancel_key(self.settings.host, run_id))
        if not isinstance(value, bytes):  # None: no cancel (this client never decodes to str)
            return False
        try:
            self.gate.check(value, action="cancel", run_id=run_id)
        except VerifyError as exc:
            if self._refused_cancels.get(run_id) != value:
                self._refused_cancels[run_id] = value
                exc.run_id = exc.run_id or run_id
                self.refuse(exc, "cancel")
            return False
        return True

    def run(self, request: TraceRequest) -> StateChange:
        job_id = request.job_id
        run_id = request.run_id

        def publish(event: RunEvent) -> None:
            try:
                self.publisher.publish(event, job_id=job_id)
            except OutboxFull as exc:
                # Redis has been away too long to keep this run's events: stop spending on it.
                log.error("run %s (job %s): %s; stopping the trace", run_id, job_id, exc)
                runner = self.running.get(run_id)
                if runner is not None:
                    runner.cancel()

        if self.cancel_requested(run_id):
            final = StateChange(
                run_id=run_id, state=RunState.cancelled, reason="cancelled before start"
            )
            self.stats.trace_ended(final)
            publish(final)
            return final
        # Tells the controller the host has the run, so it is not expired while it compiles.
        publish(StateChange(run_id=run_id, state=RunState.pending, reason="accepted"))
        runner = TraceRunner(
            request,
            publish,
            allow_custom=self.settings.allow_custom,
            allow_bpftrace=self.settings.allow_bpftrace,
            max_duration_s=self.settings.max_duration_s,
            max_overhead_pct=self.settings.max_overhead_pct,
            compile_timeout_s=self.settings.compile_timeout_s,
            cgroup_base=self.settings.cgroup,  # resolved and enforced in trace.prepare
            capabilities=self.capabilities,
            pool=self.pool,
            kheaders=self.settings.kheaders,
        )
        with self._lock:
            self.running[run_id] = runner
        done = threading.Event()
        watcher = threading.Thread(
            target=self._watch_cancel, args=(run_id, runner, done), daemon=True
        )
        watcher.start()
        try:
            log.info("run %s (job %s): starting %s", run_id, job_id, request.program)
            try:
                final = runner.run()
            except Exception as exc:
                reason = f"the agent failed running it: {type(exc).__name__}: {exc}"
                self.stats.trace_ended(
                    StateChange(run_id=run_id, state=RunState.failed, reason=reason)
                )
                raise
            self.stats.trace_ended(final)
            log.info("run %s (job %s): %s", run_id, job_id, final.state.value)
            if final.error is not None and final.error.code is ErrorCode.policy:
                detail = final.error.message[:1024]  # also a refusal, for the audit log
                refusal = Refusal(reason=RefusalReason.policy, detail=detail, run_id=run_id)
                self.publisher.publish(refusal, job_id=job_id)
            return final
        finally:
            done.set()
            with self._lock:
                self.running.pop(run_id, None)
            self._refused_cancels.pop(run_id, None)

    def _watch_cancel(self, run_id: str, runner: TraceRunner, done: threading.Event) -> None:
        while not done.wait(CANCEL_POLL_S):
            try:
                if self.cancel_requested(run_id):
                    log.info("run %s: cancel requested", run_id)
                    runner.cancel()
                    return
            except redis.RedisError as exc:
                log.warning("run %s: cannot check for cancel: %s", run_id, exc)

    def probe(self) -> HostCapabilities | None:
        """Probe in a child process: a probe that crashes must not take the worker down.
        The host keeps beating meanwhile: a slow probe must not make it look gone."""
        allow = [
            *(["--allow-custom"] if self.settings.allow_custom else []),
            *(["--allow-bpftrace"] if self.settings.allow_bpftrace else []),
            *("--state-dir", str(self.settings.state_dir)),
            *("--kheaders-archive", str(self.settings.kheaders_archive)),
        ]
        deadline = time.monotonic() + self.settings.probe_timeout_s
        try:
            with subprocess.Popen(
                [sys.executable, "-m", "node_agent.cli", "probe", *allow],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,  # a timed-out probe goes with whatever it started
            ) as proc:
                while True:
                    wait_s = min(self.settings.heartbeat_s, deadline - time.monotonic())
                    try:
                        out, err = proc.communicate(timeout=max(wait_s, 0.0))
                        break
                    except subprocess.TimeoutExpired:
                        if time.monotonic() >= deadline:
                            os.killpg(proc.pid, signal.SIGKILL)
                            proc.communicate()
                            raise
                        self.beat()
            if proc.returncode != 0:
                raise subprocess.CalledProcessError(proc.returncode, proc.args, out, err)
            return HostCapabilities.model_validate(json.loads(out))
        except (subprocess.SubprocessError, ValueError, OSError) as exc:
            log.error("host %s: capability probe failed: %s", self.settings.host, exc)
            return None

    def heartbeat_forever(self) -> None:
        # A first beat before the (slow) probe: a restarted agent's empty `running` list is
        # what tells the controller at once that the runs it had are gone.
        self.beat()
        probed_at = 0.0
        while not self._stop.is_set():
            if (
                time.monotonic() - probed_at > self.settings.probe_every_s
                or self.capabilities is None
            ):
                self.capabilities = self.probe() or self.capabilities
                probed_at = time.monotonic()
            self.beat()
            self._stop.wait(self.settings.heartbeat_s)

    def beat(self) -> None:
        with self._lock:
            running = list(self.running)
        beat = Heartbeat(
            host=self.settings.host,
            agent_version=__version__,
            capabilities=self.capabilities,
            running=running,
            agent=self.own_stats(programs_loaded=len(running)),
        )
        try:
            self.publisher.publish(beat)
        except OutboxFull as exc:
            log.warning("host %s: heartbeat not queued: %s", self.settings.host, exc)

    def own_stats(self, *, programs_loaded: int) -> AgentStats | None:
        try:
            return self.stats.collect(programs_loaded=programs_loaded)
        except Exception:  # the beat says the host is alive: it goes without its stats
            log.exception("host %s: cannot read the agent's own stats", self.settings.host)
            return None

    def stop(self) -> None:
        self._stop.set()
        self.pool.close()
        with self._lock:
            runners = list(self.running.values())
        for runner in runners:
            runner.cancel()
        self.publisher.close(timeout_s=5.0)


def make_app(agent: Agent) -> Celery:
    app = Celery("fleettrace-agent")
    app.conf.update(celery_config(agent.settings.redis_url, host=agent.settings.host))

    @app.task(name=TASK_RUN_TRACE, ignore_result=True)  # type: ignore[untyped-decorator]
    def run_trace(*args: Any, **kwargs: Any) -> str:
        # Any shape is taken, so that every forged message is refused and reported, not dropped.
        if len(args) != 1 or kwargs:
            agent.refuse(
                VerifyError(RefusalReason.unreadable, "not one signed envelope as its argument"),
                "task",
            )
            return "refused"
        request = agent.accept(args[0])
        if request is None:
            return "refused"
        return agent.run(request).state.value

    return app


def serve(settings: AgentSettings, zygote: Zygote | None = None) -> None:
    """Join the fleet: heartbeat, then consume this host's queue until stopped; trace
    children come from `zygote` (forked here if not given, before any thread starts)."""
    agent = Agent(settings, pool=ChildPool(zygote or Zygote.fork()))
    app = make_app(agent)
    trusted = agent.gate.trusted.keys()
    if not trusted:
        log.error(
            "agent %s trusts NO controller key (%s is missing or empty): it will refuse ALL work",
            settings.host,
            settings.trusted_keys,
        )
    beat = threading.Thread(target=agent.heartbeat_forever, name="heartbeat", daemon=True)
    beat.start()
    log.info("agent %s joining via %s", settings.host, _redact(settings.redis_url))
    try:
        app.worker_main(
            [
                "worker",
                "--queues",
                host_queue(settings.host),
                "--pool",
                "threads",
                "--concurrency",
                str(settings.concurrency),
                "--hostname",
                f"{settings.host}@{os.uname().nodename}",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel",
                "INFO",
            ]
        )
    finally:
        agent.stop()


def _redact(url: str) -> str:
    """A URL without its password, for logs."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, where = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{where}" if ":" in creds else f"{scheme}://{user}@{where}"
