"""The seam around the kernel: a small protocol, a real bcc implementation and a fake."""

from node_agent.runtime.base import EventCallback, LoadedProgram, Runtime

__all__ = ["EventCallback", "LoadedProgram", "Runtime"]
