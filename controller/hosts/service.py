"""Hosts: registry, label selection, heartbeat bookkeeping."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.db import utcnow
from controller.errors import Conflict, InvalidRequest
from controller.hosts.identity import Credential, Identities
from controller.hosts.models import (
    LABEL_KEY_PATTERN,
    LABEL_VALUE_PATTERN,
    Host,
    HostCreate,
    HostKeyRejection,
    HostPublic,
    HostState,
    HostUpdate,
)
from node_agent.protocol import AgentStats, Heartbeat

log = logging.getLogger(__name__)
_KEY = re.compile(LABEL_KEY_PATTERN)
_VALUE = re.compile(LABEL_VALUE_PATTERN)


def parse_selector(items: Iterable[str]) -> dict[str, str]:
    """['k=v', ...] -> {k: v}; a bad item is a 422 naming the query's `selector`."""
    selector: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _KEY.match(key) or not _VALUE.match(value):
            raise InvalidRequest(
                f"bad {item!r}, want k=v with a label key and value", loc=("query", "selector")
            )
        selector[key] = value
    return selector


def get(*, session: Session, name: str) -> Host | None:
    return session.scalar(select(Host).where(Host.name == name))


def list_hosts(*, session: Session, selector: dict[str, str] | None = None) -> list[Host]:
    hosts = session.scalars(select(Host).order_by(Host.name)).all()
    if not selector:
        return list(hosts)
    return [h for h in hosts if all(h.labels.get(k) == v for k, v in selector.items())]


def label_values(hosts: Iterable[Host]) -> dict[str, list[str]]:
    """Each label key the hosts carry and its values, sorted: hints beside a selector."""
    values: dict[str, set[str]] = {}
    for host in hosts:
        for key, value in host.labels.items():
            values.setdefault(key, set()).add(value)
    return {key: sorted(found) for key, found in sorted(values.items())}


def create(*, session: Session, host_in: HostCreate) -> Host:
    if get(session=session, name=host_in.name) is not None:
        raise Conflict(f"host {host_in.name!r} exists", field="name")
    host = Host(
        name=host_in.name,
        address=host_in.address,
        labels=dict(host_in.labels),
        ssh_user=host_in.ssh_user,
        ssh_port=host_in.ssh_port,
        host_key_fingerprint=host_in.host_key_fingerprint,
        trust_on_first_use=host_in.trust_on_first_use,
        cgroup=host_in.cgroup,
    )
    session.add(host)
    session.flush()
    return host


def update(*, session: Session, host: Host, host_in: HostUpdate) -> Host:
    if host_in.address is not None:
        host.address = host_in.address
    if host_in.labels is not None:
        host.labels = dict(host_in.labels)
    if host_in.ssh_user is not None:
        host.ssh_user = host_in.ssh_user
    if host_in.ssh_port is not None:
        host.ssh_port = host_in.ssh_port
    if host_in.host_key_fingerprint is not None:
        host.host_key_fingerprint = host_in.host_key_fingerprint
        host.host_key_rejected = None
    if host_in.trust_on_first_use is not None:
        host.trust_on_first_use = host_in.trust_on_first_use
    if host_in.cgroup is not None:
        host.cgroup = host_in.cgroup
    return host


def state(host: Host, *, timeout_s: float, now: datetime | None = None) -> HostState:
    if host.last_heartbeat is None:
        return "never_seen"
    now = now or utcnow()
    return "online" if now - host.last_heartbeat <= timedelta(seconds=timeout_s) else "offline"


def to_public(host: Host, *, timeout_s: float) -> HostPublic:
    return HostPublic(
        name=host.name,
        address=host.address,
        labels=dict(host.labels),
        state=state(host, timeout_s=timeout_s),
        last_heartbeat=host.last_heartbeat,
        agent_version=host.agent_version,
        capabilities=host.capabilities,
        agent_stats=agent_stats(host),
        created_at=host.created_at,
        ssh_user=host.ssh_user,
        ssh_port=host.ssh_port,
        host_key_fingerprint=host.host_key_fingerprint,
        trust_on_first_use=host.trust_on_first_use,
        host_key_rejected=(
            None
            if host.host_key_rejected is None
            else HostKeyRejection.model_validate(host.host_key_rejected)
        ),
        cgroup=host.cgroup,
    )


def agent_stats(host: Host) -> AgentStats | None:
    """The stats the host's agent sent last; None if none (or, stored before a change of the
    model, unreadable now: a host is still shown)."""
    if host.agent_stats is None:
        return None
    try:
        return AgentStats.model_validate(host.agent_stats)
    except ValidationError as exc:
        log.warning("host %s: stored agent stats unreadable: %s", host.name, exc)
        return None


def issue_identity(*, host: Host, identities: Identities) -> Credential:
    """A new Redis secret for the host (the caller commits, then `identities.apply`)."""
    host.agent_secret_sha256, credential = identities.new_secret(host.name)
    return credential


def register(
    *, session: Session, identities: Identities, host_in: HostCreate
) -> tuple[Host, Credential]:
    """create() with the host's first Redis identity, committed and applied (API and console)."""
    host = create(session=session, host_in=host_in)
    credential = issue_identity(host=host, identities=identities)
    session.commit()
    identities.hosts_changed()
    identities.apply(host.name, host.agent_secret_sha256 or "")
    return host, credential


def record_heartbeat(*, session: Session, beat: Heartbeat) -> Host | None:
    """Hosts join by being added, never by heartbeating: an unknown name changes nothing."""
    host = get(session=session, name=beat.host)
    if host is None:
        return None
    _beat(host, beat)
    return host


def record_heartbeats(*, session: Session, beats: Sequence[Heartbeat]) -> list[Host]:
    """record_heartbeat() for many hosts in one query; the known hosts are returned."""
    by_name = {beat.host: beat for beat in beats}
    hosts = list(session.scalars(select(Host).where(Host.name.in_(by_name))))
    for host in hosts:
        _beat(host, by_name[host.name])
    return hosts


def _beat(host: Host, beat: Heartbeat) -> None:
    host.last_heartbeat = utcnow()
    host.agent_version = beat.agent_version
    if beat.capabilities is not None:
        host.capabilities = beat.capabilities.model_dump(mode="json")
    # Each beat's own: none (an old agent, or stats refused) is not the last ones kept stale.
    host.agent_stats = None if beat.agent is None else beat.agent.model_dump(mode="json")
