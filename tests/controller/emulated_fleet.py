"""Emulated agents for tests about the controllers: real tasks in, real events out.

Each host pops the controller's real Celery task messages from its queue, verifies each with
the agent's own Gate (signature, addressee, expiry, replay) and answers as an agent does,
through the agent's EventPublisher on its own stream with its own Redis identity: StateChange
running, one snapshot per interval (the last one final), StateChange succeeded; and a
heartbeat every second listing the runs in progress. No bcc: the tests using it are about
what the controllers do with the events.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from devstack.harness import task_envelope
from node_agent.protocol import Heartbeat, HostCapabilities, RunState, StateChange, TraceRequest
from node_agent.trust import Gate, SeenRuns, TrustedKeys
from node_agent.wire import client_url, host_queue
from node_agent.worker import EventPublisher
from tests.controller.support import counters, snapshot

log = logging.getLogger(__name__)


@dataclass
class EmulatedFleet:
    controller_redis_url: str  # to pop the queues (a real agent pops its own with its identity)
    identities: dict[str, str]  # host -> its own Redis URL, from POST /v1/hosts
    trusted_keys: Path
    state_dir: Path
    capabilities: HostCapabilities
    stop: threading.Event = field(default_factory=threading.Event)
    # run id -> the seqs published for it, and whether its final state went out
    published: dict[str, list[int]] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)
    refused: list[str] = field(default_factory=list)
    _running: dict[str, set[str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for host in self.identities:
            self._running[host] = set()
            self._spawn(self._consume, host)
        self._spawn(self._heartbeats)

    def close(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _publisher(self, host: str) -> EventPublisher:
        return EventPublisher(redis.Redis.from_url(client_url(self.identities[host])), host)

    def _heartbeats(self) -> None:
        publishers = {host: self._publisher(host) for host in self.identities}
        while not self.stop.is_set():
            for host, publisher in publishers.items():
                with self._lock:
                    running = sorted(self._running[host])
                beat = Heartbeat(
                    host=host,
                    agent_version="emulated",
                    capabilities=self.capabilities,
                    running=running,
                )
                publisher.publish(beat)
            self.stop.wait(1.0)

    def _consume(self, host: str) -> None:
        client = redis.Redis.from_url(client_url(self.controller_redis_url))
        gate = Gate(
            host=host,
            keys=TrustedKeys(self.trusted_keys),
            seen=SeenRuns(self.state_dir / f"{host}.seen"),
            skew_s=30.0,
        )
        while not self.stop.is_set():
            reply: Any = client.brpop([host_queue(host)], timeout=1)
            if not reply:
                continue
            try:
                task_id, envelope = task_envelope(reply[1])
                request = TraceRequest.model_validate(gate.admit_run(envelope).payload)
                if request.run_id != task_id:
                    raise ValueError(f"task {task_id} carries run {request.run_id}")
            except Exception as exc:  # an agent logs a refused task and goes on
                log.warning("emulated %s: task refused: %s", host, exc)
                self.refused.append(f"{host}: {exc}")
                continue
            self._spawn(self._trace, host, request)

    def _trace(self, host: str, request: TraceRequest) -> None:
        publish = self._publisher(host).publish
        run_id, job_id = request.run_id, request.job_id
        with self._lock:
            self._running[host].add(run_id)
            self.published[run_id] = []
        publish(StateChange(run_id=run_id, state=RunState.running), job_id=job_id)
        interval = request.interval_s or request.duration_s
        last = max(1, int(request.duration_s / interval))
        for seq in range(last + 1):
            self.stop.wait(interval if seq < last else 0.05)
            if self.stop.is_set():
                return
            snap = snapshot(run_id, seq, [counters("calls", {"x": seq + 1})], final=seq == last)
            publish(snap, job_id=job_id)
            with self._lock:
                self.published[run_id].append(seq)
        publish(StateChange(run_id=run_id, state=RunState.succeeded), job_id=job_id)
        with self._lock:
            self._running[host].discard(run_id)
            self.finished.add(run_id)

    def idle(self) -> bool:
        with self._lock:
            return not any(self._running.values())


def wait_idle(fleet: EmulatedFleet, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not fleet.idle():
        assert time.monotonic() < deadline, "the emulated fleet still has runs in progress"
        time.sleep(0.1)
