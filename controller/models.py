"""Every table, imported in one place for Alembic and create_all."""

from controller.audit.models import AuditRecord
from controller.auth.models import ApiToken
from controller.bootstrap.models import BootstrapBatch, BootstrapRun, BootstrapStep
from controller.console.sessions import ConsoleSession
from controller.db import Base
from controller.hosts.models import Host
from controller.ingest.dead_letters import DeadLetter
from controller.jobs.models import Job, JobEvent, Run, SnapshotRow
from controller.reports.store import RunDigestRow
from controller.schedules.models import Schedule, ScheduleFire

__all__ = [
    "ApiToken",
    "AuditRecord",
    "Base",
    "BootstrapBatch",
    "BootstrapRun",
    "BootstrapStep",
    "ConsoleSession",
    "DeadLetter",
    "Host",
    "Job",
    "JobEvent",
    "Run",
    "RunDigestRow",
    "Schedule",
    "ScheduleFire",
    "SnapshotRow",
]
