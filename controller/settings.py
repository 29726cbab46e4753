"""The controller's settings: one typed object per process, from FLEETTRACE_* variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from node_agent.wire import without_credentials


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEETTRACE_", env_file=".env", extra="ignore")

    database_url: str = "sqlite:///var/fleettrace.db"
    redis_url: str = "redis://127.0.0.1:6379/0"
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8700, ge=1, le=65535)
    # HTTPS served by the API itself: a PEM certificate (chain) and its private key.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Proxies whose X-Forwarded-For/-Proto are believed (comma-separated IPs, CIDRs, or "*");
    # empty: the client address is the peer's, whatever headers say.
    forwarded_allow_ips: str = ""
    audit_retention_days: float = Field(default=90.0, gt=0, le=36500)
    # A run whose host has not started it by then ends `expired`.
    task_expiry_s: float = Field(default=60.0, gt=0)
    heartbeat_timeout_s: float = Field(default=30.0, gt=0)
    # A held run a heartbeat leaves out this long (accepted just before the beat?) is lost.
    lease_unlisted_grace_s: float = Field(default=5.0, ge=0)
    # Beyond duration + the agent's grace, how long a run may take to send its final event.
    lease_slack_s: float = Field(default=120.0, gt=0)
    max_duration_s: float = Field(default=3600.0, gt=0)
    # The most rows one job may store: hosts x snapshots x limits.max_rows.
    job_budget_rows: int = Field(default=50_000_000, ge=1)
    ingest_group: str = "controller"
    # This process's name in the group: unique per process (default: <hostname>-<pid>).
    ingest_consumer: str | None = None
    ingest_batch: int = Field(default=200, ge=1, le=10_000)
    # Entries another consumer read and has not acked this long are claimed (a dead peer's).
    ingest_claim_idle_ms: int = Field(default=30_000, ge=100)
    # Where agents find Redis, without credentials (each host gets its own user and secret):
    # e.g. rediss://redis.example:6380/0?ssl_ca_certs=/etc/fleettrace/redis-ca.pem.
    # Defaults to redis_url without the controller's user and password.
    agent_redis_url: str | None = None
    known_hosts: Path | None = Field(default=None, description="OpenSSH known_hosts to trust")
    ssh_key: Path | None = Field(default=None, description="private key file for bootstrap")
    ssh_use_agent: bool = True
    ssh_connect_timeout_s: float = Field(default=10.0, gt=0)
    ssh_auth_timeout_s: float = Field(default=15.0, gt=0)
    ssh_command_timeout_s: float = Field(default=600.0, gt=0)
    artifacts_dir: Path = Path("var/artifacts")
    # The controller's Ed25519 signing keys (0700 directory, 0600 files): `fleettrace keys`.
    keys_dir: Path = Path("var/keys")
    bootstrap_verify_timeout_s: float = Field(default=90.0, gt=0)
    worker_concurrency: int = Field(default=8, ge=1, le=256)
    # Live views (SSE): open streams each API token may hold in one controller process, and
    # the threads that poll the database for all of them (one poll per followed job).
    sse_streams_per_token: int = Field(default=32, ge=1, le=10_000)
    sse_poll_threads: int = Field(default=4, ge=1, le=64)
    # /metrics without a token on a port of its own (e.g. reached only by Prometheus); unset:
    # only the API's /metrics, with a viewer token.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"
    # The web console: a session ends after this long without a request.
    console_idle_minutes: int = Field(default=30, ge=1, le=7 * 24 * 60)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, v: str) -> str:
        if not v.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:")):
            raise ValueError("database_url must be a sqlite: or postgresql: URL")
        if v.startswith("postgresql://"):
            v = "postgresql+psycopg://" + v.removeprefix("postgresql://")
        return v

    @field_validator("redis_url", "agent_redis_url")
    @classmethod
    def _redis_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(
            ("redis://", "rediss://", "unix://", "redis+socket://")
        ):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return v

    @field_validator("agent_redis_url")
    @classmethod
    def _no_credentials(cls, v: str | None) -> str | None:
        if v is not None and without_credentials(v) != v:
            raise ValueError("agents never get the controller's credentials: no user or password")
        return v

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        return self

    @model_validator(mode="after")
    def _agent_redis_url(self) -> Settings:
        if self.agent_redis_url is None:
            self.agent_redis_url = without_credentials(self.redis_url)
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
