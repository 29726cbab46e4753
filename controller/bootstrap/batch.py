"""Many bootstrap runs at once: a concurrency limit, and no new start after too many failed."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from sqlalchemy import select

from controller.bootstrap.models import BootstrapBatch, BootstrapRun, RunState
from controller.bootstrap.runner import Executor, execute_run
from controller.db import session_scope, utcnow

log = logging.getLogger(__name__)


def run_many(
    items: list[str],
    work: Callable[[str], bool],
    *,
    parallel: int,
    max_failures: int | None,
) -> tuple[list[str], list[str]]:
    """Run `work` over items, at most `parallel` at once, starting none after `max_failures`
    failures. Returns (started, never started)."""
    started: list[str] = []
    failures = 0
    queue = list(items)
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        running: set[Future[bool]] = set()
        while queue or running:
            while queue and len(running) < parallel:
                if max_failures is not None and failures >= max_failures:
                    break
                item = queue.pop(0)
                started.append(item)
                running.add(pool.submit(work, item))
            if not running:
                break
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                ok = not future.exception() and future.result()
                if not ok:
                    failures += 1
    return started, queue


def execute_batch(batch_id: str, executor: Executor) -> None:
    with executor.sessions() as session:
        batch = session.get(BootstrapBatch, batch_id)
        if batch is None or batch.finished_at is not None:
            return
        parallel, max_failures = batch.parallel, batch.max_failures
        run_ids = list(
            session.scalars(
                select(BootstrapRun.id)
                .where(BootstrapRun.batch_id == batch_id)
                .where(BootstrapRun.state == RunState.pending.value)
                .order_by(BootstrapRun.host_name)
            )
        )

    def work(run_id: str) -> bool:
        return execute_run(run_id, executor) is not RunState.failed

    _, unstarted = run_many(run_ids, work, parallel=parallel, max_failures=max_failures)
    with session_scope(executor.sessions) as session:
        for run_id in unstarted:
            run = session.get(BootstrapRun, run_id)
            if run is not None and run.state == RunState.pending.value:
                run.state = RunState.cancelled.value
                run.error = f"not started: the batch reached {max_failures} failed"
                run.finished_at = utcnow()
        batch = session.get(BootstrapBatch, batch_id)
        if batch is not None:
            batch.finished_at = utcnow()
    log.info("bootstrap batch %s: done, %d not started", batch_id, len(unstarted))
