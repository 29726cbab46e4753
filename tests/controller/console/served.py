"""`fleettrace serve` as a subprocess on a free loopback port, over the module's database,
Redis and keys: the console the browser sees is the one an operator runs (uvicorn, its
ingest, its scheduler)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from controller.settings import Settings
from tests.controller.conftest import BIN
from tests.controller.support import clean_env, free_port, stop_process, wait_for

# The module's settings that serve must share with the in-process fixtures (agents, tokens).
SHARED = (
    "database_url",
    "redis_url",
    "keys_dir",
    "task_expiry_s",
    "heartbeat_timeout_s",
    "max_duration_s",
    "ingest_claim_idle_ms",
)


def serve_env(settings: Settings, port: int, artifacts: Path) -> dict[str, str]:
    shared = {f"FLEETTRACE_{name.upper()}": str(getattr(settings, name)) for name in SHARED}
    return clean_env(
        **shared,
        FLEETTRACE_API_HOST="127.0.0.1",
        FLEETTRACE_API_PORT=str(port),
        FLEETTRACE_ARTIFACTS_DIR=str(artifacts),
    )


@pytest.fixture(scope="module")
def served(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a running `fleettrace serve`; stopped by its pid after the module."""
    workdir = tmp_path_factory.mktemp("serve")
    port = free_port()
    log = workdir / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "fleettrace"), "serve"],
            cwd=workdir,
            env=serve_env(settings, port, workdir / "artifacts"),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            try:
                return httpx.get(f"{base}/healthz", timeout=2).is_success
            except httpx.HTTPError:
                return False

        wait_for(up, 90, "fleettrace serve to answer", 0.2)
        yield base
    finally:
        stop_process(proc)
