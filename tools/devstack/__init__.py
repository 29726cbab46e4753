"""A local fleet on one machine, for trying fleettrace and for its end-to-end tests.

Redis on a unix socket, the controller, and hosts made of network, mount and UTS namespaces,
each with its own cgroup holding a workload and an agent confined to that cgroup.
"""

from devstack.config import DevstackError, HostSpec, StackConfig, demo_hosts
from devstack.host import HostService
from devstack.stack import Stack
from devstack.teardown import down, status

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
