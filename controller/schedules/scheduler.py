"""The scheduler loop: find due schedules, claim each slot atomically, fire it.

Any number of schedulers may run against one database: the claim in service.claim lets exactly
one of them act on a slot, so running two for availability is safe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from controller.audit import service as audit
from controller.db import utcnow
from controller.dispatch import Dispatcher
from controller.metrics import tally
from controller.schedules import service
from controller.settings import Settings

log = logging.getLogger(__name__)
# The audit log's retention is applied this often (in small batches, by any scheduler).
AUDIT_PRUNE_EVERY_S = 60.0


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        dispatcher: Dispatcher,
        *,
        clock: Callable[[], datetime] = utcnow,
        tick_s: float = 0.5,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.dispatcher = dispatcher
        self.clock = clock
        self.tick_s = tick_s
        self._last_audit_prune = float("-inf")
        tally.attach(sessions, settings.redis_url)  # slots' outcomes reach /metrics

    def step(self) -> int:
        """One pass over due schedules; returns how many slots this scheduler claimed."""
        claimed = 0
        now = self.clock()
        with self.sessions() as session:
            due = service.due_schedules(session=session, now=now)
        for schedule_id, slot in due:
            with self.sessions() as session:
                try:
                    plan = service.fire_due(
                        session=session,
                        settings=self.settings,
                        dispatcher=self.dispatcher,
                        schedule_id=schedule_id,
                        due=slot,
                        now=now,
                    )
                except Exception:
                    # One broken schedule must not stop the others: log and go on.
                    log.exception("schedule %s: firing slot %s failed", schedule_id, slot)
                    session.rollback()
                    continue
            if plan is not None:
                claimed += 1
        if time.monotonic() - self._last_audit_prune >= AUDIT_PRUNE_EVERY_S:
            self._last_audit_prune = time.monotonic()
            self.prune_audit()
        return claimed

    def prune_audit(self) -> int:
        """Audit records past the retention go; a backlog shrinks a few batches per pass."""
        keep = timedelta(days=self.settings.audit_retention_days)
        with self.sessions() as session:
            return audit.prune(session=session, older_than=keep, now=self.clock())

    def run_forever(self, stop: threading.Event) -> None:
        log.info("scheduler running (tick %.1fs)", self.tick_s)
        while not stop.is_set():
            try:
                self.step()
            except Exception:
                log.exception("scheduler pass failed; retrying")
            stop.wait(self.tick_s)
        log.info("scheduler stopped")
