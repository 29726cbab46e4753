"""Hosts: the table and the API's schema family."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import String, false
from sqlalchemy.orm import Mapped, mapped_column

from controller.db import Base, utcnow
from node_agent.protocol import AgentStats
from node_agent.wire import HOST_NAME_PATTERN

NAME_PATTERN = HOST_NAME_PATTERN
LABEL_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,62}$"
# Identifiers, not prose: no space, no markup, no control character to print back later.
LABEL_VALUE_PATTERN = r"^[A-Za-z0-9_.:/@+-]{0,128}$"
MAX_LABELS = 64
# Free text an operator types (an address, a cgroup path): anything but control characters.
TEXT_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"
# OpenSSH's SHA256 fingerprint, as `ssh-keygen -lf` prints it.
FINGERPRINT_PATTERN = r"^SHA256:[A-Za-z0-9+/]{43}$"
SSH_USER_PATTERN = r"^[a-z_][a-z0-9_.-]{0,31}$"

HostState = Literal["online", "offline", "never_seen"]
HostName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
LabelKey = Annotated[str, StringConstraints(pattern=LABEL_KEY_PATTERN)]
LabelValue = Annotated[str, StringConstraints(pattern=LABEL_VALUE_PATTERN)]
Labels = Annotated[dict[LabelKey, LabelValue], Field(max_length=MAX_LABELS)]


class Host(Base):
    __tablename__ = "hosts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True, index=True)
    address: Mapped[str | None] = mapped_column(String(255))
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_heartbeat: Mapped[datetime | None]
    agent_version: Mapped[str | None] = mapped_column(String(64))
    capabilities: Mapped[dict[str, Any] | None]
    # AgentStats of the latest heartbeat as JSON; None: an agent too old to send them.
    agent_stats: Mapped[dict[str, Any] | None]
    # How the controller reaches the host over SSH; keys never live here, only fingerprints.
    ssh_user: Mapped[str] = mapped_column(String(32), default="root", server_default="root")
    ssh_port: Mapped[int] = mapped_column(default=22, server_default="22")
    host_key_fingerprint: Mapped[str | None] = mapped_column(String(64))
    trust_on_first_use: Mapped[bool] = mapped_column(default=False, server_default=false())
    # {"fingerprint": offered key, "at": ISO time}: a bootstrap met an unknown or changed key.
    host_key_rejected: Mapped[dict[str, Any] | None]
    cgroup: Mapped[str | None] = mapped_column(String(255))
    # SHA-256 of the host's Redis secret (as Redis keeps it): enough to put its ACL user back
    # after a Redis restart, never enough to act as the host. None: no identity issued.
    agent_secret_sha256: Mapped[str | None] = mapped_column(String(64))


class HostCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: HostName
    address: str | None = Field(default=None, max_length=255, pattern=TEXT_PATTERN)
    labels: Labels = Field(default_factory=dict)
    ssh_user: str = Field(default="root", pattern=SSH_USER_PATTERN)
    ssh_port: int = Field(default=22, ge=1, le=65535)
    host_key_fingerprint: str | None = Field(
        default=None, pattern=FINGERPRINT_PATTERN, description="pinned SSH host key"
    )
    trust_on_first_use: bool = Field(
        default=False, description="pin whatever key the first bootstrap sees"
    )
    cgroup: str | None = Field(
        default=None,
        max_length=255,
        pattern=TEXT_PATTERN,
        description="cgroup v2 path the agent confines traces to",
    )


class HostUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(default=None, max_length=255, pattern=TEXT_PATTERN)
    labels: Labels | None = None
    ssh_user: str | None = Field(default=None, pattern=SSH_USER_PATTERN)
    ssh_port: int | None = Field(default=None, ge=1, le=65535)
    host_key_fingerprint: str | None = Field(
        default=None,
        pattern=FINGERPRINT_PATTERN,
        description="pin this key (clears a recorded rejection)",
    )
    trust_on_first_use: bool | None = None
    cgroup: str | None = Field(default=None, max_length=255, pattern=TEXT_PATTERN)


class HostKeyRejection(BaseModel):
    fingerprint: str
    at: datetime


class HostPublic(BaseModel):
    name: str
    address: str | None
    labels: dict[str, str]
    state: HostState
    last_heartbeat: datetime | None
    agent_version: str | None
    capabilities: dict[str, Any] | None = Field(
        description="the agent's last probe: kernel, features, programs it runs, and `headers`:"
        " exact (the running kernel's build tree), approximate (another kernel's), kheaders"
        " (the kernel's own archive, extracted by the agent) or none (no bcc program runs);"
        " `headers_detail` names the tree, archive or missing path and how to get exact ones"
    )
    agent_stats: AgentStats | None = Field(
        default=None, description="what the agent costs and how its traces went, last heartbeat"
    )
    created_at: datetime
    ssh_user: str = "root"
    ssh_port: int = 22
    host_key_fingerprint: str | None = None
    trust_on_first_use: bool = False
    host_key_rejected: HostKeyRejection | None = None
    cgroup: str | None = None


class HostJoin(BaseModel):
    """A host's newly issued Redis identity: shown once, stored nowhere."""

    redis_url: str = Field(description="the host's own Redis URL, with its secret")
    command: str = Field(description="one line that joins the host")


class HostCreated(HostPublic):
    join: HostJoin | None = None


class HostsPublic(BaseModel):
    data: list[HostPublic]
    count: int
