"""Server-side commands: serve, ingest, worker, scheduler, migrate, tokens, openapi."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import redis

from controller.settings import Settings, get_settings
from node_agent.wire import client_url

log = logging.getLogger(__name__)


def add_commands(sub: Any) -> None:
    serve = sub.add_parser("serve", help="migrate the database, then run the API and ingest")
    serve.add_argument("--no-ingest", action="store_true", help="without the ingest consumer")
    serve.add_argument(
        "--no-worker", action="store_true", help="without the controller worker (bootstrap)"
    )
    serve.add_argument(
        "--no-scheduler", action="store_true", help="without the schedule loop (run it elsewhere)"
    )
    serve.add_argument("--host", help="listen address (default from settings)")
    serve.add_argument("--port", type=int, help="listen port (default from settings)")
    serve.set_defaults(func=cmd_serve)

    ingest = sub.add_parser("ingest", help="run only the ingest consumer (scale out)")
    ingest.add_argument("--consumer", help="consumer name, unique per ingest process")
    ingest.set_defaults(func=cmd_ingest)

    worker = sub.add_parser("worker", help="run the controller worker: SSH bootstrap tasks")
    worker.add_argument("--concurrency", type=int, help="tasks at once (default from settings)")
    worker.set_defaults(func=cmd_worker)

    scheduler = sub.add_parser("scheduler", help="run only the schedule loop (any number at once)")
    scheduler.set_defaults(func=cmd_scheduler)

    migrate = sub.add_parser("migrate", help="bring the database schema up to date")
    migrate.set_defaults(func=cmd_migrate)

    tokens = sub.add_parser("tokens", help="manage API tokens directly in the database")
    tsub = tokens.add_subparsers(dest="tokens_command", required=True)
    create = tsub.add_parser("create", help="create a token and print it once")
    create.add_argument("--name", required=True)
    create.add_argument("--role", choices=["viewer", "operator", "admin"], default="admin")
    create.set_defaults(func=cmd_tokens_create)

    openapi = sub.add_parser("openapi", help="write the OpenAPI document")
    openapi.add_argument("--output", type=Path, default=Path("openapi/openapi.json"))
    openapi.set_defaults(func=cmd_openapi)


def _sessions(settings: Settings):  # type: ignore[no-untyped-def]
    from controller.db import make_engine, make_sessionmaker

    return make_sessionmaker(make_engine(settings.database_url))


def cmd_migrate(args: argparse.Namespace) -> int:
    from controller.migrate import upgrade

    upgrade(get_settings().database_url)
    return 0


def cmd_tokens_create(args: argparse.Namespace) -> int:
    from controller.auth import service
    from controller.auth.models import Role
    from controller.migrate import upgrade

    settings = get_settings()
    upgrade(settings.database_url)
    with _sessions(settings)() as session:
        token, raw = service.create(session=session, name=args.name, role=Role(args.role))
        session.commit()
    sys.stdout.write(raw + "\n")
    log.info("created %s token %r (id %s)", args.role, args.name, token.id)
    return 0


def openapi_document() -> dict[str, object]:
    from controller.app import create_app

    settings = Settings(database_url="sqlite:///:memory:")
    return create_app(settings).openapi()


def cmd_openapi(args: argparse.Namespace) -> int:
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n")
    return 0


def _run_ingest(settings: Settings, stop: threading.Event) -> None:
    from controller.ingest.consumer import Ingest

    client = redis.Redis.from_url(client_url(settings.redis_url))
    Ingest(settings, _sessions(settings), client).run_forever(stop)


def cmd_ingest(args: argparse.Namespace) -> int:
    from controller.migrate import upgrade

    settings = get_settings()
    if args.consumer:
        settings = settings.model_copy(update={"ingest_consumer": args.consumer})
    upgrade(settings.database_url)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    _run_ingest(settings, stop)
    return 0


def _run_scheduler(settings: Settings, stop: threading.Event) -> None:
    from controller.dispatch import CeleryDispatcher
    from controller.keys.store import KeyStore
    from controller.schedules.scheduler import Scheduler

    dispatcher = CeleryDispatcher(settings.redis_url, KeyStore(settings.keys_dir))
    Scheduler(settings, _sessions(settings), dispatcher).run_forever(stop)


def cmd_scheduler(args: argparse.Namespace) -> int:
    from controller.migrate import upgrade

    settings = get_settings()
    upgrade(settings.database_url)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    _run_scheduler(settings, stop)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from controller.bootstrap.tasks import serve_worker
    from controller.migrate import upgrade

    settings = get_settings()
    upgrade(settings.database_url)
    serve_worker(settings, concurrency=args.concurrency)
    return 0


def _start_worker() -> subprocess.Popen[bytes]:
    """The controller worker as a child process: Celery wants its own main thread."""
    code = "import sys; from controller.cli import main; sys.exit(main(['worker']))"
    return subprocess.Popen([sys.executable, "-c", code])


def _stop_worker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def ensure_keys(settings: Settings) -> None:
    """The first `serve` makes the signing key (as `fleettrace keys init` would)."""
    from controller.keys.store import KeyStore

    store = KeyStore(settings.keys_dir)
    kid, created = store.init()
    if created:
        log.warning(
            "created signing key %s in %s: install `fleettrace keys export` on hosts"
            " as /etc/fleettrace/controller-keys.pub (bootstrap does it)",
            kid,
            settings.keys_dir,
        )
    else:
        log.info("signing with key %s from %s", kid, settings.keys_dir)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from controller.app import create_app
    from controller.migrate import upgrade

    settings = get_settings()
    upgrade(settings.database_url)
    ensure_keys(settings)
    stop = threading.Event()
    worker = None
    if not args.no_ingest:
        worker = threading.Thread(target=_run_ingest, args=(settings, stop), name="ingest")
        worker.start()
    scheduler = None
    if not args.no_scheduler:
        scheduler = threading.Thread(target=_run_scheduler, args=(settings, stop), name="scheduler")
        scheduler.start()
    bootstrap_worker = None if args.no_worker else _start_worker()
    try:
        uvicorn.run(
            create_app(settings),
            host=args.host or settings.api_host,
            port=args.port or settings.api_port,
            log_level="info",
        )
    finally:
        stop.set()
        if worker is not None:
            worker.join(timeout=5)
        if scheduler is not None:
            scheduler.join(timeout=5)
        if bootstrap_worker is not None:
            _stop_worker(bootstrap_worker)
    return 0
