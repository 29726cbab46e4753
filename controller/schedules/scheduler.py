"""The scheduler loop: find due schedules, claim each slot atomically, fire it.

Any number of schedulers may run against one database: the claim in service.claim lets exactly
one of them act on a slot, so running two for availability is safe.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from controller.db import utcnow
from controller.dispatch import Dispatcher
from controller.schedules import service
from controller.settings import Settings

log = logging.getLogger(__name__)


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
        return claimed

    def run_forever(self, stop: threading.Event) -> None:
        log.info("scheduler running (tick %.1fs)", self.tick_s)
        while not stop.is_set():
            try:
                self.step()
            except Exception:
                log.exception("scheduler pass failed; retrying")
            stop.wait(self.tick_s)
        log.info("scheduler stopped")
