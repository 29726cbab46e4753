"""Every table, imported in one place for Alembic and create_all."""

from controller.auth.models import ApiToken
from controller.db import Base
from controller.hosts.models import Host
from controller.jobs.models import Job, JobEvent, Run, SnapshotRow

__all__ = ["ApiToken", "Base", "Host", "Job", "JobEvent", "Run", "SnapshotRow"]
