"""A local fleet on one machine, for trying fleettrace and for its end-to-end tests.

Redis on a unix socket, the controller, and hosts made of network, mount and UTS namespaces,
each with its own cgroup holding a workload and an agent confined to that cgroup.

The names below are imported when first used: `python -m devstack.supervise`, which starts
every host's agent (in a VM under emulation too, where each import costs 50 times as much),
needs none of the controller they bring in.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from devstack.config import DevstackError, HostSpec, StackConfig, demo_hosts
    from devstack.host import HostService
    from devstack.stack import Stack
    from devstack.teardown import down, status

_WHERE = {
    "DevstackError": "devstack.config",
    "HostSpec": "devstack.config",
    "StackConfig": "devstack.config",
    "demo_hosts": "devstack.config",
    "HostService": "devstack.host",
    "Stack": "devstack.stack",
    "down": "devstack.teardown",
    "status": "devstack.teardown",
}

__all__ = [
    "DevstackError",
    "HostService",
    "HostSpec",
    "Stack",
    "StackConfig",
    "demo_hosts",
    "down",
    "status",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'devstack' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
