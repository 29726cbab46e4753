"""The agent's settings: FLEETTRACE_* environment variables or /etc/fleettrace/agent.env."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from node_agent.headers.kheaders import KheadersSource
from node_agent.headers.probe import KHEADERS_ARCHIVE
from node_agent.wire import HOST_NAME_PATTERN

CONFIG_FILE = os.environ.get("FLEETTRACE_AGENT_CONFIG", "/etc/fleettrace/agent.env")
TRUSTED_KEYS_FILE = Path("/etc/fleettrace/controller-keys.pub")
STATE_DIR = Path("/var/lib/fleettrace")


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLEETTRACE_", env_file=CONFIG_FILE, extra="ignore"
    )

    host: str = Field(default_factory=socket.gethostname, pattern=HOST_NAME_PATTERN)
    # The host's own Redis identity, as the controller issued it:
    # redis://ft-host-<host>:<secret>@redis:6379/0, or rediss://...?ssl_ca_certs=/path/ca.pem
    redis_url: str = "redis://127.0.0.1:6379/0"
    allow_custom: bool = False
    allow_bpftrace: bool = False  # run bpftrace scripts (the bpftrace program)
    max_duration_s: float = Field(default=3600.0, gt=0)
    # The most a job may set its overhead budget to (limits.overhead_pct), % of one CPU.
    max_overhead_pct: float = Field(default=50.0, gt=0, le=400)
    concurrency: int = Field(default=4, ge=1, le=64)
    heartbeat_s: float = Field(default=10.0, gt=0)
    probe_every_s: float = Field(default=3600.0, gt=0)
    # A probe compiles bcc programs: seconds here, minutes in an emulated VM.
    probe_timeout_s: float = Field(default=120.0, gt=0)
    compile_timeout_s: float = Field(default=120.0, gt=0)  # a trace's compile and attach
    cgroup: str | None = Field(
        default=None, description="cgroup v2 path every trace of this host is confined to"
    )
    trusted_keys: Path = Field(
        default=TRUSTED_KEYS_FILE,
        description="the controller's public keys, one 'KEY_ID BASE64' per line",
    )
    state_dir: Path = Field(default=STATE_DIR, description="where accepted run ids are kept")
    clock_skew_s: float = Field(default=30.0, ge=0, le=600)
    kheaders_archive: Path = Field(
        default=KHEADERS_ARCHIVE,
        description="the kernel's header archive (CONFIG_IKHEADERS), used without a build tree",
    )

    @property
    def kheaders(self) -> KheadersSource:
        """Its archive, extracted under the state dir (shared by the local hosts' agents)."""
        return KheadersSource(
            archive=str(self.kheaders_archive), cache=str(self.state_dir / "kheaders")
        )

    @property
    def seen_runs_file(self) -> Path:
        """Per host: agents of several local hosts may share one state dir."""
        return self.state_dir / f"seen-runs.{self.host}"
