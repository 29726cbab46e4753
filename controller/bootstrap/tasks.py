"""Bootstrap as Celery tasks on the controller's own queue, and the worker that consumes it.

Tasks carry ids only (JSON): the run or batch in the database says the rest.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from functools import cached_property

from celery import Celery

from controller.bootstrap.batch import execute_batch
from controller.bootstrap.models import RunKind
from controller.bootstrap.runner import Executor, execute_run
from controller.db import make_engine, make_sessionmaker
from controller.settings import Settings
from node_agent.wire import celery_config

log = logging.getLogger(__name__)
CONTROLLER_QUEUE = "fleettrace.controller"
TASK_BOOTSTRAP = "fleettrace.bootstrap"
TASK_UNINSTALL = "fleettrace.uninstall"
TASK_BOOTSTRAP_BATCH = "fleettrace.bootstrap_batch"
RUN_TASKS = {RunKind.bootstrap: TASK_BOOTSTRAP, RunKind.uninstall: TASK_UNINSTALL}


def _app(redis_url: str, name: str) -> Celery:
    app = Celery(name)
    app.conf.update(celery_config(redis_url))
    return app


class CeleryBootstrapQueue:
    """Sends runs and batches to the controller queue, where `fleettrace worker` takes them."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url

    @cached_property
    def celery(self) -> Celery:
        return _app(self.redis_url, "fleettrace-controller")

    def _send(self, task: str, item_id: str) -> None:
        self.celery.send_task(
            task, args=[item_id], queue=CONTROLLER_QUEUE, routing_key=CONTROLLER_QUEUE
        )
        log.info("%s %s: queued", task, item_id)

    def send_run(self, *, run_id: str, kind: RunKind) -> None:
        self._send(RUN_TASKS[kind], run_id)

    def send_batch(self, *, batch_id: str) -> None:
        self._send(TASK_BOOTSTRAP_BATCH, batch_id)


class ThreadQueue:
    """Runs each run or batch in a thread of this process: for tests and single-process use."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.threads: list[threading.Thread] = []

    def _start(self, target: Callable[[str, Executor], object], item_id: str) -> None:
        thread = threading.Thread(
            target=target, args=(item_id, self.executor), name=f"bootstrap-{item_id[:8]}"
        )
        self.threads.append(thread)
        thread.start()

    def send_run(self, *, run_id: str, kind: RunKind) -> None:
        self._start(execute_run, run_id)

    def send_batch(self, *, batch_id: str) -> None:
        self._start(execute_batch, batch_id)

    def join(self, timeout_s: float | None = None) -> None:
        for thread in self.threads:
            thread.join(timeout_s)


def make_worker_app(executor: Executor) -> Celery:
    app = _app(executor.settings.redis_url, "fleettrace-controller-worker")

    @app.task(name=TASK_BOOTSTRAP, ignore_result=True)  # type: ignore[untyped-decorator]
    def bootstrap(run_id: str) -> str:
        state = execute_run(str(run_id), executor)
        return state.value if state is not None else "ignored"

    @app.task(name=TASK_UNINSTALL, ignore_result=True)  # type: ignore[untyped-decorator]
    def uninstall(run_id: str) -> str:
        state = execute_run(str(run_id), executor)
        return state.value if state is not None else "ignored"

    @app.task(name=TASK_BOOTSTRAP_BATCH, ignore_result=True)  # type: ignore[untyped-decorator]
    def bootstrap_batch(batch_id: str) -> str:
        execute_batch(str(batch_id), executor)
        return "done"

    return app


def serve_worker(settings: Settings, *, concurrency: int | None = None) -> None:
    """Consume the controller queue until stopped (threads: steps mostly wait on SSH)."""
    sessions = make_sessionmaker(make_engine(settings.database_url))
    app = make_worker_app(Executor.default(sessions, settings))
    app.worker_main(
        [
            "worker",
            "--queues",
            CONTROLLER_QUEUE,
            "--pool",
            "threads",
            "--concurrency",
            str(concurrency or settings.worker_concurrency),
            "--hostname",
            f"controller-{os.getpid()}@{os.uname().nodename}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel",
            "INFO",
        ]
    )
