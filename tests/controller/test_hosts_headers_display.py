"""Each host's kernel headers in `hosts list` and `hosts show`: the state, and what it names."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from controller.cli.hosts import host_lines, hosts_lines
from controller.hosts.models import HostPublic
from node_agent.protocol import HeadersState
from tests.controller.support import capabilities

DETAILS = {
    HeadersState.exact: "/usr/src/linux-headers-6.1.0-57-amd64 (linked as ...) is 6.1.0-57-amd64's",
    HeadersState.approximate: "... is for 6.1.0-50-amd64, not 6.1.0-57-amd64; exact ones:"
    " apt-get install linux-headers-6.1.0-57-amd64",
    HeadersState.none: "no /lib/modules/6.1.0-57-amd64/build and the kernel offers no kheaders;"
    " apt-get install linux-headers-6.1.0-57-amd64",
    HeadersState.kheaders: "the kernel offers /sys/kernel/kheaders.tar.xz; extracted into"
    " /var/lib/fleettrace/kheaders/6.1.0-57-amd64",
}


def _host(state: HeadersState) -> dict[str, Any]:
    caps = capabilities().model_copy(update={"headers": state, "headers_detail": DETAILS[state]})
    return HostPublic(
        name=f"h-{state.value}",
        address=None,
        labels={},
        state="online",
        last_heartbeat=datetime.now(timezone.utc),
        agent_version="0.1.0",
        capabilities=caps.model_dump(mode="json"),
        created_at=datetime.now(timezone.utc),
    ).model_dump(mode="json")


@pytest.mark.parametrize("state", list(HeadersState))
def test_list_and_show_name_the_headers_state_and_detail(state: HeadersState) -> None:
    listed = [line.text for line in hosts_lines([_host(state)], selected=False)]
    assert listed[0].split()[5] == "HEADERS" and listed[1].split()[5] == state.value
    shown = [line.text for line in host_lines(HostPublic.model_validate(_host(state)))]
    headers = next(line for line in shown if line.startswith("headers:"))
    assert headers.split(":", 1)[1].strip() == f"{state.value} ({DETAILS[state]})"
