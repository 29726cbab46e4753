"""The controller's settings: one typed object per process, from FLEETTRACE_* variables."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEETTRACE_", env_file=".env", extra="ignore")

    database_url: str = "sqlite:///var/fleettrace.db"
    redis_url: str = "redis://127.0.0.1:6379/0"
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8700, ge=1, le=65535)
    # A run whose host has not started it by then ends `expired`.
    task_expiry_s: float = Field(default=60.0, gt=0)
    heartbeat_timeout_s: float = Field(default=30.0, gt=0)
    max_duration_s: float = Field(default=3600.0, gt=0)
    ingest_group: str = "controller"
    ingest_consumer: str = "ingest-1"
    ingest_batch: int = Field(default=200, ge=1, le=10_000)
    ingest_claim_idle_ms: int = Field(default=30_000, ge=100)
    auto_register_hosts: bool = True

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, v: str) -> str:
        if not v.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:")):
            raise ValueError("database_url must be a sqlite: or postgresql: URL")
        if v.startswith("postgresql://"):
            v = "postgresql+psycopg://" + v.removeprefix("postgresql://")
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://", "redis+socket://")):
            raise ValueError("redis_url must be a redis://, rediss:// or unix:// URL")
        return v


@lru_cache
def get_settings() -> Settings:
    return Settings()
